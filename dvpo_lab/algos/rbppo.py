"""Robust-Bellman PPO (`algo=rbppo`, docs/algorithms.md "RB-PPO"): K value heads, pessimistic aggregation, contaminated
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

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from dvpo_lab.algos.core import _check_same_shape, compute_value_loss, gae_recursion, masked_mean, masked_whiten
from dvpo_lab.algos.registry import register_algo
from dvpo_lab.choices import choice_enum

__all__ = [
    "V_LO_MODES",
    "RobustConfig",
    "ensemble_value_loss",
    "pessimistic_value",
    "robust_gae",
    "robust_gae_advantage",
]

V_LO_MODES = ("zero", "batch_min")
VLo = choice_enum("VLo", V_LO_MODES, __name__)


@dataclass
class RobustConfig:
    """RB-PPO's own node, `algo.robust` (read by adv_estimator=robust_gae only)."""

    c: float = 1.0  # pessimism: vt = mean_k v_k - c * std_k v_k (c = 1 with K = 2 heads is min-aggregation)
    rho: float = 0.2  # contamination of the bootstrap toward v_lo (rho = flip rate p bounds the TV shift)
    v_lo: VLo = VLo.zero  # zero (known minimum return of a {0, 1} reward) | batch_min (batch minimum of vt)


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
    token_rewards: torch.Tensor,
    vt: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    rho: float,
    v_lo: float | torch.Tensor = 0.0,
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

    def bootstrap(next_v: torch.Tensor, has_next: torch.Tensor) -> torch.Tensor:
        b_next = torch.where(has_next, (1 - rho) * next_v + rho * v_lo, torch.zeros_like(next_v))
        return (1 - lam) * b_next + lam * next_v

    return gae_recursion(token_rewards, vt, mask, gamma, lam, bootstrap)


def ensemble_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float | None = 0.5,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: int | None = None,
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
        loss_k, m = compute_value_loss(
            values[..., k], old_values[..., k], targets, mask, cliprange_value, loss_agg_mode, loss_scale_factor
        )
        total = total + loss_k
        clipfrac = clipfrac + m["vf_clipfrac"] / K
    spread = values.detach().std(-1, unbiased=False) if K > 1 else values.new_zeros(values.shape[:2])
    return total, {"vf_clipfrac": clipfrac, "head_disagreement": masked_mean(spread, mask)}


def rbppo_critic_loss(
    view: torch.Tensor,
    old_view: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    *,
    critic,
    config: DictConfig,
    loss_scale_factor: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`ensemble_value_loss` with the run's `algo.cliprange_value` and `algo.loss_agg_mode`."""
    return ensemble_value_loss(
        view, old_view, targets, mask, config.cliprange_value, config.loss_agg_mode, loss_scale_factor
    )


@register_algo("robust_gae", critic="ensemble", critic_loss=rbppo_critic_loss, node="robust")
def robust_gae_advantage(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    values: torch.Tensor | None,
    group_index: torch.Tensor | None,
    config: DictConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RB-PPO advantages and critic targets from K-head rollout values `[B, T, K]`, with `algo.robust`'s c, rho
    and v_lo: "zero" (the known minimum of a {0, 1} reward without KL in reward) or "batch_min" (the batch minimum
    of vt over valid tokens; then vt >= v_lo holds and targets are non-increasing in rho).

    Returns:
        (advantages [B, T] whitened when `algo.norm_adv`, targets [B, T]).
    Raises:
        ValueError: values are not `[B, T, K]` (critic=ensemble), or an unknown v_lo.
    """
    if values is None or values.dim() != 3:
        raise ValueError("adv_estimator 'robust_gae' needs ensemble values: pass values=[B, T, K] (critic=ensemble)")
    r = config.robust
    vt = pessimistic_value(values, r.c)
    if r.v_lo == "zero":
        v_lo: float | torch.Tensor = 0.0
    elif r.v_lo == "batch_min":
        v_lo = vt[mask.bool()].min() if mask.any() else vt.new_zeros(())
    else:
        raise ValueError(f"robust v_lo={r.v_lo!r}; choices: {list(V_LO_MODES)}")
    adv, targets = robust_gae(token_rewards, vt, mask, config.gamma, config.lam, r.rho, v_lo)
    if config.norm_adv:
        adv = masked_whiten(adv, mask)
    return adv, targets
