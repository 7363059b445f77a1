"""REINFORCE++ (Hu 2025; veRL `compute_reinforce_plus_plus_outcome_advantage`): no critic, no group baseline; the
discounted return-to-go of the per-token rewards (score on the last token minus the KL-in-reward penalty),
whitened over the whole batch's valid tokens. `algo=reinforce_pp`.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from dvpo_lab.algos.core import compute_gae, masked_whiten
from dvpo_lab.algos.registry import register_algo

__all__ = ["reinforce_pp_advantage"]


@register_algo("reinforce_pp", critic="none")
def reinforce_pp_advantage(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    values: torch.Tensor | None,
    group_index: torch.Tensor | None,
    config: DictConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return-to-go with discount `algo.gamma` (GAE with zero values and lambda = 1), whitened when `algo.norm_adv`.

    Args:
        token_rewards: [B, T], mask: [B, T]; values, group_index: unused.
    Returns:
        (advantages [B, T], returns [B, T] unwhitened), 0 at padding.
    """
    returns, _ = compute_gae(token_rewards, torch.zeros_like(token_rewards), mask, gamma=config.gamma, lam=1.0)
    adv = masked_whiten(returns, mask) if config.norm_adv else returns
    return adv, returns
