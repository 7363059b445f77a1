"""Algorithms as pure tensor functions (veRL `verl/trainer/ppo/core_algos.py` style, docs/algorithms.md), one
module per family: `ppo`, `grpo` (GRPO, Dr. GRPO, RLOO), `reinforce_pp`, `rbppo`, `dvpo`. Importing this package
registers their `AlgoSpec`s (`registry.py`); `core.py` holds the math they share (masked statistics, the policy
and value losses, the one GAE recursion), `quantiles.py` the quantile math, `critics.py` the critic heads.
"""

from dvpo_lab.algos import dvpo, grpo, ppo, rbppo, reinforce_pp  # noqa: F401  (registration)
from dvpo_lab.algos.core import (
    AGG_LOSS_MODES,
    KL_PENALTY_KINDS,
    agg_loss,
    build_token_rewards,
    compute_gae,
    compute_policy_loss,
    compute_value_loss,
    entropy_from_logits,
    gae_recursion,
    group_advantages,
    kl_penalty,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from dvpo_lab.algos.critics import CRITIC_KINDS, Critic, critic_from
from dvpo_lab.algos.dvpo import ACTOR_ADVANTAGES, DVPO_TERMS, DVPOConfig, dvpo_critic_loss, quantile_gae
from dvpo_lab.algos.kl_ctrl import AdaptiveKLController, FixedKLController
from dvpo_lab.algos.quantiles import MONOTONE_MODES, TAU_GRIDS, quantile_levels
from dvpo_lab.algos.rbppo import V_LO_MODES, RobustConfig
from dvpo_lab.algos.registry import (
    ALGORITHMS,
    AlgoSpec,
    broadcast_seq_advantage,
    get_algo,
    outcome_scores,
    register_algo,
)

__all__ = [
    "ACTOR_ADVANTAGES",
    "AGG_LOSS_MODES",
    "ALGORITHMS",
    "AdaptiveKLController",
    "AlgoSpec",
    "CRITIC_KINDS",
    "Critic",
    "DVPOConfig",
    "DVPO_TERMS",
    "FixedKLController",
    "KL_PENALTY_KINDS",
    "MONOTONE_MODES",
    "RobustConfig",
    "TAU_GRIDS",
    "V_LO_MODES",
    "agg_loss",
    "broadcast_seq_advantage",
    "build_token_rewards",
    "compute_gae",
    "compute_policy_loss",
    "compute_value_loss",
    "critic_from",
    "dvpo_critic_loss",
    "entropy_from_logits",
    "gae_recursion",
    "get_algo",
    "group_advantages",
    "kl_penalty",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "outcome_scores",
    "quantile_gae",
    "quantile_levels",
    "register_algo",
]
