"""Quantile distributions (QR-DQN, Dabney et al. 2018; risk distortions as in IQN): levels, monotone heads,
spectral risk weights, tails, and the all-pairs quantile Huber loss (DVPO paper Eq. 3). Shapes: N quantiles in
the last dim; leading dims are free.

The all-pairs loss is computed in O(N log N) per token from sorted targets and prefix sums
(`quantile_huber_sorted`, the torch path on every device) instead of materialising the `[n, H, N, N]` pair tensor
(N = 200 would need ~0.5 GB per minibatch on the testbed); `quantile_huber_pairs` is the direct O(N^2) form the
tests compare it with. The compiled CPU path is `dvpo_lab.algos.kernels`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "MONOTONE_MODES",
    "TAU_GRIDS",
    "cvar_weights",
    "distorted_expectation",
    "monotone_quantiles",
    "quantile_huber_pairs",
    "quantile_huber_sorted",
    "quantile_levels",
    "sort_last",
    "tail_size",
    "tail_var",
    "wang_weights",
]

TAU_GRIDS = ("mid", "paper")
MONOTONE_MODES = ("none", "sort", "cumsoftplus")
# softplus(_CUMSOFTPLUS_OFFSET) = 1e-3: a zero-initialised head starts as a nearly flat, increasing curve.
_CUMSOFTPLUS_OFFSET = math.log(math.expm1(1e-3))


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
    loss = (1 - tau) * ((theta - 0.5 * kappa) * n1 - s1_1 + quad2 / (2 * kappa)) + tau * (
        quad3 / (2 * kappa) + s1_4 - (theta + 0.5 * kappa) * n4
    )
    return (loss / M).to(out_dtype)


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


def tail_var(x: torch.Tensor) -> torch.Tensor:
    """Population variance over the last dim `[..., k]` -> `[...]`; 0 for a single quantile."""
    return x.var(dim=-1, unbiased=False) if x.shape[-1] > 1 else x.new_zeros(x.shape[:-1])
