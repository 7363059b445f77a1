"""GRPO / Dr. GRPO advantage estimator "grpo" (Shao et al. 2024 GRPO; Liu et al. 2025 Dr. GRPO;
verl `compute_grpo_outcome_advantage`)."""

from __future__ import annotations

import torch

from dvpo_lab.algos.core import group_advantages
from dvpo_lab.algos.registry import broadcast_seq_advantage, outcome_scores, register_adv_est

__all__ = ["grpo_advantage"]


@register_adv_est("grpo")
def grpo_advantage(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    values: torch.Tensor | None = None,
    group_index: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    norm_adv_by_std: bool = True,
    eps: float = 1e-6,
    **_: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative outcome advantage broadcast to every valid token.

    norm_adv_by_std=True: GRPO (r - mean) / (std + eps); False: Dr. GRPO r - mean
    (verl `norm_adv_by_std_in_grpo`).

    Args:
        token_rewards: [B, T] (the score sits on the last valid token), mask: [B, T],
        group_index: [B] prompt ids (required; responses to one prompt share an id).
        values, gamma, lam: unused (common estimator signature; GRPO has no critic and no discounting).
    Returns:
        (advantages [B, T], returns [B, T]) with returns = advantages; 0 at padded positions.
    """
    if group_index is None:
        raise ValueError("adv_estimator 'grpo' needs group_index=[B] (one id per prompt)")
    scores = outcome_scores(token_rewards, mask)
    seq_adv = group_advantages(scores, group_index, norm_by_std=norm_adv_by_std, eps=eps)
    advantages = broadcast_seq_advantage(seq_adv, mask)
    return advantages, advantages
