"""Quantile value distributions for DVPO (DVPO paper, arXiv 2512.03847, Eqs. 2-11; quantile regression as in
QR-DQN, Dabney et al. 2018; what is reconstructed and what goes beyond the paper: docs/algorithms.md).

Shapes: B sequences, T response tokens, H critic heads, N quantiles per head. A quantile critic outputs
`[B, T, H, N]`; the ensemble is the mean over heads, `[B, T, N]`. Everything that a loss reads is taken at
valid tokens only (`x[mask.bool()]`, shape `[n, ...]`), so padding never enters a statistic.

The all-pairs quantile Huber loss is computed in O(N log N) per token from sorted targets and prefix sums
instead of materialising the `[n, H, N, N]` pair tensor (N = 200 would need ~0.5 GB per minibatch on the
testbed); `quantile_huber_pairs` is the direct O(N^2) form the tests compare it with.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from dvpo_lab.algos import _qr_kernel
from dvpo_lab.algos.core import agg_loss, masked_whiten
from dvpo_lab.algos.registry import register_adv_est

__all__ = [
    "ACTOR_ADVANTAGES",
    "DVPO_TERMS",
    "TAU_GRIDS",
    "MONOTONE_MODES",
    "cvar_weights",
    "distorted_expectation",
    "dist_gae_advantage",
    "dvpo_critic_loss",
    "monotone_quantiles",
    "quantile_gae",
    "quantile_huber_pairs",
    "quantile_huber_sorted",
    "quantile_levels",
    "tail_size",
    "wang_weights",
]

TAU_GRIDS = ("mid", "paper")
MONOTONE_MODES = ("none", "sort", "cumsoftplus")
ACTOR_ADVANTAGES = ("mean", "cvar", "wang")
# Regulariser names, in the paper's cumulative-ablation order (DVPO paper); `risk` is Eq. 4.
DVPO_TERMS = ("cons", "cvar", "gain", "shift", "shape", "curv", "risk")
# softplus(_CUMSOFTPLUS_OFFSET) = 1e-3: a zero-initialised head starts as a nearly flat, increasing curve.
_CUMSOFTPLUS_OFFSET = math.log(math.expm1(1e-3))


# Grids, monotonicity and risk measures (QR-DQN; distortions as in IQN, Dabney et al. 2018) ------------------


def quantile_levels(n: int, grid: str = "mid", device=None, dtype=torch.float32) -> torch.Tensor:
    """Quantile levels tau_1..tau_N: mid-points (2j - 1) / (2N) (QR-DQN, default) or the paper's j / N.

    Returns:
        [N].
    """
    if n < 1:
        raise ValueError(f"number of quantiles must be >= 1, got {n}")
    j = torch.arange(1, n + 1, device=device, dtype=dtype)
    if grid == "mid":
        return (2 * j - 1) / (2 * n)
    if grid == "paper":
        return j / n
    raise ValueError(f"unknown tau grid {grid!r}; choices: {list(TAU_GRIDS)}")


def monotone_quantiles(raw: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """Map raw head outputs `[..., N]` to quantiles: unchanged, sorted, or theta_1 + cumsum(softplus(delta)).

    `cumsoftplus` reads raw[..., 0] as the lowest quantile and raw[..., 1:] as gaps (shifted so a zero output
    is a gap of 1e-3); both monotone modes give non-decreasing quantiles for any input.
    """
    if mode == "none":
        return raw
    if mode == "sort":
        return raw.sort(dim=-1).values
    if mode == "cumsoftplus":
        gaps = F.softplus(raw[..., 1:] + _CUMSOFTPLUS_OFFSET)
        return torch.cat([raw[..., :1], raw[..., :1] + gaps.cumsum(-1)], dim=-1)
    raise ValueError(f"unknown monotone mode {mode!r}; choices: {list(MONOTONE_MODES)}")


def cvar_weights(n: int, alpha: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """Spectral weights of lower-tail CVaR_alpha on N equal-mass quantiles: w_i = g(i/N) - g((i-1)/N) with
    g(u) = min(u / alpha, 1); the boundary quantile gets its fractional share. Sums to 1."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"CVaR level alpha must be in (0, 1], got {alpha}")
    u = torch.arange(0, n + 1, device=device, dtype=torch.float64) / n
    g = torch.clamp(u / alpha, max=1.0)
    return (g[1:] - g[:-1]).to(dtype)


def wang_weights(n: int, eta: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """Spectral weights of the Wang(eta) distortion (as used in IQN): the distorted expectation
    int F^{-1}(Phi(Phi^{-1}(tau) + eta)) dtau equals sum_i w_i theta_i with g(u) = Phi(Phi^{-1}(u) - eta).
    eta < 0 is risk-averse, eta = 0 the mean; for a normal law it gives mu + eta * sigma."""
    normal = torch.distributions.Normal(0.0, 1.0)
    u = torch.arange(0, n + 1, dtype=torch.float64) / n
    z = normal.icdf(u.clamp(1e-300, 1 - 1e-16)) - eta
    g = normal.cdf(z)
    g[0], g[-1] = 0.0, 1.0
    return (g[1:] - g[:-1]).to(device=device, dtype=dtype)


def distorted_expectation(quantiles: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i theta_(i) over sorted quantiles `[..., N]` -> `[...]` (a spectral risk measure)."""
    return (quantiles.sort(dim=-1).values * weights).sum(-1)


def tail_size(n: int, frac: float) -> int:
    """k = max(1, floor(frac * N)) quantiles in a tail (DVPO paper Eqs. 5-9)."""
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"tail fraction must be in (0, 1], got {frac}")
    return max(1, int(math.floor(frac * n + 1e-9)))


# Distributional GAE (DVPO paper Eq. 2) ----------------------------------------------------------------------


@torch.no_grad()
def quantile_gae(
    token_rewards: torch.Tensor, quantiles: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-quantile GAE: delta^j_t = r_t + gamma theta_j(s_{t+1}) - theta_j(s_t),
    A^j_t = delta^j_t + gamma lam A^j_{t+1}; targets Z^_{j,t} = theta_j(s_t) + A^j_t, the per-quantile
    lambda-return (never one scalar return broadcast to all quantiles).

    Same masking as `compute_gae` (carry-through), run on all N quantiles at once.

    Args:
        token_rewards: [B, T], quantiles: [B, T, N] ensemble quantiles of the rollout-time critic, mask: [B, T].
    Returns:
        (advantages [B, T, N], targets [B, T, N]), 0 at padded positions.
    """
    if quantiles.dim() != 3 or quantiles.shape[:2] != token_rewards.shape or mask.shape != token_rewards.shape:
        raise ValueError(f"expected rewards [B, T], quantiles [B, T, N], mask [B, T]; got "
                         f"{tuple(token_rewards.shape)}, {tuple(quantiles.shape)}, {tuple(mask.shape)}")
    # `compute_gae`'s recursion, element for element (bit-identical to running it on the B * N rows of the
    # transposed values), but on the [B, N] slices of the [B, T, N] layout: contiguous rows, no transposes
    valid = mask.bool().unsqueeze(-1)  # [B, T, 1]
    rewards = token_rewards.unsqueeze(-1)
    next_value = torch.zeros_like(quantiles[:, 0])
    running = torch.zeros_like(quantiles[:, 0])
    adv = torch.zeros_like(quantiles)
    for t in reversed(range(quantiles.shape[1])):
        v = quantiles[:, t]
        delta = rewards[:, t] + gamma * next_value - v
        gae_t = delta + gamma * lam * running
        next_value = torch.where(valid[:, t], v, next_value)
        running = torch.where(valid[:, t], gae_t, running)
        adv[:, t] = running
    adv = torch.where(valid, adv, torch.zeros_like(adv))
    return adv, torch.where(valid, adv + quantiles, torch.zeros_like(quantiles))


def _actor_weights(n: int, kind: str, alpha: float, eta: float, device, dtype) -> torch.Tensor | None:
    if kind == "mean":
        return None
    if kind == "cvar":
        return cvar_weights(n, alpha, device=device, dtype=dtype)
    if kind == "wang":
        return wang_weights(n, eta, device=device, dtype=dtype)
    raise ValueError(f"unknown actor_advantage {kind!r}; choices: {list(ACTOR_ADVANTAGES)}")


@register_adv_est("dist_gae")
def dist_gae_advantage(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    whiten_advantages: bool = True,
    actor_advantage: str = "mean",
    risk_alpha: float = 0.1,
    wang_eta: float = 0.0,
    **_: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DVPO advantages: distributional GAE, collapsed to one advantage per token for the actor.

    actor_advantage="mean" (the paper's reconstruction): A_t = mean_j A^j_t, which equals GAE on the mean
    value (GAE is linear in the values). "cvar" / "wang" (beyond the paper): A_t = rho(Z^_t) - rho(theta_t),
    the risk measure of the lambda-return distribution minus that of the value distribution (spectral weights
    on sorted quantiles).

    Args:
        token_rewards: [B, T], mask: [B, T], values: [B, T, N] rollout-time ensemble quantiles (required).
    Returns:
        (advantages [B, T] whitened unless whiten_advantages=False, targets [B, T, N]).
    """
    if values is None or values.dim() != 3:
        raise ValueError("adv_estimator 'dist_gae' needs quantile values: pass values=[B, T, N] (critic=quantile)")
    adv_q, targets = quantile_gae(token_rewards, values, mask, gamma, lam)
    weights = _actor_weights(values.shape[-1], actor_advantage, risk_alpha, wang_eta, values.device, values.dtype)
    if weights is None:
        adv = adv_q.mean(-1)
    else:
        adv = distorted_expectation(targets, weights) - distorted_expectation(values, weights)
        adv = torch.where(mask.bool(), adv, torch.zeros_like(adv))
    if whiten_advantages:
        adv = masked_whiten(adv, mask)
    return adv, targets


# Quantile regression (DVPO paper Eq. 3; QR-DQN, Dabney et al. 2018) -----------------------------------------


def quantile_huber_pairs(pred: torch.Tensor, target: torch.Tensor, taus: torch.Tensor, kappa: float) -> torch.Tensor:
    """Direct all-pairs quantile Huber loss per predicted quantile (the O(N M) reference form).

    rho^kappa_tau(u) = |tau - 1[u < 0]| L_kappa(u) / kappa, u = z_j - theta_i; kappa = 0 is the pinball loss
    u (tau - 1[u < 0]).

    Args:
        pred: [..., N], target: [..., M] (same leading dims), taus: [N].
    Returns:
        [..., N]: mean over the M targets of the loss of each predicted quantile.
    """
    u = target.unsqueeze(-2) - pred.unsqueeze(-1)  # [..., N, M]
    weight = (taus.unsqueeze(-1) - (u < 0).to(u.dtype)).abs()
    if kappa == 0:
        elem = weight * u.abs()
    else:
        absu = u.abs()
        huber = torch.where(absu <= kappa, 0.5 * u.square(), kappa * (absu - 0.5 * kappa))
        elem = weight * huber / kappa
    return elem.mean(-1)


def quantile_huber_sorted(pred: torch.Tensor, target: torch.Tensor, taus: torch.Tensor, kappa: float) -> torch.Tensor:
    """The same loss as `quantile_huber_pairs` in O((N + M) log M): sorted targets and prefix sums of z, z^2.

    For each theta_i the targets split into four bands by searchsorted: z < theta - kappa (linear, weight
    1 - tau), [theta - kappa, theta) (quadratic, 1 - tau), [theta, theta + kappa] (quadratic, tau) and above
    (linear, tau); each band's sum needs only its count, sum z and sum z^2. Computed in float64 (the prefix
    sums cancel), returned in pred's dtype; gradients flow to `pred` only.

    Args:
        pred: [..., N], target: [..., M] (same leading dims; need not be sorted), taus: [N].
    Returns:
        [..., N].
    """
    out_dtype = pred.dtype
    theta = pred.double()
    z = target.detach().double().sort(dim=-1).values
    tau = taus.double()
    zeros = z.new_zeros(z.shape[:-1] + (1,))
    p1 = torch.cat([zeros, z.cumsum(-1)], -1)  # [..., M + 1]
    p2 = torch.cat([zeros, z.square().cumsum(-1)], -1)
    M = z.shape[-1]

    def band(lo: torch.Tensor, hi: torch.Tensor):
        n = (hi - lo).to(theta.dtype)
        return n, p1.gather(-1, hi) - p1.gather(-1, lo), p2.gather(-1, hi) - p2.gather(-1, lo)

    th = theta.detach().contiguous()
    b = torch.searchsorted(z, th, right=False)  # #{z < theta}
    if kappa == 0:
        n_lo, s1_lo, _ = band(torch.zeros_like(b), b)
        n_hi, s1_hi, _ = band(b, torch.full_like(b, M))
        loss = (1 - tau) * (theta * n_lo - s1_lo) + tau * (s1_hi - theta * n_hi)
        return (loss / M).to(out_dtype)
    a = torch.searchsorted(z, th - kappa, right=False)  # #{z < theta - kappa}
    c = torch.searchsorted(z, th + kappa, right=True)  # #{z <= theta + kappa}
    n1, s1_1, _ = band(torch.zeros_like(a), a)
    n2, s1_2, s2_2 = band(a, b)
    n3, s1_3, s2_3 = band(b, c)
    n4, s1_4, _ = band(c, torch.full_like(c, M))
    quad2 = s2_2 - 2 * theta * s1_2 + theta.square() * n2  # sum (z - theta)^2 over the band
    quad3 = s2_3 - 2 * theta * s1_3 + theta.square() * n3
    loss = ((1 - tau) * ((theta - 0.5 * kappa) * n1 - s1_1 + quad2 / (2 * kappa))
            + tau * (quad3 / (2 * kappa) + s1_4 - (theta + 0.5 * kappa) * n4))
    return (loss / M).to(out_dtype)


class _QuantileHuberCPU(torch.autograd.Function):
    """All-pairs quantile Huber loss per predicted quantile on CPU, value and gradient from `_qr_kernel`."""

    @staticmethod
    def forward(ctx, pred: torch.Tensor, z_sorted: torch.Tensor, row_token: torch.Tensor, taus: torch.Tensor,
                kappa: float) -> torch.Tensor:
        theta = pred.detach()
        if theta.dtype not in (torch.float32, torch.float64):
            theta = theta.float()
        theta = theta.contiguous()
        loss, grad = torch.empty_like(theta), torch.empty_like(theta)
        _qr_kernel.quantile_huber_rows(
            theta.numpy(), z_sorted.detach().double().contiguous().numpy(), row_token.numpy(),
            taus.detach().double().contiguous().numpy(), kappa, loss.numpy(), grad.numpy())
        ctx.save_for_backward(grad.to(pred.dtype))
        return loss.to(pred.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad_out * grad, None, None, None, None


class _RegularisersCPU(torch.autograd.Function):
    """The cvar/gain/shift/shape/curv/cons terms per token `[6, n]` and their diagnostics `[n, 7]`, both
    passes compiled (`_qr_kernel.regularisers`): ~20 small torch ops and their backward become two loops."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, z_sorted: torch.Tensor, ka: int, kb: int, kl: int, ku: int,
                margin_low: float, margin_up: float):
        pn = p.detach().contiguous().numpy()
        zn = z_sorted.detach().double().contiguous().numpy()
        terms, stats, order = _qr_kernel.regularisers(pn, zn, ka, kb, kl, ku, margin_low, margin_up)
        ctx.saved = (pn, zn, order, (ka, kb, kl, ku, margin_low, margin_up))
        stats_t = torch.from_numpy(stats).to(p.dtype)
        ctx.mark_non_differentiable(stats_t)
        return torch.from_numpy(terms).to(p.dtype), stats_t

    @staticmethod
    def backward(ctx, g_terms: torch.Tensor, _g_stats: torch.Tensor):
        pn, zn, order, (ka, kb, kl, ku, ml, mu) = ctx.saved
        dp = np.empty_like(pn)
        _qr_kernel.regularisers_grad(pn, zn, order, g_terms.detach().double().numpy(), ka, kb, kl, ku, ml, mu, dp)
        return torch.from_numpy(dp), None, None, None, None, None, None, None


def quantile_huber(pred: torch.Tensor, z_sorted: torch.Tensor, taus: torch.Tensor, kappa: float) -> torch.Tensor:
    """All-pairs quantile Huber loss per predicted quantile against ascending targets shared by the rows.

    Uses the compiled CPU kernel when available (CPU tensors), else `quantile_huber_sorted` (GPU, or no numba).

    Args:
        pred: [n, H, N], z_sorted: [n, M] ascending, taus: [N].
    Returns:
        [n, H, N].
    """
    n, H, N = pred.shape
    if pred.device.type != "cpu" or not _qr_kernel.AVAILABLE:
        return quantile_huber_sorted(pred, z_sorted.unsqueeze(1).expand(n, H, z_sorted.shape[-1]), taus, kappa)
    row_token = torch.arange(n).repeat_interleave(H)
    out = _QuantileHuberCPU.apply(pred.reshape(n * H, N), z_sorted, row_token, taus, kappa)
    return out.reshape(n, H, N)


# The DVPO critic loss (DVPO paper Eqs. 3-11) ----------------------------------------------------------------


def sort_last(x: torch.Tensor) -> torch.Tensor:
    """Ascending sort along the last dim, differentiable. On CPU the order comes from numpy's vectorised
    argsort (~10x faster than `torch.sort` here) and the values from `gather` (whose backward is a scatter);
    a tensor that needs no gradient is sorted by value alone (numpy's sort, ~5x faster again: the values of a
    sort do not depend on how ties are ordered)."""
    if x.device.type != "cpu" or x.dim() == 0 or x.dtype not in (torch.float32, torch.float64):
        return x.sort(dim=-1).values
    if not (x.requires_grad and torch.is_grad_enabled()):
        return torch.from_numpy(np.sort(x.detach().numpy(), axis=-1))
    idx = torch.from_numpy(np.argsort(x.detach().contiguous().numpy(), axis=-1))
    return x.gather(-1, idx)


def _tail_var(x: torch.Tensor) -> torch.Tensor:
    return x.var(dim=-1, unbiased=False) if x.shape[-1] > 1 else x.new_zeros(x.shape[:-1])


def _qr_per_token(pred_heads: torch.Tensor, z_sorted: torch.Tensor, taus: torch.Tensor, kappa: float,
                  qr_on: str) -> torch.Tensor:
    """Per-quantile QR loss `[n, H', N]`: per head (H' = H) or on the ensemble (H' = 1)."""
    pred = pred_heads if qr_on == "heads" else pred_heads.mean(-2, keepdim=True)
    return quantile_huber(pred, z_sorted, taus, kappa)


def _fused_regularisers(p: torch.Tensor) -> bool:
    return p.device.type == "cpu" and _qr_kernel.AVAILABLE and p.dtype in (torch.float32, torch.float64)


def _regularisers_torch(p: torch.Tensor, z: torch.Tensor, w: dict[str, float], ka: int, kb: int, kl: int, ku: int,
                        margin_low: float, margin_up: float) -> dict[str, torch.Tensor]:
    """The cvar/gain/shift/shape/curv/cons terms per token in torch (the reference, and the GPU path).

    Args:
        p: [n, H, N] predicted quantiles per head, z: [n, N] ascending targets, w: the active terms; ka/kb:
        tail sizes over the N quantiles, kl/ku over the N - 2 second differences.
    """
    n, H, N = p.shape
    ens = p.mean(-2)  # [n, N]
    ens_sorted = sort_last(ens)
    lo_p, up_p, lo_z, up_z = ens_sorted[:, :ka], ens_sorted[:, N - kb:], z[:, :ka], z[:, N - kb:]
    out: dict[str, torch.Tensor] = {}
    if "cvar" in w:
        out["cvar"] = (lo_p.mean(-1) - lo_z.mean(-1)).square()
    if "gain" in w:
        out["gain"] = (up_p.mean(-1) - up_z.mean(-1)).square()
    if "shift" in w:
        out["shift"] = F.relu(z.mean(-1) - ens.mean(-1))
    if "shape" in w:
        out["shape"] = (F.relu(_tail_var(lo_p) - (1 - margin_low) * _tail_var(lo_z))
                        + F.relu((1 + margin_up) * _tail_var(up_z) - _tail_var(up_p)))
    if "curv" in w:
        if N >= 3:
            d2 = ens_sorted[:, 2:] - 2 * ens_sorted[:, 1:-1] + ens_sorted[:, :-2]  # [n, N - 2]
            out["curv"] = F.relu(d2[:, :kl].mean(-1)) + F.relu(-d2[:, N - 2 - ku:].mean(-1))
        else:
            out["curv"] = ens.new_zeros(n)
    if "cons" in w:
        if H > 1:
            pairs = [(p[:, h] - p[:, g]).square().mean(-1) for h in range(H) for g in range(h + 1, H)]
            out["cons"] = torch.stack(pairs).mean(0)
        else:
            out["cons"] = ens.new_zeros(n)
    return out


def dvpo_critic_loss(
    pred: torch.Tensor,
    old_pred: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    taus: torch.Tensor,
    *,
    kappa: float = 0.02,
    qr_on: str = "heads",
    value_clip: str = "mean",
    cliprange_value: float | None = 0.5,
    tail_alpha: float = 0.1,
    tail_beta: float = 0.1,
    margin_low: float = 0.0,
    margin_up: float = 0.0,
    risk_eta: float = 1.0,
    weights: dict[str, float] | None = None,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: int | None = None,
    fused: bool | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Composite DVPO critic loss L = L_QR + sum_k w_k L_k over the terms of DVPO paper Eqs. 3-11.

    Terms (per token; predictions pred = ensemble over heads, sorted for tail statistics; targets Z^ sorted;
    k_a = tail_size(N, tail_alpha), k_b = tail_size(N, tail_beta)):
        qr    quantile Huber (kappa > 0) or pinball (kappa = 0), all pairs, on each head or the ensemble
        risk  Eq. 4: the QR loss re-weighted per quantile by w_i ~ exp(-risk_eta (1 - tau_i)), mean(w) = 1
        cvar  Eq. 5: (mean of lowest k_a pred - same of targets)^2
        gain  Eq. 6: (mean of highest k_b pred - same of targets)^2
        shift Eq. 7: ReLU(mean target - mean pred), penalises a pessimistic mean only
        shape Eq. 8 with margins: ReLU(D_low(pred) - (1 - m_l) D_low(Z)) + ReLU((1 + m_u) D_up(Z) - D_up(pred)),
              D = within-tail variance: contract the lower tail, expand the upper one
        curv  Eq. 9: ReLU(mean 2nd difference over the lower tail) + ReLU(-mean 2nd difference over the upper)
        cons  Eq. 10: mean over head pairs of the mean squared difference of their quantiles
    A term whose weight is 0 (or absent) is not computed. Value clipping for distributions: "mean" translates
    the predicted distribution so its mean moves at most cliprange_value from the rollout-time mean; "quantile"
    clips each quantile around its rollout-time value; either way the QR part takes the larger of the clipped
    and unclipped losses per token (as PPO's value clip does); "none" or cliprange_value=None disables it.

    Args:
        pred: [B, T, H, N] current critic quantiles, old_pred: [B, T, H, N] rollout-time ones,
        targets: [B, T, N] per-quantile lambda-returns (detached), mask: [B, T], taus: [N].
        loss_agg_mode, loss_scale_factor: how each term's [B, T] matrix is reduced (`agg_loss`).
    Returns:
        (loss scalar, metrics) with every term as `loss_<name>` (unweighted) and diagnostics, all detached.
    """
    if pred.dim() != 4 or old_pred.shape != pred.shape or targets.shape != pred.shape[:2] + pred.shape[-1:]:
        raise ValueError(f"expected pred/old_pred [B, T, H, N] and targets [B, T, N]; got {tuple(pred.shape)}, "
                         f"{tuple(old_pred.shape)}, {tuple(targets.shape)}")
    if qr_on not in ("heads", "ensemble"):
        raise ValueError(f"qr_on={qr_on!r}: expected 'heads' or 'ensemble'")
    if value_clip not in ("mean", "quantile", "none"):
        raise ValueError(f"value_clip={value_clip!r}: expected 'mean', 'quantile' or 'none'")
    w = {k: float(v) for k, v in (weights or {}).items() if v}
    unknown = set(w) - set(DVPO_TERMS)
    if unknown:
        raise ValueError(f"unknown DVPO loss terms {sorted(unknown)}; terms: {list(DVPO_TERMS)}")
    valid = mask.bool()
    B, T, H, N = pred.shape
    idx = valid.flatten().nonzero().squeeze(-1)
    p = pred.reshape(B * T, H, N).index_select(0, idx)  # [n, H, N]
    z = sort_last(targets.detach().reshape(B * T, N).index_select(0, idx))  # [n, N]
    n = p.shape[0]

    qr_q = _qr_per_token(p, z, taus, kappa, qr_on)  # [n, H', N]
    per_tok = {"qr": qr_q.mean((-1, -2))}
    clip_on = value_clip != "none" and cliprange_value is not None
    if clip_on:
        old = old_pred.detach().reshape(B * T, H, N).index_select(0, idx)
        # tokens where the clip is active (decided on the raw difference: `p - s + s` need not equal p in
        # floating point, and an inactive clip must not cost a second QR pass)
        if value_clip == "quantile":
            moved = ((p - old).detach().abs() > cliprange_value).flatten(1).any(-1)
        else:
            shift = p.mean(-1, keepdim=True) - old.mean(-1, keepdim=True)  # [n, H, 1]
            moved = (shift.detach().abs() > cliprange_value).flatten(1).any(-1)
        qr_clip = per_tok["qr"]
        if moved.any():
            rows = moved.nonzero().squeeze(-1)
            pr, o = p[rows], old[rows]
            if value_clip == "quantile":
                p_clip = o + (pr - o).clamp(-cliprange_value, cliprange_value)
            else:
                s = shift[rows]
                p_clip = pr - s + s.clamp(-cliprange_value, cliprange_value)
            clipped = _qr_per_token(p_clip, z[rows], taus, kappa, qr_on).mean((-1, -2))
            qr_clip = qr_clip.index_put((rows,), clipped)
        clipfrac = (qr_clip > per_tok["qr"]).float().mean() if n else p.new_zeros(())
        per_tok["qr"] = torch.maximum(per_tok["qr"], qr_clip)

    ka, kb = tail_size(N, tail_alpha), tail_size(N, tail_beta)
    if "risk" in w:
        rw = torch.exp(-risk_eta * (1.0 - taus.to(p.dtype)))
        rw = rw / rw.mean()
        per_tok["risk"] = (qr_q * rw).mean((-1, -2))
    kl, ku = (tail_size(N - 2, tail_alpha), tail_size(N - 2, tail_beta)) if N >= 3 else (1, 1)
    if fused is None:
        fused = _fused_regularisers(p)
    if fused:
        reg, stats = _RegularisersCPU.apply(p, z, ka, kb, kl, ku, margin_low, margin_up)
        for j, k in enumerate(_qr_kernel.REG_TERMS):
            if k in w:
                per_tok[k] = reg[j]
        var_lo_p, var_up_p, var_lo_z, var_up_z, crossed, mean_p, mean_z = stats.unbind(-1)
        crossed_frac = crossed.sum() / (n * (N - 1)) if n and N > 1 else p.new_zeros(())
    else:
        per_tok.update(_regularisers_torch(p, z, w, ka, kb, kl, ku, margin_low, margin_up))
        with torch.no_grad():
            ens = p.mean(-2)
            ens_sorted = sort_last(ens)
            var_lo_p, var_up_p = _tail_var(ens_sorted[:, :ka]), _tail_var(ens_sorted[:, N - kb:])
            var_lo_z, var_up_z = _tail_var(z[:, :ka]), _tail_var(z[:, N - kb:])
            mean_p, mean_z = ens.mean(-1), z.mean(-1)
            crossed_frac = (ens[:, 1:] < ens[:, :-1]).float().mean() if n and N > 1 else p.new_zeros(())

    names = list(per_tok)
    stacked = torch.stack([per_tok[k].to(pred.dtype) for k in names])  # [K, n]: every term at once
    if loss_agg_mode == "token-mean":  # the packed tokens are exactly the valid ones
        agg = stacked.mean(-1) if n else stacked.new_zeros(len(names))
    else:
        mats = pred.new_zeros(len(names), B, T).masked_scatter(valid.expand(len(names), B, T), stacked)
        agg = torch.stack([agg_loss(m, mask.to(m.dtype), loss_agg_mode, loss_scale_factor) for m in mats])
    terms = dict(zip(names, agg.unbind(0), strict=True))
    loss = terms["qr"] + sum(w[k] * terms[k] for k in terms if k != "qr")

    with torch.no_grad():
        metrics = {f"loss_{k}": v.detach() for k, v in terms.items()}
        zero = p.new_zeros(())
        metrics.update({
            "quantile_spread_low": var_lo_p.mean() if n else zero,
            "quantile_spread_up": var_up_p.mean() if n else zero,
            "target_spread_low": var_lo_z.mean() if n else zero,
            "target_spread_up": var_up_z.mean() if n else zero,
            "mean_shift": (mean_p - mean_z).mean() if n else zero,
            "head_disagreement": p.mean(-1).std(-1, unbiased=False).mean() if n and H > 1 else zero,
            "crossed_frac": crossed_frac,
            "value_mean": mean_p.mean() if n else zero,
            "vf_clipfrac": clipfrac if clip_on else zero,
        })
    return loss, metrics
