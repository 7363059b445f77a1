"""Distributional pieces and the DVPO critic loss (DVPO paper Eqs. 2-11; QR-DQN, Dabney et al. 2018) against
closed forms (normal quantiles, CVaR and Wang of a normal law, Bernoulli fixed points), plus property tests."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvpo_lab.algos import compute_gae, masked_whiten
from dvpo_lab.algos.dvpo import DVPO_TERMS, quantile_gae
from dvpo_lab.algos.quantiles import (
    cvar_weights,
    distorted_expectation,
    monotone_quantiles,
    quantile_huber_pairs,
    quantile_huber_sorted,
    quantile_levels,
    wang_weights,
)
from tests.algos.helpers import call_estimator
from tests.algos.helpers import dvpo_loss as dvpo_critic_loss

torch.set_default_dtype(torch.float32)
ALL_OFF = dict.fromkeys(DVPO_TERMS, 0.0)


def random_mask(B: int, T: int, gen: torch.Generator) -> torch.Tensor:
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    return (torch.arange(T)[None] < lengths[:, None]).float()


# Quantile levels: QR-DQN mid-points (2j - 1) / (2N) -----------------------------------------------------------


def test_mid_point_levels():
    assert quantile_levels(4).tolist() == [0.125, 0.375, 0.625, 0.875]
    t = quantile_levels(7)
    assert torch.allclose(t + t.flip(0), torch.ones(7))
    assert quantile_levels(4, "paper").tolist() == [0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="tau grid"):
        quantile_levels(4, "nope")


# Quantile Huber form (QR-DQN) and the fast all-pairs loss against the direct O(N^2) one ----------------------


def test_quantile_huber_quadratic_region_and_pinball_limit():
    tau = torch.tensor([0.3])
    for u in (0.01, -0.015):
        got = quantile_huber_pairs(torch.tensor([0.0]), torch.tensor([u]), tau, kappa=0.02)
        want = abs(0.3 - (u < 0)) * u**2 / (2 * 0.02)
        assert float(got) == pytest.approx(want, rel=1e-5)
    pred, tgt = torch.randn(5, 6), torch.randn(5, 9)
    taus = quantile_levels(6)
    pin = quantile_huber_pairs(pred, tgt, taus, 0.0)
    assert torch.allclose(quantile_huber_pairs(pred, tgt, taus, 1e-5), pin, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 12),
    m=st.integers(1, 15),
    lead=st.integers(1, 4),
    kappa=st.sampled_from([0.0, 0.02, 0.3, 1.0]),
    seed=st.integers(0, 10_000),
    ties=st.booleans(),
)
def test_sorted_prefix_sum_loss_equals_all_pairs(n, m, lead, kappa, seed, ties):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(lead, n, generator=gen, dtype=torch.float64)
    tgt = torch.randn(lead, m, generator=gen, dtype=torch.float64)
    if ties:  # binary-like targets and predictions sitting exactly on them
        tgt = (tgt > 0).double()
        pred[..., 0] = 1.0
    taus = quantile_levels(n, dtype=torch.float64)
    fast = quantile_huber_sorted(pred.clone().requires_grad_(), tgt, taus, kappa)
    ref = quantile_huber_pairs(pred, tgt, taus, kappa)
    assert torch.allclose(fast, ref, atol=1e-9)
    if kappa == 0 and ties:
        return  # the pinball loss has a kink at a tie: both forms pick a valid (different) subgradient there
    p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    quantile_huber_sorted(p1, tgt, taus, kappa).sum().backward()
    quantile_huber_pairs(p2, tgt, taus, kappa).sum().backward()
    assert torch.allclose(p1.grad, p2.grad, atol=1e-9)


# What quantile regression learns: normal quantiles, Bernoulli steps, the expectile pitfall ------------------


def fit_quantiles(samples: torch.Tensor, n: int, kappa: float, steps: int = 600, lr: float = 0.05) -> torch.Tensor:
    theta = torch.zeros(n, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    taus = quantile_levels(n)
    for _ in range(steps):
        opt.zero_grad()
        quantile_huber_sorted(theta, samples, taus, kappa).sum().backward()
        opt.step()
    return theta.detach()


def test_quantile_regression_recovers_normal_quantiles():
    mu, sigma, n = 1.5, 2.0, 32
    # 20k samples: the sample quantiles' own error is <= ~0.02 sigma at the outermost levels and the sample mean's
    # sd 0.007 sigma, inside the bounds below (100k took 11x longer: each step sorts the targets)
    samples = mu + sigma * torch.randn(20_000, generator=torch.Generator().manual_seed(0))
    theta = fit_quantiles(samples, n, kappa=0.0, steps=1500, lr=0.02)
    normal = torch.distributions.Normal(mu, sigma)
    want = normal.icdf(quantile_levels(n))
    err = (theta - want).abs() / sigma
    assert err[2:-2].max() < 0.05 and err.max() < 0.1
    assert abs(float(theta.mean()) - mu) < 0.03 * sigma


def test_bernoulli_targets_give_a_step_function_with_the_right_mean():
    gen = torch.Generator().manual_seed(1)
    samples = (torch.rand(20_000, generator=gen) < 0.7).float()
    theta = fit_quantiles(samples, 10, kappa=0.0, steps=800, lr=0.02)
    assert ((theta - 1).abs() < 0.02).sum() == 7 and ((theta).abs() < 0.02).sum() == 3
    assert abs(float(theta.mean()) - 0.7) < 0.01
    noisy = torch.where(torch.rand(20_000, generator=gen) < 0.2, 1 - samples, samples)  # q~ = 0.62
    assert abs(float(fit_quantiles(noisy, 10, kappa=0.0, steps=800, lr=0.02).mean()) - 0.62) <= 0.1 + 0.01


def test_expectile_pitfall_with_large_kappa():
    """kappa = 1 with targets in {0, 1}: tau = 0.125, q = 0.7 converges to the expectile 0.25, not 0."""
    samples = torch.tensor([1.0] * 7 + [0.0] * 3)
    theta = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.01)
    tau = torch.tensor([0.125])
    for _ in range(2000):
        opt.zero_grad()
        quantile_huber_sorted(theta, samples, tau, 1.0).sum().backward()
        opt.step()
    expectile = 0.125 * 0.7 / (0.125 * 0.7 + 0.875 * 0.3)
    assert float(theta) == pytest.approx(expectile, abs=0.01) and expectile == pytest.approx(0.25)
    assert float(fit_quantiles(samples, 4, kappa=0.0, steps=600, lr=0.01)[0]) == pytest.approx(0.0, abs=0.02)


# Distributional GAE (DVPO paper Eq. 2): its mean is scalar GAE on the mean -----------------------------------


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 5),
    T=st.integers(1, 9),
    N=st.integers(1, 7),
    lam=st.floats(0, 1),
    gamma=st.floats(0.5, 1),
    seed=st.integers(0, 10_000),
)
def test_per_quantile_gae_mean_equals_scalar_gae_on_the_mean(B, T, N, lam, gamma, seed):
    gen = torch.Generator().manual_seed(seed)
    mask = random_mask(B, T, gen)
    r = torch.randn(B, T, generator=gen, dtype=torch.float64) * mask
    q = torch.randn(B, T, N, generator=gen, dtype=torch.float64)
    adv_q, targets = quantile_gae(r, q, mask, gamma, lam)
    adv, ret = compute_gae(r, q.mean(-1), mask, gamma, lam)
    assert torch.allclose(adv_q.mean(-1), adv, atol=1e-10)
    assert torch.allclose(targets.mean(-1), ret, atol=1e-10)
    valid = mask.bool()
    assert torch.allclose(targets[valid], (q + adv_q)[valid])  # Z^ = theta + A^j, per quantile
    assert (targets[~valid] == 0).all() and (adv_q[~valid] == 0).all()
    est, est_targets = call_estimator("dist_gae", r, mask, values=q, gamma=gamma, lam=lam)
    assert torch.allclose(est, masked_whiten(adv, mask), atol=1e-8) and torch.equal(est_targets, targets)


@pytest.mark.parametrize("interleaved", [False, True])
def test_per_quantile_gae_is_scalar_gae_on_each_quantile_bit_for_bit(interleaved):
    """Each quantile's column is exactly `compute_gae` on that column, float32, incl. interleaved padding."""
    gen = torch.Generator().manual_seed(3)
    B, T, N = 6, 11, 9
    mask = random_mask(B, T, gen)
    if interleaved:
        mask = mask * (torch.rand(B, T, generator=gen) > 0.3).float()
    r = torch.randn(B, T, generator=gen) * mask
    q = torch.randn(B, T, N, generator=gen)
    adv_q, targets = quantile_gae(r, q, mask, 0.99, 0.95)
    for j in range(N):
        adv, ret = compute_gae(r, q[..., j], mask, 0.99, 0.95)
        assert torch.equal(adv_q[..., j], adv) and torch.equal(targets[..., j], ret)


def test_equal_quantiles_give_the_scalar_advantage_for_every_quantile():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.6, 0.7]])
    adv_q, targets = quantile_gae(r, v.unsqueeze(-1).expand(1, 3, 4), torch.ones(1, 3), 1.0, 1.0)
    assert torch.allclose(adv_q, torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1).expand(1, 3, 4))
    assert torch.allclose(targets, torch.ones(1, 3, 4))  # gamma = lambda = 1: Monte Carlo return


def test_targets_are_per_quantile_not_a_broadcast_scalar():
    """lambda < 1 bootstraps each quantile from its own next-state quantile: targets keep a spread."""
    q = torch.tensor([[[0.0, 0.5, 1.0], [0.2, 0.5, 0.8]]])
    _, targets = quantile_gae(torch.tensor([[0.0, 1.0]]), q, torch.ones(1, 2), 1.0, 0.5)
    assert targets[0, 0].unique().numel() == 3


# Risk measures (closed-form CVaR and Wang of a normal law) and monotonicity ----------------------------------


def test_cvar_of_normal_quantiles():
    n = 1000
    q = torch.distributions.Normal(0.0, 1.0).icdf(quantile_levels(n, dtype=torch.float64))
    cvar = float(distorted_expectation(q, cvar_weights(n, 0.1, dtype=torch.float64)))
    want = -math.exp(-0.5 * 1.2815515655**2) / math.sqrt(2 * math.pi) / 0.1
    assert cvar == pytest.approx(want, abs=0.01) and want == pytest.approx(-1.7550, abs=1e-3)
    assert float(distorted_expectation(q, cvar_weights(n, 1.0, dtype=torch.float64))) == pytest.approx(float(q.mean()))
    x = torch.randn(50, generator=torch.Generator().manual_seed(3))
    vals = [float(distorted_expectation(x, cvar_weights(50, a))) for a in (0.05, 0.1, 0.3, 0.7, 1.0)]
    assert vals == sorted(vals) and vals[-1] == pytest.approx(float(x.mean()), abs=1e-6)


@pytest.mark.parametrize("eta", [-0.75, 0.0, 0.5])
def test_wang_distortion_of_a_normal_shifts_by_eta_sigma(eta):
    n, mu, sigma = 2000, 0.3, 2.0
    q = mu + sigma * torch.distributions.Normal(0.0, 1.0).icdf(quantile_levels(n, dtype=torch.float64))
    got = float(distorted_expectation(q, wang_weights(n, eta, dtype=torch.float64)))
    assert got == pytest.approx(mu + eta * sigma, abs=0.01 * sigma)


@pytest.mark.parametrize("mode", ["sort", "cumsoftplus"])
def test_monotone_parametrisations_never_cross(mode):
    raw = torch.randn(4, 3, 2, 50, generator=torch.Generator().manual_seed(0)) * 3
    q = monotone_quantiles(raw, mode)
    assert (q[..., 1:] >= q[..., :-1]).all()
    assert monotone_quantiles(raw, "none") is raw


def test_risk_actor_advantage_differs_from_the_mean_only_when_asked():
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(3, 4)
    r, q = torch.rand(3, 4, generator=gen), torch.rand(3, 4, 8, generator=gen).sort(-1).values

    def est(*args, **kw):
        return call_estimator("dist_gae", *args, **kw)

    mean, _ = est(r, mask, values=q, whiten_advantages=False)
    cvar1, _ = est(r, mask, values=q, whiten_advantages=False, actor_advantage="cvar", risk_alpha=1.0)
    assert torch.allclose(mean, cvar1, atol=1e-6)  # CVaR_1 is the mean
    cvar, _ = est(r, mask, values=q, whiten_advantages=False, actor_advantage="cvar", risk_alpha=0.25)
    wang, _ = est(r, mask, values=q, whiten_advantages=False, actor_advantage="wang", wang_eta=-0.5)
    assert not torch.allclose(mean, cvar) and not torch.allclose(mean, wang)
    with pytest.raises(ValueError, match="actor_advantage"):
        est(r, mask, values=q, actor_advantage="median")


# The DVPO critic loss (DVPO paper Eqs. 3-11) -----------------------------------------------------------------


def loss_inputs(B=3, T=5, H=3, N=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = random_mask(B, T, gen)
    pred = torch.randn(B, T, H, N, generator=gen).requires_grad_()
    old = pred.detach() + 0.01 * torch.randn(B, T, H, N, generator=gen)
    targets = torch.rand(B, T, N, generator=gen)
    return pred, old, targets, mask, quantile_levels(N)


def test_all_weights_zero_is_the_plain_quantile_loss_per_head():
    pred, old, targets, mask, taus = loss_inputs()
    loss, m = dvpo_critic_loss(pred, old, targets, mask, taus, kappa=0.02, value_clip="none", weights=ALL_OFF)
    valid = mask.bool()
    z = targets[valid].unsqueeze(1).expand(-1, pred.shape[2], -1)
    plain = quantile_huber_pairs(pred[valid], z, taus, 0.02).mean()
    assert float(loss) == pytest.approx(float(plain), rel=1e-5)
    assert float(m["loss_qr"]) == pytest.approx(float(plain), rel=1e-5)
    assert set(m) >= {"quantile_spread_low", "quantile_spread_up", "head_disagreement", "crossed_frac"}


@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 4),
    T=st.integers(1, 6),
    H=st.integers(1, 4),
    N=st.integers(1, 12),
    seed=st.integers(0, 10_000),
    clip=st.sampled_from(["mean", "quantile", "none"]),
)
def test_loss_is_finite_ignores_padding_and_every_term_is_logged(B, T, H, N, seed, clip):
    pred, old, targets, mask, taus = loss_inputs(B, T, H, N, seed)
    weights = dict.fromkeys(DVPO_TERMS, 0.1)
    loss, m = dvpo_critic_loss(pred, old, targets, mask, taus, value_clip=clip, weights=weights)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in m.values())
    assert {f"loss_{t}" for t in ("qr", *DVPO_TERMS)} <= set(m)
    loss.backward()
    assert (pred.grad[~mask.bool()] == 0).all()
    garbage_old = old.clone()
    garbage_targets = targets.clone()
    garbage_old[~mask.bool()] = 1e6
    garbage_targets[~mask.bool()] = -1e6
    loss2, _ = dvpo_critic_loss(pred, garbage_old, garbage_targets, mask, taus, value_clip=clip, weights=weights)
    assert float(loss2) == pytest.approx(float(loss), rel=1e-5)


def one_token(pred_q: list[float], target_q: list[float], heads: int = 1):
    p = torch.tensor(pred_q).view(1, 1, 1, -1).repeat(1, 1, heads, 1).requires_grad_()
    return p, torch.tensor(target_q).view(1, 1, -1), torch.ones(1, 1), quantile_levels(len(pred_q))


def term(name, pred, targets, mask, taus, **kw):
    w = dict(ALL_OFF, **{name: 1.0})
    _, m = dvpo_critic_loss(pred, pred.detach(), targets, mask, taus, value_clip="none", weights=w, **kw)
    loss = m[f"loss_{name}"]
    grad = torch.autograd.grad(
        dvpo_critic_loss(pred, pred.detach(), targets, mask, taus, value_clip="none", weights=w, **kw)[0]
        - dvpo_critic_loss(pred, pred.detach(), targets, mask, taus, value_clip="none", weights=ALL_OFF, **kw)[0],
        pred,
    )[0]
    return float(loss), grad


def test_tail_shape_hinge_is_inactive_when_lower_is_narrow_and_upper_is_wide():
    target = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    pred = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.2]  # lowest two closer, highest two farther apart
    p, z, m, taus = one_token(pred, target)
    loss, grad = term("shape", p, z, m, taus, tail_alpha=0.2, tail_beta=0.2)
    assert loss == 0 and (grad == 0).all()
    p, z, m, taus = one_token(target[::-1][::-1][:1] + [-0.5] + target[2:8] + [0.85, 0.9], target)
    loss, grad = term("shape", p, z, m, taus, tail_alpha=0.2, tail_beta=0.2)
    assert loss > 0 and grad.abs().sum() > 0
    # margins move the hinge: equal spreads become active with m_l > 0 or m_u > 0
    p, z, m, taus = one_token(target, target)
    assert term("shape", p, z, m, taus, tail_alpha=0.2, tail_beta=0.2)[0] == 0
    assert term("shape", p, z, m, taus, tail_alpha=0.2, tail_beta=0.2, margin_low=0.5)[0] > 0
    assert term("shape", p, z, m, taus, tail_alpha=0.2, tail_beta=0.2, margin_up=0.5)[0] > 0


def test_mean_shift_penalty_is_one_sided_and_raises_every_quantile_equally():
    target = [0.2, 0.4, 0.6, 0.8]
    p, z, m, taus = one_token([0.3, 0.5, 0.7, 0.9], target)  # optimistic mean: no penalty
    loss, grad = term("shift", p, z, m, taus)
    assert loss == 0 and (grad == 0).all()
    p, z, m, taus = one_token([0.0, 0.1, 0.7, 0.75], target, heads=2)  # pessimistic mean
    loss, grad = term("shift", p, z, m, taus)
    assert loss == pytest.approx(0.5 - 0.3875) and (grad < 0).all()
    assert torch.allclose(grad, grad.flatten()[0].expand_as(grad))


def test_consistency_is_zero_for_identical_heads_and_symmetric():
    p, z, m, taus = one_token([0.1, 0.5, 0.9], [0.2, 0.5, 0.8], heads=3)
    assert term("cons", p, z, m, taus)[0] == 0
    a = torch.tensor([[[[0.1, 0.5, 0.9], [0.3, 0.4, 1.0]]]])
    b = a.flip(2)
    la = term("cons", a.clone().requires_grad_(), z, m, taus)[0]
    lb = term("cons", b.clone().requires_grad_(), z, m, taus)[0]
    assert la > 0 and la == pytest.approx(lb)


def test_curvature_zero_for_linear_quantiles_positive_for_convex_lower_tail():
    n = 20
    lin = torch.linspace(0, 1, n).tolist()
    p, z, m, taus = one_token(lin, lin)
    assert term("curv", p, z, m, taus)[0] == pytest.approx(0.0, abs=1e-6)
    convex = (torch.linspace(0, 1, n) ** 3).tolist()  # convex in tau over the lower tail
    p, z, m, taus = one_token(convex, lin)
    assert term("curv", p, z, m, taus, tail_alpha=0.2)[0] > 0


def test_cvar_and_gain_vanish_when_tail_means_match():
    target = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    pred = [-0.1, 0.3, 0.4, 0.6, 0.7, 1.1]  # same lowest-2 and highest-2 means, different points
    p, z, m, taus = one_token(pred, target)
    for name in ("cvar", "gain"):
        assert term(name, p, z, m, taus, tail_alpha=0.34, tail_beta=0.34)[0] == pytest.approx(0.0, abs=1e-12)
    p, z, m, taus = one_token([x + 0.3 for x in target], target)
    assert term("cvar", p, z, m, taus)[0] == pytest.approx(0.09, rel=1e-4)


def test_loss_aggregation_modes_agree_when_every_sequence_has_the_same_length():
    """With L valid tokens in every sequence: seq-mean-token-mean == token-mean, seq-mean-token-sum == L x it."""
    pred, old, targets, _, taus = loss_inputs(B=4, T=6, seed=3)
    mask = torch.zeros(4, 6)
    mask[:, :4] = 1
    weights = {t: 0.1 for t in DVPO_TERMS}
    tm, m_tm = dvpo_critic_loss(pred, old, targets, mask, taus, weights=weights, loss_agg_mode="token-mean")
    sm, m_sm = dvpo_critic_loss(pred, old, targets, mask, taus, weights=weights, loss_agg_mode="seq-mean-token-mean")
    ss, _ = dvpo_critic_loss(pred, old, targets, mask, taus, weights=weights, loss_agg_mode="seq-mean-token-sum")
    assert torch.allclose(tm, sm, atol=1e-6) and torch.allclose(ss, 4 * tm, atol=1e-5)
    for k in m_tm:
        if k.startswith("loss_"):
            assert torch.allclose(m_tm[k], m_sm[k], atol=1e-6), k


@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 4),
    T=st.integers(1, 6),
    H=st.integers(1, 4),
    N=st.integers(1, 40),
    seed=st.integers(0, 10_000),
    margins=st.sampled_from([(0.0, 0.0), (0.2, 0.3)]),
)
def test_fused_regularisers_equal_the_torch_reference(B, T, H, N, seed, margins):
    """The compiled cvar/gain/shift/shape/curv/cons (values, gradients, diagnostics) == the torch code."""
    from dvpo_lab.algos import kernels

    if not kernels.available(torch.zeros(1, dtype=torch.float64)):
        pytest.skip("the compiled kernels are not built here: only the torch path exists")
    gen = torch.Generator().manual_seed(seed)
    mask = random_mask(B, T, gen)
    pred = torch.randn(B, T, H, N, generator=gen, dtype=torch.float64)
    targets = torch.randn(B, T, N, generator=gen, dtype=torch.float64) * 0.5 + 0.2
    taus = quantile_levels(N, dtype=torch.float64)
    weights = {t: 0.3 for t in DVPO_TERMS if t != "risk"}
    out = []
    for fused in (True, False):
        p = pred.clone().requires_grad_()
        loss, m = dvpo_critic_loss(
            p,
            pred,
            targets,
            mask,
            taus,
            weights=weights,
            value_clip="none",
            margin_low=margins[0],
            margin_up=margins[1],
            fused=fused,
        )
        loss.backward()
        out.append((loss.detach(), p.grad, m))
    (l1, g1, m1), (l2, g2, m2) = out
    assert torch.allclose(l1, l2, atol=1e-10)
    assert torch.allclose(g1, g2, atol=1e-10)
    assert m1.keys() == m2.keys()
    for k in m1:
        assert torch.allclose(m1[k].double(), m2[k].double(), atol=1e-8), k


def test_value_clip_keeps_the_larger_loss():
    pred, old, targets, mask, taus = loss_inputs(seed=4)
    far = (old + 2.0).requires_grad_()
    plain, _ = dvpo_critic_loss(far, old, targets, mask, taus, value_clip="none", weights=ALL_OFF)
    for mode in ("mean", "quantile"):
        clipped, m = dvpo_critic_loss(
            far, old, targets, mask, taus, value_clip=mode, cliprange_value=0.2, weights=ALL_OFF
        )
        assert float(clipped) >= float(plain) - 1e-6
    near, m = dvpo_critic_loss(pred, old, targets, mask, taus, value_clip="mean", cliprange_value=0.5, weights=ALL_OFF)
    assert float(m["vf_clipfrac"]) == 0.0


def test_shape_errors_name_the_problem():
    pred, old, targets, mask, taus = loss_inputs()
    with pytest.raises(ValueError, match=r"\[B, T, H, N\]"):
        dvpo_critic_loss(pred[..., 0], old, targets, mask, taus)
