"""Critic-free baselines beyond GRPO: Dr. GRPO (Liu et al. 2025), RLOO (Ahmadian et al. 2024) and REINFORCE++
(Hu 2025); verl `compute_rloo_outcome_advantage`, `compute_reinforce_plus_plus_outcome_advantage`.

Each registers an advantage estimator; the matching loss normalisation lives in its `conf/algo/*.yaml`
(`loss_agg_mode`), so the same clipped surrogate serves all of them.
"""

from __future__ import annotations

import torch

from dvpo_lab.algos.core import compute_gae, group_advantages, masked_whiten
from dvpo_lab.algos.registry import broadcast_seq_advantage, outcome_scores, register_adv_est

__all__ = ["dr_grpo_advantage", "reinforce_pp_advantage", "rloo_advantage"]


def _group_outcome(token_rewards, mask, group_index, name: str, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    if group_index is None:
        raise ValueError(f"adv_estimator {name!r} needs group_index=[B] (one id per prompt)")
    seq_adv = group_advantages(outcome_scores(token_rewards, mask), group_index, **kwargs)
    adv = broadcast_seq_advantage(seq_adv, mask)
    return adv, adv


@register_adv_est("dr_grpo")
def dr_grpo_advantage(
    token_rewards: torch.Tensor, mask: torch.Tensor, *, group_index: torch.Tensor | None = None, **_: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dr. GRPO (Liu et al. 2025): A_i = r_i - mean(group), no std division, broadcast to every valid token.

    Pair it with a length-unbiased aggregation (`loss_agg_mode=seq-mean-token-sum-norm`, constant L_max).
    Args: token_rewards [B, T], mask [B, T], group_index [B]. Returns: (advantages, returns) [B, T].
    """
    return _group_outcome(token_rewards, mask, group_index, "dr_grpo", norm_by_std=False)


@register_adv_est("rloo")
def rloo_advantage(
    token_rewards: torch.Tensor, mask: torch.Tensor, *, group_index: torch.Tensor | None = None, **_: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """RLOO: A_i = r_i - mean of the other G - 1 rewards of its group = G/(G-1) (r_i - mean) (Ahmadian et al. 2024;
    verl `compute_rloo_outcome_advantage`).

    Args: token_rewards [B, T], mask [B, T], group_index [B]. Returns: (advantages, returns) [B, T].
    """
    return _group_outcome(token_rewards, mask, group_index, "rloo", norm_by_std=False, leave_one_out=True)


@register_adv_est("reinforce_pp")
def reinforce_pp_advantage(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    whiten_advantages: bool = True,
    **_: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025; verl `compute_reinforce_plus_plus_outcome_advantage`): the discounted
    return-to-go of the per-token rewards (score on the last token minus the KL-in-reward penalty), whitened
    over the whole batch's valid tokens; no critic, no group baseline.

    Args:
        token_rewards: [B, T], mask: [B, T].
    Returns:
        (advantages [B, T] whitened unless whiten_advantages=False, returns [B, T] unwhitened), 0 at padding.
    """
    returns, _ = compute_gae(token_rewards, torch.zeros_like(token_rewards), mask, gamma=gamma, lam=1.0)
    adv = masked_whiten(returns, mask) if whiten_advantages else returns
    return adv, returns
