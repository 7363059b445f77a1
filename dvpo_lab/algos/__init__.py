"""Algorithms as pure tensor functions (veRL `verl/trainer/ppo/core_algos.py` style, docs/algorithms.md);
importing it registers the estimators.

A new algorithm lives in its own module (``dvpo.py``, ``rloo.py``, ...), registers its advantage estimator
with ``@register_adv_est(name)`` and is imported below so that ``get_adv_estimator(name)`` finds it.
"""

from dvpo_lab.algos import baselines, distributional, grpo, ppo, robust  # noqa: F401  (registration)
from dvpo_lab.algos.core import (
    AGG_LOSS_MODES,
    KL_PENALTY_KINDS,
    agg_loss,
    build_token_rewards,
    compute_gae,
    compute_policy_loss,
    compute_value_loss,
    entropy_from_logits,
    group_advantages,
    kl_penalty,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from dvpo_lab.algos.critics import CRITIC_KINDS, ESTIMATOR_CRITICS, Critic
from dvpo_lab.algos.distributional import (
    ACTOR_ADVANTAGES,
    DVPO_TERMS,
    MONOTONE_MODES,
    TAU_GRIDS,
    dvpo_critic_loss,
    quantile_gae,
    quantile_levels,
)
from dvpo_lab.algos.kl_ctrl import AdaptiveKLController, FixedKLController
from dvpo_lab.algos.registry import (
    ADV_ESTIMATORS,
    broadcast_seq_advantage,
    get_adv_estimator,
    outcome_scores,
    register_adv_est,
)

__all__ = [
    "ACTOR_ADVANTAGES",
    "ADV_ESTIMATORS",
    "CRITIC_KINDS",
    "Critic",
    "DVPO_TERMS",
    "ESTIMATOR_CRITICS",
    "MONOTONE_MODES",
    "TAU_GRIDS",
    "dvpo_critic_loss",
    "quantile_gae",
    "quantile_levels",
    "AGG_LOSS_MODES",
    "KL_PENALTY_KINDS",
    "AdaptiveKLController",
    "FixedKLController",
    "agg_loss",
    "broadcast_seq_advantage",
    "build_token_rewards",
    "compute_gae",
    "compute_policy_loss",
    "compute_value_loss",
    "entropy_from_logits",
    "get_adv_estimator",
    "group_advantages",
    "kl_penalty",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "outcome_scores",
    "register_adv_est",
]
