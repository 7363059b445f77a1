"""Whitening, rewards, KL estimators, clipped losses, aggregation, entropy and KL control against hand-computed
values and veRL's formulas (`verl/trainer/ppo/core_algos.py`)."""

import math

import pytest
import torch

from dvpo_lab.algos import (
    AGG_LOSS_MODES,
    AdaptiveKLController,
    FixedKLController,
    agg_loss,
    build_token_rewards,
    compute_policy_loss,
    compute_value_loss,
    entropy_from_logits,
    kl_penalty,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)

# --- masked statistics: zero mean, unit unbiased variance over valid tokens ---------------------------------


def test_masked_stats_ignore_padding():
    x = torch.tensor([[1.0, 2.0, float("inf")], [3.0, float("nan"), 100.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert masked_sum(x, m).item() == 6.0
    assert masked_mean(x, m).item() == 2.0
    torch.testing.assert_close(masked_mean(x, m, dim=-1), torch.tensor([1.5, 3.0]))
    assert masked_var(x, m).item() == pytest.approx(1.0)
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(2.0 / 3.0)


def test_masked_stats_gradient_ignores_nonfinite_padding():
    x = torch.tensor([[1.0, 2.0, float("inf")], [3.0, float("nan"), -float("inf")]], requires_grad=True)
    m = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    (masked_whiten(x, m) * torch.arange(6.0).view(2, 3)).sum().backward()
    masked_var(x, m).backward()
    assert torch.isfinite(x.grad).all() and torch.all(x.grad[~m] == 0)


def test_masked_stats_empty_mask_is_finite():
    x = torch.randn(2, 3)
    m = torch.zeros(2, 3)
    assert masked_mean(x, m).item() == 0.0
    assert masked_var(x, m).item() == 0.0
    assert torch.all(masked_whiten(x, m) == 0)


def test_masked_stats_refuse_broadcast():
    with pytest.raises(ValueError, match="shape"):
        masked_mean(torch.ones(2, 3), torch.ones(2, 1))


def test_whitening_oracle():  # masked mean 0, masked unbiased variance 1
    g = torch.Generator().manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(4, 7, generator=g)
    m = (torch.rand(4, 7, generator=g) > 0.3).float()
    x_pad = torch.where(m.bool(), x, torch.full_like(x, 1e6))  # huge pads must not enter the statistics
    w = masked_whiten(x_pad, m)
    assert abs(masked_mean(w, m).item()) < 1e-6
    assert abs(masked_var(w, m).item() - 1.0) < 1e-4
    assert torch.all(w[~m.bool()] == 0)
    kept = masked_whiten(x_pad, m, shift_mean=False)
    assert masked_mean(kept, m).item() == pytest.approx(masked_mean(x, m).item(), abs=1e-5)


# --- reward construction: score on the last valid token, minus beta * KL ------------------------------------


def test_build_token_rewards_oracle():
    scores = torch.tensor([1.0, 0.0, 1.0])
    m = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    kl = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.5, 9.0, -0.1, 9.0], [1.0, 1.0, 1.0, 1.0]])
    beta = 0.1
    r = build_token_rewards(scores, m, kl, beta)
    torch.testing.assert_close(r.sum(-1)[:2], scores[:2] - beta * masked_sum(kl, m, dim=-1)[:2])
    no_kl = build_token_rewards(scores, m, None, beta)
    expected = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(no_kl, expected)
    nonzero = build_token_rewards(torch.tensor([2.0, 3.0, 4.0]), m, None, 0.0)
    assert nonzero[0].nonzero().flatten().tolist() == [2]  # last valid token only
    assert nonzero[1].nonzero().flatten().tolist() == [2]  # last valid, after a gap
    assert torch.all(nonzero[2] == 0)  # empty row: nowhere to put the score
    assert torch.all(r[~m] == 0)


# --- KL estimators: hand-computed k1/k2/k3 and Monte Carlo against the exact KL -----------------------------


@pytest.mark.parametrize(
    ("pi", "pi_ref", "k1", "k2", "k3"),
    [(0.5, 0.25, 0.693147, 0.240227, 0.193147), (0.25, 0.5, -0.693147, 0.240227, 0.306853)],
)
def test_kl_single_token(pi, pi_ref, k1, k2, k3):  # hand-computed, d = +-ln 2
    lp = torch.tensor([[math.log(pi)]])
    lr = torch.tensor([[math.log(pi_ref)]])
    for kinds, value in [
        (("k1", "kl"), k1),
        (("k2", "mse"), k2),
        (("k3", "low_var_kl"), k3),
        (("abs",), abs(k1)),
    ]:
        for kind in kinds:
            assert kl_penalty(lp, lr, kind).item() == pytest.approx(value, abs=1e-6)


def test_kl_zero_when_equal_and_unknown_kind():
    lp = torch.randn(3, 5)
    for kind in ("k1", "abs", "k2", "k3"):
        assert torch.all(kl_penalty(lp, lp, kind) == 0)
    with pytest.raises(ValueError, match="low_var_kl"):
        kl_penalty(lp, lp, "k4")


def test_kl_k3_clamped():
    out = kl_penalty(torch.tensor([[-100.0, 100.0]]), torch.tensor([[0.0, 0.0]]), "k3")
    assert torch.isfinite(out).all() and out.max().item() == 10.0


def test_kl_monte_carlo():  # sample means against the exact KL
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    pi_ref = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    exact = (pi * (pi / pi_ref).log()).sum().item()
    assert exact == pytest.approx(0.274887, abs=1e-6)
    idx = torch.multinomial(pi, 10**6, replacement=True, generator=torch.Generator().manual_seed(0))
    lp, lr = pi.log()[idx].unsqueeze(0), pi_ref.log()[idx].unsqueeze(0)
    k1, k3 = kl_penalty(lp, lr, "k1"), kl_penalty(lp, lr, "k3")
    assert abs(k1.mean().item() - exact) < 0.003
    assert abs(k3.mean().item() - exact) < 0.003
    assert k3.var().item() == pytest.approx(0.043, abs=0.005)
    assert k1.var().item() == pytest.approx(0.512, abs=0.01)


# --- policy loss: hand-computed clip/dual-clip values and gradients -----------------------------------------


@pytest.mark.parametrize(
    ("adv", "rho", "loss", "grad"),
    [
        (1.0, 1.5, -1.2, 0.0),
        (-1.0, 0.5, 0.8, 0.0),
        (-1.0, 2.0, 2.0, 2.0),
        (-1.0, 5.0, 3.0, 0.0),
        (0.7, 1.0, -0.7, -0.7),
    ],
)
def test_policy_loss_oracle(adv, rho, loss, grad):  # hand-computed, eps = 0.2, c = 3
    old = torch.tensor([[-1.0]])
    logp = (old + math.log(rho)).requires_grad_(True)
    out, metrics = compute_policy_loss(logp, old, torch.tensor([[adv]]), torch.ones(1, 1), 0.2, 0.2, 3.0)
    out.backward()
    assert out.item() == pytest.approx(loss, abs=1e-6)
    assert logp.grad.item() == pytest.approx(grad, abs=1e-6)
    assert metrics["pg_clipfrac_lower"].item() == (1.0 if rho == 5.0 else 0.0)
    assert metrics["pg_clipfrac"].item() == (1.0 if loss in (-1.2, 0.8) else 0.0)
    assert metrics["ppo_kl"].item() == pytest.approx(-math.log(rho), abs=1e-6)


def test_policy_loss_dual_clip_disabled_and_invalid():
    old = torch.zeros(1, 1)
    logp = torch.full((1, 1), math.log(5.0))
    loss, metrics = compute_policy_loss(logp, old, -torch.ones(1, 1), torch.ones(1, 1), clip_ratio_c=None)
    assert loss.item() == pytest.approx(5.0, rel=1e-6) and metrics["pg_clipfrac_lower"].item() == 0.0
    with pytest.raises(ValueError, match="clip_ratio_c"):
        compute_policy_loss(logp, old, -torch.ones(1, 1), torch.ones(1, 1), clip_ratio_c=1.0)


def test_policy_loss_clip_higher():
    old = torch.zeros(1, 1)
    logp = torch.full((1, 1), math.log(1.25))
    loss, _ = compute_policy_loss(logp, old, torch.ones(1, 1), torch.ones(1, 1), 0.2, 0.28)
    assert loss.item() == pytest.approx(-1.25, abs=1e-6)  # inside [0.8, 1.28]: unclipped


@pytest.mark.parametrize("mode", AGG_LOSS_MODES)
def test_frozen_policy(mode):  # pi = pi_old = pi_ref: ratio 1, no clipping, loss -agg(A)
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(3, 5, generator=g)
    adv = torch.randn(3, 5, generator=g)
    m = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0]]).float()
    logp = lp.clone().requires_grad_(True)
    loss, metrics = compute_policy_loss(logp, lp, adv, m, loss_agg_mode=mode, loss_scale_factor=8)
    torch.testing.assert_close(loss, agg_loss(-adv, m, mode, loss_scale_factor=8))
    assert metrics["pg_clipfrac"].item() == 0.0 and metrics["ppo_kl"].item() == 0.0
    for kind in ("k1", "k2", "k3", "abs"):
        assert torch.all(kl_penalty(lp, lp, kind) == 0)
    loss.backward()  # at rho = 1 the gradient is -A (times the aggregation weights)
    weights = torch.autograd.functional.jacobian(lambda x: agg_loss(x, m, mode, loss_scale_factor=8), adv)
    torch.testing.assert_close(logp.grad, -adv * weights)


# --- value loss: hand-computed clipped values and gradients -------------------------------------------------


@pytest.mark.parametrize(("v", "loss", "grad", "clipfrac"), [(0.5, 0.32, 0.0, 1.0), (0.1, 0.405, -0.9, 0.0)])
def test_value_loss_oracle(v, loss, grad, clipfrac):
    values = torch.tensor([[v]], requires_grad=True)
    out, metrics = compute_value_loss(values, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2)
    out.backward()
    assert out.item() == pytest.approx(loss, abs=1e-6)
    assert values.grad.item() == pytest.approx(grad, abs=1e-6)
    assert metrics["vf_clipfrac"].item() == clipfrac


def test_value_loss_no_clip():
    out, metrics = compute_value_loss(
        torch.full((1, 1), 0.5), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), None
    )
    assert out.item() == pytest.approx(0.125) and metrics["vf_clipfrac"].item() == 0.0


# --- aggregation: hand-computed on losses [4] and [1, 1, 1] -------------------------------------------------


def test_agg_loss_oracle():
    loss = torch.tensor([[4.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    m = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    expected = {
        "token-mean": 1.75,
        "seq-mean-token-mean": 2.5,
        "seq-mean-token-sum": 3.5,
        "seq-mean-token-sum-norm": 7 / 3,  # budget L = 3 = T here
        "dr-grpo": 7 / 6,
    }
    for mode, value in expected.items():
        assert agg_loss(loss, m, mode, loss_scale_factor=3).item() == pytest.approx(value, abs=1e-6)
    eq = torch.ones(2, 3)
    assert agg_loss(loss, eq, "token-mean").item() == pytest.approx(agg_loss(loss, eq, "seq-mean-token-mean").item())


def _rows_summing_to_3_and_4(width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two responses of 3 and 4 unit token losses, right-padded to `width` (pads hold garbage)."""
    loss = torch.full((2, width), 100.0)
    mask = torch.zeros(2, width)
    loss[0, :3], loss[1, :4] = 1.0, 1.0
    mask[0, :3], mask[1, :4] = 1.0, 1.0
    return loss, mask


@pytest.mark.parametrize("width", [4, 8, 16])
def test_dr_grpo_modes_divide_by_the_budget_not_the_padding(width):
    """Token-loss sums 3 and 4, budget 64: 7/64 (verl sum / L) and 7/128 (TRL sum / (B L)),
    the same for every padded width (dividing by the padded width T would give 1.75, 0.875, 0.4375)."""
    loss, mask = _rows_summing_to_3_and_4(width)
    assert agg_loss(loss, mask, "seq-mean-token-sum-norm", loss_scale_factor=64).item() == pytest.approx(7 / 64)
    assert agg_loss(loss, mask, "dr-grpo", loss_scale_factor=64).item() == pytest.approx(7 / 128)
    # every valid token gets the same constant weight 1/L (1/(B L)), whatever the padding
    weights = torch.autograd.functional.jacobian(
        lambda x: agg_loss(x, mask, "seq-mean-token-sum-norm", loss_scale_factor=64), loss
    )
    torch.testing.assert_close(weights, mask / 64)


@pytest.mark.parametrize("mode", ["seq-mean-token-sum-norm", "dr-grpo"])
def test_dr_grpo_modes_need_a_budget_at_least_the_width(mode):
    loss, mask = _rows_summing_to_3_and_4(8)
    with pytest.raises(ValueError, match="loss_scale_factor"):
        agg_loss(loss, mask, mode)
    with pytest.raises(ValueError, match="below the padded response width 8"):
        agg_loss(loss, mask, mode, loss_scale_factor=4)


@pytest.mark.parametrize("mode", AGG_LOSS_MODES)
def test_every_loss_is_independent_of_padding(mode):
    """The policy loss and every critic loss (scalar, ensemble, DVPO quantile) give the same value for the same
    responses padded to different widths, in every aggregation mode."""
    from dvpo_lab.algos import DVPO_TERMS, quantile_levels
    from dvpo_lab.algos.rbppo import ensemble_value_loss
    from tests.algos.helpers import dvpo_loss as dvpo_critic_loss

    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([3, 4, 1])
    B, T0, K, H, N = 3, 4, 2, 2, 5
    base = {
        "logp": torch.randn(B, T0, generator=g),
        "old": torch.randn(B, T0, generator=g),
        "adv": torch.randn(B, T0, generator=g),
        "v": torch.randn(B, T0, K, generator=g),
        "v_old": torch.randn(B, T0, K, generator=g),
        "ret": torch.randn(B, T0, generator=g),
        "q": torch.randn(B, T0, H, N, generator=g),
        "q_old": torch.randn(B, T0, H, N, generator=g),
        "z": torch.randn(B, T0, N, generator=g),
    }
    taus = quantile_levels(N)
    weights = {t: 0.1 for t in DVPO_TERMS}

    def losses(width: int) -> list[float]:
        pad = {k: torch.cat([x, torch.full((B, width - T0, *x.shape[2:]), 7.0)], 1) for k, x in base.items()}
        mask = (torch.arange(width)[None, :] < lengths[:, None]).float()
        kw = {"loss_agg_mode": mode, "loss_scale_factor": 16}
        out = [
            compute_policy_loss(pad["logp"], pad["old"], pad["adv"], mask, **kw)[0],
            compute_value_loss(pad["v"][..., 0], pad["v_old"][..., 0], pad["ret"], mask, **kw)[0],
            ensemble_value_loss(pad["v"], pad["v_old"], pad["ret"], mask, **kw)[0],
            dvpo_critic_loss(pad["q"], pad["q_old"], pad["z"], mask, taus, weights=weights, **kw)[0],
        ]
        return [float(x) for x in out]

    narrow = losses(4)
    for width in (9, 16):
        assert losses(width) == pytest.approx(narrow, rel=1e-5), width


def test_agg_loss_unknown_mode_lists_modes():
    with pytest.raises(ValueError, match="seq-mean-token-sum-norm"):
        agg_loss(torch.ones(1, 1), torch.ones(1, 1), "token_mean")


# --- entropy: ln V for uniform logits, about 0 for a peaked distribution ------------------------------------


def test_entropy_oracle():
    v = 7
    assert entropy_from_logits(torch.zeros(2, 3, v)).allclose(torch.full((2, 3), math.log(v)))
    peaked = torch.zeros(1, 1, v)
    peaked[..., 0] = 100.0
    assert entropy_from_logits(peaked).item() < 1e-6
    masked = torch.tensor([[[0.0, 0.0, float("-inf")]]], requires_grad=True)
    h = entropy_from_logits(masked)
    h.sum().backward()
    assert h.item() == pytest.approx(math.log(2)) and torch.isfinite(masked.grad).all()


# --- KL controllers: veRL's `AdaptiveKLController` update ---------------------------------------------------


def test_adaptive_kl_oracle():
    ctrl = AdaptiveKLController(init_kl_coef=0.1, target_kl=0.01, horizon=1000)
    ctrl.update(current_kl=0.1, n_steps=256)  # 10 x target: error clipped at 0.2
    assert ctrl.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 1000))
    ctrl.update(current_kl=torch.tensor(0.0), n_steps=1000)  # error clipped at -0.2
    assert ctrl.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 1000) * 0.8)
    before = ctrl.value
    ctrl.update(float("nan"), 10)
    assert ctrl.value == before


def test_kl_controllers_state_dict():
    ctrl = AdaptiveKLController(0.05, 6.0, 10000)
    ctrl.update(3.0, 64)
    fresh = AdaptiveKLController(1.0, 1.0, 1.0)
    fresh.load_state_dict(ctrl.state_dict())
    assert fresh.state_dict() == ctrl.state_dict()
    fixed = FixedKLController(0.001)
    fixed.update(100.0, 256)
    assert fixed.value == 0.001
    other = FixedKLController(0.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.001
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, 0.0, 10)
