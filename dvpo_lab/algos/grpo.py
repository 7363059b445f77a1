"""GRPO and its group-baseline variants, critic-free outcome advantages over the G responses to one prompt
(veRL `compute_grpo_outcome_advantage`, `compute_rloo_outcome_advantage`):

    grpo     (r - mean) / (std + eps)              Shao et al. 2024 (DeepSeekMath); `algo.norm_adv_by_std=false`
                                                   drops the std as veRL's `norm_adv_by_std_in_grpo`
    dr_grpo  r - mean                              Liu et al. 2025 (Dr. GRPO), with a length-unbiased loss
                                                   (`loss_agg_mode: seq-mean-token-sum-norm`, conf/algo/dr_grpo.yaml)
    rloo     r - mean of the other G - 1           Ahmadian et al. 2024

Each broadcasts its sequence advantage to every valid token; returns = advantages (no critic). The matching loss
normalisation lives in each `conf/algo/*.yaml` (`loss_agg_mode`), so the same clipped surrogate serves all three.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from dvpo_lab.algos.core import group_advantages
from dvpo_lab.algos.registry import broadcast_seq_advantage, outcome_scores, register_algo

__all__ = ["dr_grpo_advantage", "grpo_advantage", "rloo_advantage"]

GROUP_EPS = 1e-6  # veRL's epsilon in the std division


def _group_outcome(
    token_rewards: torch.Tensor, mask: torch.Tensor, group_index: torch.Tensor | None, name: str, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    if group_index is None:
        raise ValueError(f"adv_estimator {name!r} needs group_index=[B] (one id per prompt)")
    seq_adv = group_advantages(outcome_scores(token_rewards, mask), group_index, eps=GROUP_EPS, **kwargs)
    adv = broadcast_seq_advantage(seq_adv, mask)
    return adv, adv


@register_algo("grpo", critic="none", grouped=True)
def grpo_advantage(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    values: torch.Tensor | None,
    group_index: torch.Tensor | None,
    config: DictConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO: group-normalised outcome advantage, divided by the group std when `algo.norm_adv_by_std`.

    Args:
        token_rewards: [B, T] (the score sits on the last valid token), mask: [B, T],
        group_index: [B] prompt ids (required; responses to one prompt share an id), values: unused.
    Returns:
        (advantages [B, T], returns [B, T] = advantages), 0 at padded positions.
    Raises:
        ValueError: no group_index.
    """
    return _group_outcome(token_rewards, mask, group_index, "grpo", norm_by_std=config.norm_adv_by_std)


@register_algo("dr_grpo", critic="none", grouped=True)
def dr_grpo_advantage(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    values: torch.Tensor | None,
    group_index: torch.Tensor | None,
    config: DictConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dr. GRPO: A_i = r_i - mean(group), never divided by the std. Shapes as `grpo_advantage`."""
    return _group_outcome(token_rewards, mask, group_index, "dr_grpo", norm_by_std=False)


@register_algo("rloo", critic="none", grouped=True)
def rloo_advantage(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    values: torch.Tensor | None,
    group_index: torch.Tensor | None,
    config: DictConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RLOO: A_i = r_i - mean of the other G - 1 rewards of its group = G/(G-1) (r_i - mean). Shapes as
    `grpo_advantage`."""
    return _group_outcome(token_rewards, mask, group_index, "rloo", norm_by_std=False, leave_one_out=True)
