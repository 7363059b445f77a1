"""Robust-Bellman PPO (docs/algorithms.md "RB-PPO"): K value heads, pessimistic aggregation, contaminated
bootstrap. Built from the R-contamination robust Bellman operator (Wang & Zou 2021) and ensemble-minimum
pessimism (TD3, Fujimoto et al. 2018), since the DVPO paper names its robust-Bellman baseline without a definition.

The critic has K scalar heads, `[B, T, K]`. The pessimistic value is vt = mean_k v_k - c * s, s = the
across-head standard deviation (|v_1 - v_2| / 2 for K = 2, so c = 1 is min-aggregation). The bootstrap is
contaminated toward a lower bound, b_{t+1} = (1 - rho) vt_{t+1} + rho v_lo, and enters only through the
(1 - lambda) share of the lambda-return, so the pessimism stays bounded instead of compounding over the
remaining tokens, as the naive r + gamma b - vt inside plain GAE would (its bias grows with the number of
remaining tokens).
"""

from __future__ import annotations

import torch

from dvpo_lab.algos.core import _check_same_shape, compute_value_loss, masked_mean, masked_whiten
from dvpo_lab.algos.registry import register_adv_est

__all__ = ["V_LO_MODES", "ensemble_value_loss", "pessimistic_value", "robust_gae", "robust_gae_advantage"]

V_LO_MODES = ("zero", "batch_min")


def pessimistic_value(values: torch.Tensor, c: float) -> torch.Tensor:
    """vt = mean_k v_k - c * std_k v_k (population std; for K = 2 that is |v_1 - v_2| / 2).

    Args:
        values: [B, T, K].
    Returns:
        [B, T].
    """
    if values.dim() != 3:
        raise ValueError(f"expected ensemble values [B, T, K], got {tuple(values.shape)}")
    mean = values.mean(-1)
    if values.shape[-1] == 1 or c == 0:
        return mean
    return mean - c * values.std(-1, unbiased=False)


@torch.no_grad()
def robust_gae(
    token_rewards: torch.Tensor, vt: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float,
    rho: float, v_lo: float | torch.Tensor = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounded robust lambda-return with carry-through masking (docs/algorithms.md "RB-PPO").

    delta_t = r_t + gamma [(1 - lam) b_{t+1} + lam vt_{t+1}] - vt_t,  A_t = delta_t + gamma lam A_{t+1},
    b_{t+1} = (1 - rho) vt_{t+1} + rho v_lo before the last valid token and 0 after it (as is vt_{T+1});
    targets y_t = A_t + vt_t. With rho = 0 this is plain GAE on vt.

    Args:
        token_rewards: [B, T], vt: [B, T] pessimistic values, mask: [B, T], v_lo: scalar lower bound.
    Returns:
        (advantages [B, T], targets [B, T]), 0 at padded positions.
    """
    _check_same_shape(token_rewards=token_rewards, vt=vt, mask=mask)
    valid = mask.bool()
    next_v = torch.zeros_like(vt[:, 0])
    has_next = torch.zeros_like(valid[:, 0])
    running = torch.zeros_like(vt[:, 0])
    advantages = torch.zeros_like(vt)
    for t in reversed(range(vt.shape[1])):
        b_next = torch.where(has_next, (1 - rho) * next_v + rho * v_lo, torch.zeros_like(next_v))
        delta = token_rewards[:, t] + gamma * ((1 - lam) * b_next + lam * next_v) - vt[:, t]
        gae_t = delta + gamma * lam * running
        next_v = torch.where(valid[:, t], vt[:, t], next_v)
        has_next = has_next | valid[:, t]
        running = torch.where(valid[:, t], gae_t, running)
        advantages[:, t] = running
    advantages = torch.where(valid, advantages, torch.zeros_like(advantages))
    targets = torch.where(valid, advantages + vt, torch.zeros_like(vt))
    return advantages, targets


@register_adv_est("robust_gae")
def robust_gae_advantage(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    whiten_advantages: bool = True,
    robust_c: float = 1.0,
    robust_rho: float = 0.2,
    robust_v_lo: str = "zero",
    **_: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RB-PPO advantages and critic targets from K-head rollout values `[B, T, K]`.

    robust_v_lo: "zero" (the known minimum of a {0, 1} reward without KL in reward) or "batch_min" (the batch
    minimum of vt over valid tokens; then vt >= v_lo holds and targets are non-increasing in rho).
    Returns:
        (advantages [B, T] whitened unless whiten_advantages=False, targets [B, T]).
    """
    if values is None or values.dim() != 3:
        raise ValueError("adv_estimator 'robust_gae' needs ensemble values: pass values=[B, T, K] (critic=ensemble)")
    vt = pessimistic_value(values, robust_c)
    if robust_v_lo == "zero":
        v_lo: float | torch.Tensor = 0.0
    elif robust_v_lo == "batch_min":
        v_lo = vt[mask.bool()].min() if mask.any() else vt.new_zeros(())
    else:
        raise ValueError(f"robust v_lo={robust_v_lo!r}; choices: {list(V_LO_MODES)}")
    adv, targets = robust_gae(token_rewards, vt, mask, gamma, lam, robust_rho, v_lo)
    if whiten_advantages:
        adv = masked_whiten(adv, mask)
    return adv, targets


def ensemble_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
    cliprange_value: float | None = 0.5, loss_agg_mode: str = "token-mean", loss_scale_factor: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum over heads of the clipped value loss (verl `compute_value_loss`): every head regresses the same target y_t,
    each clipped around its own rollout-time value (TD3 convention).

    Args:
        values: [B, T, K] (carry the gradient), old_values: [B, T, K], targets: [B, T], mask: [B, T].
        loss_agg_mode, loss_scale_factor: passed to `agg_loss` (the budget L of the Dr. GRPO modes).
    Returns:
        (loss, {"vf_clipfrac", "head_disagreement"}) with detached metrics.
    """
    if values.dim() != 3 or old_values.shape != values.shape:
        raise ValueError(f"expected values/old_values [B, T, K], got {tuple(values.shape)}, {tuple(old_values.shape)}")
    total, clipfrac = values.new_zeros(()), values.new_zeros(())
    K = values.shape[-1]
    for k in range(K):
        loss_k, m = compute_value_loss(values[..., k], old_values[..., k], targets, mask, cliprange_value,
                                       loss_agg_mode, loss_scale_factor)
        total = total + loss_k
        clipfrac = clipfrac + m["vf_clipfrac"] / K
    spread = values.detach().std(-1, unbiased=False) if K > 1 else values.new_zeros(values.shape[:2])
    return total, {"vf_clipfrac": clipfrac, "head_disagreement": masked_mean(spread, mask)}
