"""RB-PPO (docs/algorithms.md "RB-PPO": reduction to PPO, minimum aggregation, monotone bounded targets) and
the critic-free baselines Dr. GRPO (Liu et al. 2025), RLOO (Ahmadian et al. 2024), REINFORCE++ (Hu 2025)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvpo_lab.algos import agg_loss, compute_gae, masked_mean, masked_var, masked_whiten
from dvpo_lab.algos.rbppo import ensemble_value_loss, pessimistic_value, robust_gae
from tests.algos.helpers import call_estimator


def random_case(B, T, K, seed):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    r = torch.randn(B, T, generator=gen, dtype=torch.float64) * mask
    v = torch.rand(B, T, K, generator=gen, dtype=torch.float64)
    return r, v, mask


# RB-PPO with c = rho = 0 (or one head) is PPO on the head average --------------------------------------------


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 5), T=st.integers(1, 9), K=st.integers(1, 4), lam=st.floats(0, 1), seed=st.integers(0, 10_000))
def test_rbppo_with_c_and_rho_zero_is_ppo_on_the_head_average(B, T, K, lam, seed):
    r, v, mask = random_case(B, T, K, seed)

    def est(*a, **kw):
        return call_estimator("robust_gae", *a, **kw)

    adv, y = est(r, mask, values=v, gamma=1.0, lam=lam, robust_c=0.0, robust_rho=0.0)
    ppo_adv, ppo_ret = call_estimator("gae", r, mask, values=v.mean(-1), gamma=1.0, lam=lam)
    assert torch.allclose(adv, ppo_adv, atol=1e-10) and torch.allclose(y, ppo_ret, atol=1e-10)
    if K == 1:  # one head: c is irrelevant
        adv1, _ = est(r, mask, values=v, gamma=1.0, lam=lam, robust_c=5.0, robust_rho=0.0)
        assert torch.allclose(adv1, ppo_adv, atol=1e-10)


# Minimum aggregation: for K = 2, vt = mean - |v_1 - v_2| / 2 = min -------------------------------------------


def test_pessimistic_value_is_min_for_two_heads_and_below_every_head():
    v = torch.rand(4, 6, 2)
    vt = pessimistic_value(v, 1.0)
    assert torch.allclose(vt, v.min(-1).values, atol=1e-6)
    assert torch.allclose(vt, v.mean(-1) - (v[..., 0] - v[..., 1]).abs() / 2, atol=1e-6)
    v5 = torch.rand(4, 6, 5)
    assert (pessimistic_value(v5, 1.0) <= v5.max(-1).values).all()
    assert (pessimistic_value(v5, 3.0) <= v5.min(-1).values + 1e-6).all()  # K > 2: large c is below every head


# Monotonicity and boundedness of the robust targets ----------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 4), T=st.integers(1, 8), seed=st.integers(0, 10_000), lam=st.floats(0, 0.99))
def test_robust_targets_are_monotone_in_c_and_rho(B, T, seed, lam):
    r, v, mask = random_case(B, T, 2, seed)

    def est(*a, **kw):
        return call_estimator("robust_gae", *a, **kw)

    valid = mask.bool()
    prev = None
    for c in (0.0, 0.5, 1.0, 2.0):
        _, y = est(r, mask, values=v, lam=lam, robust_c=c, robust_rho=0.2, whiten_advantages=False)
        if prev is not None:
            assert (y[valid] <= prev[valid] + 1e-12).all()
        prev = y
    prev = None
    for rho in (0.0, 0.1, 0.3, 0.6, 1.0):
        _, y = est(
            r, mask, values=v, lam=lam, robust_c=1.0, robust_rho=rho, robust_v_lo="batch_min", whiten_advantages=False
        )
        if prev is not None:
            assert (y[valid] <= prev[valid] + 1e-12).all()
        prev = y


def test_lambda_one_targets_are_monte_carlo_whatever_c_and_rho():
    r, v, mask = random_case(3, 6, 2, 0)
    mc, _ = compute_gae(r, torch.zeros_like(r), mask, 1.0, 1.0)
    for c, rho in ((0.0, 0.0), (1.0, 0.2), (2.0, 0.9)):
        _, y = call_estimator("robust_gae", r, mask, values=v, lam=1.0, robust_c=c, robust_rho=rho)
        assert torch.allclose(y, mc, atol=1e-10)


def test_contamination_is_bounded_not_compounding_over_the_horizon():
    """With vt = 1 everywhere, v_lo = 0 and a long response, the naive r + gamma b - vt inside GAE would shift
    early targets by about rho * T; the bounded form shifts them by at most rho."""
    T, rho, lam = 200, 0.2, 0.95
    r = torch.zeros(1, T, dtype=torch.float64)
    r[0, -1] = 1.0
    vt, mask = torch.ones(1, T, dtype=torch.float64), torch.ones(1, T, dtype=torch.float64)
    _, y0 = robust_gae(r, vt, mask, 1.0, lam, 0.0)
    _, y = robust_gae(r, vt, mask, 1.0, lam, rho)
    shift = (y0 - y).max()
    assert 0 < shift <= rho * vt.max() + 1e-9


def test_padding_in_the_middle_is_carried_through():
    r = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    vt = torch.tensor([[0.5, 9.0, 0.6, 0.7]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    adv, y = robust_gae(r, vt, mask, 1.0, 0.5, 0.3)
    adv_c, y_c = robust_gae(r[:, [0, 2, 3]], vt[:, [0, 2, 3]], mask[:, [0, 2, 3]], 1.0, 0.5, 0.3)
    assert torch.allclose(adv[:, [0, 2, 3]], adv_c) and adv[0, 1] == 0 and y[0, 1] == 0


def test_ensemble_value_loss_sums_heads_regressing_one_target():
    v = torch.tensor([[[0.1, 0.5]]], requires_grad=True)
    loss, m = ensemble_value_loss(v, v.detach(), torch.tensor([[1.0]]), torch.ones(1, 1), cliprange_value=None)
    assert float(loss) == pytest.approx(0.5 * (0.81 + 0.25))
    loss.backward()
    assert torch.allclose(v.grad, torch.tensor([[[-0.9, -0.5]]]))
    assert float(m["head_disagreement"]) == pytest.approx(0.2)


# Dr. GRPO and RLOO: hand-computed group advantages, verl's formulas ----------------------------------------


def outcome(rewards: list[float], T: int = 3):
    n = len(rewards)
    tr = torch.zeros(n, T)
    tr[:, -1] = torch.tensor(rewards)
    return tr, torch.ones(n, T), torch.zeros(n, dtype=torch.long)


def test_group_oracles():
    tr, m, g = outcome([1, 0, 0, 1])
    dr, _ = call_estimator("dr_grpo", tr, m, group_index=g)
    assert torch.allclose(dr[:, 0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    rl, _ = call_estimator("rloo", tr, m, group_index=g)
    assert torch.allclose(rl[:, 0], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]), atol=1e-4)
    for name in ("dr_grpo", "rloo"):
        adv, _ = call_estimator(name, tr, m, group_index=g)
        assert (adv == adv[:, :1]).all()  # every token gets its sequence's advantage
        const, _ = call_estimator(name, *outcome([1, 1, 1, 1])[:2], group_index=g)
        assert (const == 0).all()
        with pytest.raises(ValueError, match="group_index"):
            call_estimator(name, tr, m)


@settings(max_examples=40, deadline=None)
@given(
    G=st.integers(2, 8), groups=st.integers(1, 4), a=st.floats(0.1, 5), b=st.floats(-3, 3), seed=st.integers(0, 10_000)
)
def test_group_advantages_sum_to_zero_and_dr_grpo_scales(G, groups, a, b, seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 2, (G * groups,), generator=gen).double()
    tr = torch.zeros(G * groups, 2, dtype=torch.float64)
    tr[:, -1] = scores
    m, gi = torch.ones_like(tr), torch.arange(groups).repeat_interleave(G)
    for name in ("dr_grpo", "rloo"):
        adv, _ = call_estimator(name, tr, m, group_index=gi)
        assert torch.allclose(adv[:, 0].view(groups, G).sum(-1), torch.zeros(groups, dtype=torch.float64), atol=1e-9)
    dr, _ = call_estimator("dr_grpo", tr, m, group_index=gi)
    tr2 = tr.clone()
    tr2[:, -1] = a * scores + b
    dr2, _ = call_estimator("dr_grpo", tr2, m, group_index=gi)
    assert torch.allclose(dr2, a * dr, atol=1e-9)


def test_dr_grpo_loss_is_length_unbiased_and_grpo_is_not():
    """Liu et al. 2025: doubling one response's length (same per-token loss) doubles its contribution under
    seq-mean-token-sum-norm and leaves it unchanged under seq-mean-token-mean."""
    short = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    long = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    loss = torch.full((2, 4), 0.5)
    contrib = {
        mode: [
            float(agg_loss(loss * torch.tensor([[1.0], [0.0]]), m, mode, loss_scale_factor=4)) for m in (short, long)
        ]
        for mode in ("seq-mean-token-sum-norm", "seq-mean-token-mean")
    }
    assert contrib["seq-mean-token-sum-norm"][1] == pytest.approx(2 * contrib["seq-mean-token-sum-norm"][0])
    assert contrib["seq-mean-token-mean"][1] == pytest.approx(contrib["seq-mean-token-mean"][0])


# REINFORCE++ -------------------------------------------------------------------------------------------------


def test_reinforce_pp_whitens_returns_to_go_over_the_batch():
    tr = torch.tensor([[-0.01, -0.01, 1.0], [-0.02, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    adv, ret = call_estimator("reinforce_pp", tr, mask, gamma=1.0)
    assert torch.allclose(ret, torch.tensor([[0.98, 0.99, 1.0], [-0.02, 0.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(adv, masked_whiten(ret, mask))
    assert abs(float(masked_mean(adv, mask))) < 1e-9 and float(masked_var(adv, mask)) == pytest.approx(1, abs=1e-6)
    raw, _ = call_estimator("reinforce_pp", tr, mask, gamma=0.5, whiten_advantages=False)
    assert float(raw[0, 0]) == pytest.approx(-0.01 - 0.005 + 0.25)
