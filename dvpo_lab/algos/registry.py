"""The algorithm registry: `algo.adv_estimator` (veRL's key) selects an `AlgoSpec`, which says what the algorithm
needs and holds its two functions. The LightningModule calls the spec and never a list of knobs.

An algorithm registers itself where it is written (veRL's `@register_adv_est`):

    @register_algo("gae", critic="scalar", critic_loss=scalar_value_loss)
    def gae_advantage(token_rewards, mask, *, values, group_index, config): ...

Every estimator has the signature

    fn(token_rewards [B, T], mask [B, T], *, values, group_index, config) -> (advantages [B, T], returns)

`values` is what the critic gives the estimator (`Critic.estimator_values`: `[B, T]`, `[B, T, K]` or `[B, T, N]`;
None without a critic), `group_index` `[B]` the prompt id of each response, `config` the run's `algo` node (veRL
passes `config=` the same way): an estimator reads the keys it uses (`config.gamma`, `config.dist.kappa`, ...), and
a misspelt one raises instead of being swallowed. `returns` are the critic's targets (any trailing shape the
critic loss reads). A critic loss has the signature

    fn(view, old_view, targets, mask, *, critic, config, loss_scale_factor) -> (loss, metrics without `critic/`)

with `view`/`old_view` the critic's reading of its head now and at rollout time (`Critic.view`); the module logs
the loss itself as `critic/vf_loss`.
A user's algorithm is one module of theirs registering a spec (imported through `extra_modules`) and one YAML
(docs/architecture.md, "Your own algorithm").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dvpo_lab.algos.core import masked_sum

__all__ = [
    "ALGORITHMS",
    "AlgoSpec",
    "broadcast_seq_advantage",
    "get_algo",
    "outcome_scores",
    "register_algo",
]

AdvEstimatorFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
CriticLossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class AlgoSpec:
    """What an algorithm needs and does.

    Attributes:
        name: the `algo.adv_estimator` that selects it.
        estimator: advantages and critic targets (signature in the module docstring).
        critic: the critic kind it reads: none | scalar | ensemble | quantile (`Critic.kind`).
        grouped: True when it compares the responses to one prompt (needs rollout.samples_per_prompt >= 2).
        critic_loss: trains the critic from (view, old_view, targets); None for critic-free algorithms.
        node: the algorithm's own config node under `algo` (`dist` for DVPO, `robust` for RB-PPO, `params` for
            a user's algorithm), or None.
        node_schema: the dataclass of that node when it is not part of the built-in schema: the node is checked
            against it when the run starts (unknown keys, types).
    """

    name: str
    estimator: AdvEstimatorFn
    critic: str
    grouped: bool = False
    critic_loss: CriticLossFn | None = None
    node: str | None = None
    node_schema: type | None = None


ALGORITHMS: dict[str, AlgoSpec] = {}


def register_algo(
    name: str,
    *,
    critic: str,
    grouped: bool = False,
    critic_loss: CriticLossFn | None = None,
    node: str | None = None,
    node_schema: type | None = None,
) -> Callable[[AdvEstimatorFn], AdvEstimatorFn]:
    """Decorator registering the estimator it wraps as algorithm `name`.

    Raises:
        ValueError: `name` is already registered by a different function, or a critic-based algorithm has no
            critic loss.
    """

    def decorator(fn: AdvEstimatorFn) -> AdvEstimatorFn:
        existing = ALGORITHMS.get(name)
        if existing is not None and existing.estimator is not fn:
            raise ValueError(f"algorithm {name!r} is already registered by {existing.estimator.__module__}")
        if critic != "none" and critic_loss is None:
            raise ValueError(f"algorithm {name!r} reads a {critic} critic but registers no critic_loss")
        ALGORITHMS[name] = AlgoSpec(name, fn, critic, grouped, critic_loss, node, node_schema)
        return fn

    return decorator


def get_algo(name: str) -> AlgoSpec:
    """The spec registered under `name`.

    Raises:
        ValueError: `name` is not registered (the message lists what is).
    """
    if name not in ALGORITHMS:
        raise ValueError(f"unknown adv_estimator {name!r}; registered: {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


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
        raise ValueError(f"expected seq_adv [B] and mask [B, T], got {tuple(seq_adv.shape)}, {tuple(mask.shape)}")
    expanded = seq_adv.unsqueeze(-1).expand(-1, mask.shape[1])
    return torch.where(mask.bool(), expanded, torch.zeros_like(expanded))
