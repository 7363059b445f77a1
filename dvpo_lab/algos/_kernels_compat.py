"""Temporary adapter: the kernels API over the numba/ctypes modules (removed when kernels.py lands)."""
# ruff: noqa
from __future__ import annotations

import numpy as np
import torch

from dvpo_lab.algos import _qr_kernel

REG_TERMS = _qr_kernel.REG_TERMS
REG_STATS = _qr_kernel.REG_STATS


def available(x):
    return x.device.type == "cpu" and _qr_kernel.AVAILABLE and x.dtype in (torch.float32, torch.float64)


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



def quantile_huber(pred, z_sorted, taus, kappa):
    n, H, N = pred.shape
    row_token = torch.arange(n).repeat_interleave(H)
    return _QuantileHuberCPU.apply(pred.reshape(n * H, N), z_sorted, row_token, taus, kappa).reshape(n, H, N)


def regularisers(p, z_sorted, ka, kb, kl, ku, margin_low, margin_up):
    return _RegularisersCPU.apply(p, z_sorted, ka, kb, kl, ku, margin_low, margin_up)
