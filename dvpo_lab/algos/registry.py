"""Advantage-estimator registry, keyed by the config string `algorithm.adv_estimator` (as in verl).

An estimator module registers itself with `@register_adv_est("name")`; the trainer looks it up with
`get_adv_estimator(cfg.adv_estimator)`. Every estimator has the signature

    fn(token_rewards [B, T], mask [B, T], *, values=None, group_index=None, gamma=1.0, lam=1.0,
       norm_adv_by_std=True, eps=1e-6, **_) -> (advantages [B, T], returns [B, T])

and returns 0 at padded positions. Extra keyword arguments are ignored, so the trainer may pass everything
it has.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dvpo_lab.algos.core import masked_sum

__all__ = [
    "ADV_ESTIMATORS",
    "AdvEstimatorFn",
    "broadcast_seq_advantage",
    "get_adv_estimator",
    "outcome_scores",
    "register_adv_est",
]

AdvEstimatorFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]

ADV_ESTIMATORS: dict[str, AdvEstimatorFn] = {}


def register_adv_est(name: str) -> Callable[[AdvEstimatorFn], AdvEstimatorFn]:
    """Decorator registering an advantage estimator under `name`; a second, different function is refused."""

    def decorator(fn: AdvEstimatorFn) -> AdvEstimatorFn:
        existing = ADV_ESTIMATORS.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(f"advantage estimator {name!r} is already registered by {existing.__module__}")
        ADV_ESTIMATORS[name] = fn
        return fn

    return decorator


def get_adv_estimator(name: str) -> AdvEstimatorFn:
    """Return the estimator registered under `name`, or raise ValueError listing the registered names."""
    if name not in ADV_ESTIMATORS:
        raise ValueError(f"unknown adv_estimator {name!r}; registered: {sorted(ADV_ESTIMATORS)}")
    return ADV_ESTIMATORS[name]


# Helpers for outcome-supervised estimators (GRPO, RLOO, ...): one score and one advantage per sequence.


def outcome_scores(token_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sequence score = sum of the rewards on valid tokens (the score sits on the last one, as in verl).

    Args:
        token_rewards: [B, T], mask: [B, T].
    Returns:
        [B].
    """
    return masked_sum(token_rewards, mask, dim=-1)


def broadcast_seq_advantage(seq_adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Give every valid token its sequence's advantage and 0 to padding (outcome supervision, Shao et al. 2024).

    Args:
        seq_adv: [B], mask: [B, T].
    Returns:
        [B, T].
    """
    if seq_adv.dim() != 1 or mask.dim() != 2 or seq_adv.shape[0] != mask.shape[0]:
        raise ValueError(
            f"expected seq_adv [B] and mask [B, T], got {tuple(seq_adv.shape)}, {tuple(mask.shape)}"
        )
    expanded = seq_adv.unsqueeze(-1).expand(-1, mask.shape[1])
    return torch.where(mask.bool(), expanded, torch.zeros_like(expanded))
