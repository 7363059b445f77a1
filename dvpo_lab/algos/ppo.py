"""PPO advantage estimator "gae" (GAE, Schulman et al. 2016; verl `compute_gae_advantage_return`)."""

from __future__ import annotations

import torch

from dvpo_lab.algos.core import compute_gae, masked_whiten
from dvpo_lab.algos.registry import register_adv_est

__all__ = ["gae_advantage"]


@register_adv_est("gae")
def gae_advantage(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    values: torch.Tensor | None = None,
    group_index: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    norm_adv_by_std: bool = True,
    eps: float = 1e-6,
    whiten_advantages: bool = True,
    **_: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages, whitened over the batch's valid tokens as verl does; returns are not (verl
    `compute_gae_advantage_return`).

    Args:
        token_rewards: [B, T] per-token rewards (score on the last valid token, minus any KL penalty),
        mask: [B, T], values: [B, T] rollout-time critic values V(s_t) (required).
        group_index, norm_adv_by_std, eps: unused (common estimator signature).
        whiten_advantages: set False to get raw GAE advantages.
    Returns:
        (advantages [B, T], returns [B, T] = raw advantages + values), 0 at padded positions.
    """
    if values is None:
        raise ValueError("adv_estimator 'gae' needs critic values: pass values=[B, T]")
    advantages, returns = compute_gae(token_rewards, values, mask, gamma=gamma, lam=lam)
    if whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    return advantages, returns
