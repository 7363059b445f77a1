"""PPO (Schulman et al. 2017) with a scalar critic: GAE advantages (Schulman et al. 2016) and veRL's clipped value
loss (`verl/trainer/ppo/core_algos.py`: `compute_gae_advantage_return`, `compute_value_loss`). `algo=ppo`.

The actor loss (clipped surrogate, `core.compute_policy_loss`) is the same for every algorithm; what makes PPO is
the estimator and the critic loss registered here.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from dvpo_lab.algos.core import compute_gae, compute_value_loss, masked_whiten
from dvpo_lab.algos.registry import register_algo

__all__ = ["gae_advantage", "scalar_value_loss"]


def scalar_value_loss(
    view: torch.Tensor,
    old_view: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    *,
    critic,
    config: DictConfig,
    loss_scale_factor: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """veRL's clipped value loss on values `[B, T]` (`algo.cliprange_value`, `algo.loss_agg_mode`).

    Returns:
        (loss, {"vf_clipfrac"}) with detached metrics; the module logs the loss as `critic/vf_loss`.
    """
    return compute_value_loss(
        view, old_view, targets, mask, config.cliprange_value, config.loss_agg_mode, loss_scale_factor
    )


@register_algo("gae", critic="scalar", critic_loss=scalar_value_loss)
def gae_advantage(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    values: torch.Tensor | None,
    group_index: torch.Tensor | None,
    config: DictConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages, whitened over the batch's valid tokens when `algo.norm_adv` (veRL does); returns are not.

    Args:
        token_rewards: [B, T] per-token rewards (score on the last valid token, minus any KL penalty),
        mask: [B, T], values: [B, T] rollout-time critic values V(s_t) (required), group_index: unused,
        config: the `algo` node (gamma, lam, norm_adv).
    Returns:
        (advantages [B, T], returns [B, T] = raw advantages + values), 0 at padded positions.
    Raises:
        ValueError: no values (the run has no scalar critic).
    """
    if values is None:
        raise ValueError("adv_estimator 'gae' needs critic values: pass values=[B, T]")
    advantages, returns = compute_gae(token_rewards, values, mask, gamma=config.gamma, lam=config.lam)
    if config.norm_adv:
        advantages = masked_whiten(advantages, mask)
    return advantages, returns
