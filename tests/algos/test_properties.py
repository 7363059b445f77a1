"""Property tests over random shapes (B 1..6, T 1..12) and random masks (empty rows, gaps in the middle)."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dvpo_lab.algos import (
    AGG_LOSS_MODES,
    agg_loss,
    build_token_rewards,
    compute_gae,
    compute_policy_loss,
    group_advantages,
    kl_penalty,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)

FAST = settings(max_examples=50, deadline=None)


@st.composite
def masked_batch(draw, max_b: int = 6, max_t: int = 12):
    """(mask [B, T] bool, generator): masks drawn cell by cell so empty rows and middle gaps both occur."""
    b = draw(st.integers(1, max_b))
    t = draw(st.integers(1, max_t))
    rows = draw(st.lists(st.lists(st.booleans(), min_size=t, max_size=t), min_size=b, max_size=b))
    seed = draw(st.integers(0, 2**31 - 1))
    return torch.tensor(rows, dtype=torch.bool), torch.Generator().manual_seed(seed)


def _compact(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's valid entries to the front (right padding with 0). [B, T] -> ([B, T], mask [B, T])."""
    out = torch.zeros_like(x)
    new_mask = torch.zeros_like(mask)
    for i in range(x.shape[0]):
        vals = x[i][mask[i]]
        out[i, : vals.numel()] = vals
        new_mask[i, : vals.numel()] = True
    return out, new_mask


gammas = st.floats(0.5, 1.0)
lams = st.floats(0.0, 1.0)


@FAST
@given(masked_batch(), gammas, lams)
def test_gae_masking_invariance(batch, gamma, lam):
    mask, g = batch
    r = torch.randn(mask.shape, generator=g, dtype=torch.float64)
    v = torch.randn(mask.shape, generator=g, dtype=torch.float64)
    adv, ret = compute_gae(r, v, mask, gamma, lam)

    # Removing the gaps (compact, right-padded) leaves the valid outputs unchanged.
    r_c, mask_c = _compact(r, mask)
    v_c, _ = _compact(v, mask)
    adv_c, ret_c = compute_gae(r_c, v_c, mask_c, gamma, lam)
    torch.testing.assert_close(adv_c[mask_c], adv[mask])
    torch.testing.assert_close(ret_c[mask_c], ret[mask])

    # Appending masked columns with arbitrary rewards and values changes nothing either.
    extra = 3
    pad = torch.zeros(mask.shape[0], extra, dtype=torch.bool)
    r_p = torch.cat([r, 100 * torch.randn(mask.shape[0], extra, generator=g, dtype=torch.float64)], dim=1)
    v_p = torch.cat([v, 100 * torch.randn(mask.shape[0], extra, generator=g, dtype=torch.float64)], dim=1)
    adv_p, ret_p = compute_gae(r_p, v_p, torch.cat([mask, pad], dim=1), gamma, lam)
    torch.testing.assert_close(adv_p[:, : mask.shape[1]], adv)
    torch.testing.assert_close(ret_p[:, : mask.shape[1]], ret)


@FAST
@given(masked_batch(), gammas, lams)
def test_gae_returns_equal_adv_plus_values(batch, gamma, lam):
    mask, g = batch
    r = torch.randn(mask.shape, generator=g)
    v = torch.randn(mask.shape, generator=g)
    adv, ret = compute_gae(r, v, mask, gamma, lam)
    torch.testing.assert_close(ret[mask], (adv + v)[mask])
    assert torch.all(adv[~mask] == 0) and torch.all(ret[~mask] == 0)
    # Single valid token: A = r - V, whatever gamma and lambda.
    lone = mask & (mask.sum(-1, keepdim=True) == 1)
    torch.testing.assert_close(adv[lone], (r - v)[lone])


@FAST
@given(masked_batch())
def test_whitened_stats(batch):
    mask, g = batch
    x = 5.0 + 3.0 * torch.randn(mask.shape, generator=g, dtype=torch.float64)
    assume(mask.sum() >= 2 and masked_var(x, mask).item() > 1e-2)
    x = torch.where(mask, x, torch.full_like(x, -1e9))  # pads must not enter the statistics
    w = masked_whiten(x, mask)
    assert abs(masked_mean(w, mask).item()) < 1e-6
    assert abs(masked_var(w, mask).item() - 1.0) < 1e-4
    assert torch.all(w[~mask] == 0)


@FAST
@given(
    st.lists(st.tuples(st.integers(0, 3), st.floats(-5, 5)), min_size=1, max_size=12),
    st.booleans(),
    st.booleans(),
)
def test_group_advantages_sum_to_zero(items, norm_by_std, leave_one_out):
    index = torch.tensor([i for i, _ in items])
    scores = torch.tensor([s for _, s in items], dtype=torch.float64)
    adv = group_advantages(scores, index, norm_by_std=norm_by_std, leave_one_out=leave_one_out)
    assert torch.isfinite(adv).all()
    for gid in index.unique():
        sel = index == gid
        if sel.sum() == 1:  # verl: mean 0, std 1
            expected = scores[sel] / (1 + 1e-6) if norm_by_std else scores[sel]
            torch.testing.assert_close(adv[sel], expected)
        else:
            assert abs(adv[sel].sum().item()) < 1e-8


@FAST
@given(masked_batch())
def test_kl_k2_k3_nonnegative(batch):
    mask, g = batch
    logp = -30 * torch.rand(mask.shape, generator=g)
    ref = -30 * torch.rand(mask.shape, generator=g)
    for kind in ("k2", "mse", "k3", "low_var_kl", "abs"):
        out = kl_penalty(logp, ref, kind)
        assert torch.isfinite(out).all() and torch.all(out >= 0)


@FAST
@given(masked_batch(), st.sampled_from(AGG_LOSS_MODES))
def test_policy_loss_at_unit_ratio(batch, mode):
    mask, g = batch
    logp = torch.randn(mask.shape, generator=g)
    adv = torch.randn(mask.shape, generator=g)
    T = mask.shape[1]  # the budget of the Dr. GRPO modes: the rollout width at its largest
    loss, metrics = compute_policy_loss(logp, logp.clone(), adv, mask, loss_agg_mode=mode, loss_scale_factor=T)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, agg_loss(-adv, mask, mode, loss_scale_factor=T))
    assert metrics["pg_clipfrac"].item() == 0.0 and metrics["pg_clipfrac_lower"].item() == 0.0


@FAST
@given(masked_batch(), st.sampled_from(AGG_LOSS_MODES))
def test_policy_loss_finite_for_wild_ratios(batch, mode):
    mask, g = batch
    logp = 50 * torch.randn(mask.shape, generator=g)  # log-ratios well beyond the [-20, 20] clamp
    old = torch.where(mask, 50 * torch.randn(mask.shape, generator=g), torch.full(mask.shape, -math.inf))
    adv = torch.randn(mask.shape, generator=g)
    logp.requires_grad_(True)
    loss, metrics = compute_policy_loss(logp, old, adv, mask, loss_agg_mode=mode, loss_scale_factor=mask.shape[1])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert all(torch.isfinite(v) for v in metrics.values())


@FAST
@given(st.integers(1, 6), st.integers(1, 12), st.data())
def test_agg_modes_equal_lengths(b, t, data):
    length = data.draw(st.integers(1, t))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    # Same number of valid tokens per row, at random positions.
    mask = torch.zeros(b, t, dtype=torch.bool)
    for i in range(b):
        mask[i, torch.randperm(t, generator=g)[:length]] = True
    loss = torch.randn(b, t, generator=g, dtype=torch.float64)
    tm = agg_loss(loss, mask, "token-mean")
    torch.testing.assert_close(agg_loss(loss, mask, "seq-mean-token-mean"), tm)
    torch.testing.assert_close(agg_loss(loss, mask, "seq-mean-token-sum"), length * tm)
    budget = data.draw(st.integers(t, 2 * t))  # any budget >= the padded width
    torch.testing.assert_close(
        agg_loss(loss, mask, "seq-mean-token-sum-norm", loss_scale_factor=budget), b * length / budget * tm
    )
    torch.testing.assert_close(agg_loss(loss, mask, "dr-grpo", loss_scale_factor=budget), length / budget * tm)


@FAST
@given(masked_batch(), st.floats(0.0, 1.0))
def test_token_rewards_sum(batch, kl_coef):
    mask, g = batch
    scores = torch.randn(mask.shape[0], generator=g, dtype=torch.float64)
    kl = torch.randn(mask.shape, generator=g, dtype=torch.float64)
    r = build_token_rewards(scores, mask, kl, kl_coef)
    has_tokens = mask.any(-1)
    expected = torch.where(has_tokens, scores, 0.0) - kl_coef * masked_sum(kl, mask, dim=-1)
    torch.testing.assert_close(r.sum(-1), expected)
    assert torch.all(r[~mask] == 0)


@pytest.mark.parametrize("mode", AGG_LOSS_MODES)
def test_agg_all_masked_is_finite(mode):
    assert agg_loss(torch.randn(3, 4), torch.zeros(3, 4), mode, loss_scale_factor=4).item() == 0.0
