"""Critic heads (`critic=scalar|ensemble|quantile|none`, each a `_target_` in `conf/critic/`): how many outputs the
value model's linear head has per token, how they are read, and what the advantage estimator receives.

A critic is a transformer backbone plus one linear head with `n_out` outputs per token (`models.build`):
    scalar    n_out = 1        -> values [B, T]            (PPO; veRL `compute_value_loss`)
    ensemble  n_out = K        -> values [B, T, K]         (RB-PPO, docs/algorithms.md "RB-PPO")
    quantile  n_out = H * N    -> quantiles [B, T, H, N]   (DVPO paper, Eqs. 2-11); the estimator gets the
                                                            ensemble [B, T, N] (mean over heads)
Each class's arguments have no defaults: its YAML option is the one place where their values live (so every one
of them can be overridden: `critic.n_quantiles=50`). The loss that trains it belongs to the algorithm
(`AlgoSpec.critic_loss`), which names the kind it reads. A user's critic is a subclass in their module and
`critic._target_=my_pkg.MyCritic`.
"""

from __future__ import annotations

import inspect

import torch

from dvpo_lab.algos.quantiles import monotone_quantiles, quantile_levels

__all__ = ["CRITIC_KINDS", "Critic", "EnsembleCritic", "NoCritic", "QuantileCritic", "ScalarCritic", "critic_from"]

CRITIC_KINDS = ("none", "scalar", "ensemble", "quantile")


class Critic:
    """A value head's shape and reading (no parameters of its own; the module is `models.build.ValueModel`).

    Attributes:
        kind: none | scalar | ensemble | quantile (matched against the algorithm's `AlgoSpec.critic`).
        n_out: outputs per token of the linear head. head_init_std: its weight init std (0 = zeros).
        taus: `[N]` quantile levels (quantile critics), else None.
    """

    kind = "none"
    taus: torch.Tensor | None = None
    head_init_std = 0.0

    @property
    def n_out(self) -> int:
        return 0

    def config(self) -> dict:
        """The constructor arguments (export writes them beside the critic's weights)."""
        return {}

    def view(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw head outputs `[b, T, n_out]` -> the values the critic loss reads."""
        return raw

    def estimator_values(self, view: torch.Tensor) -> torch.Tensor:
        """What the advantage estimator reads from a view."""
        return view

    @staticmethod
    def mean_value(values: torch.Tensor) -> torch.Tensor:
        """A scalar value per token `[B, T]` from estimator values or targets (for explained variance)."""
        return values if values.dim() == 2 else values.mean(-1)


class NoCritic(Critic):
    """No value model (GRPO, Dr. GRPO, RLOO, REINFORCE++): advantages come from rewards alone."""


class ScalarCritic(Critic):
    """One value per token, `[B, T]` (PPO)."""

    kind = "scalar"

    def __init__(self, *, head_init_std: float) -> None:
        self.head_init_std = float(head_init_std)

    @property
    def n_out(self) -> int:
        return 1

    def config(self) -> dict:
        return {"head_init_std": self.head_init_std}

    def view(self, raw: torch.Tensor) -> torch.Tensor:
        return raw[..., 0]


class EnsembleCritic(Critic):
    """K scalar heads on one backbone, `[B, T, K]` (RB-PPO). Random heads (head_init_std > 0) start apart."""

    kind = "ensemble"

    def __init__(self, *, n_heads: int, head_init_std: float) -> None:
        self.n_heads, self.head_init_std = int(n_heads), float(head_init_std)

    @property
    def n_out(self) -> int:
        return self.n_heads

    def config(self) -> dict:
        return {"n_heads": self.n_heads, "head_init_std": self.head_init_std}


class QuantileCritic(Critic):
    """H heads x N quantiles per token, `[B, T, H, N]` (DVPO); the estimator reads the head mean `[B, T, N]`.

    Args:
        n_heads: H. n_quantiles: N (the paper's best "interval density" is 200).
        tau_grid: mid = (2j - 1) / (2N) (QR-DQN) | paper = j / N. monotone: none | sort | cumsoftplus
            (non-crossing quantiles by construction). head_init_std: > 0 keeps several heads apart.
    """

    kind = "quantile"

    def __init__(self, *, n_heads: int, n_quantiles: int, tau_grid: str, monotone: str, head_init_std: float) -> None:
        self.head_init_std = float(head_init_std)
        self.n_heads, self.n_quantiles = int(n_heads), int(n_quantiles)
        self.tau_grid, self.monotone = tau_grid, monotone
        self.taus = quantile_levels(self.n_quantiles, tau_grid)

    @property
    def n_out(self) -> int:
        return self.n_heads * self.n_quantiles

    def config(self) -> dict:
        return {
            "n_heads": self.n_heads,
            "n_quantiles": self.n_quantiles,
            "tau_grid": self.tau_grid,
            "monotone": self.monotone,
            "head_init_std": self.head_init_std,
        }

    def view(self, raw: torch.Tensor) -> torch.Tensor:
        q = raw.reshape(*raw.shape[:-1], self.n_heads, self.n_quantiles)
        return monotone_quantiles(q, self.monotone)

    def estimator_values(self, view: torch.Tensor) -> torch.Tensor:
        return view.mean(-2)


_KINDS = {"none": NoCritic, "scalar": ScalarCritic, "ensemble": EnsembleCritic, "quantile": QuantileCritic}


def critic_from(node) -> Critic:
    """The critic a `critic` config node describes: `hydra.utils.instantiate` of its `_target_`; a node written by
    an older version (`kind: quantile, n_heads: ...` without `_target_`) is read too."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if node is None:
        return NoCritic()
    if "_target_" in node:
        return instantiate(node)
    d = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    cls = _KINDS[d.pop("kind")]
    names = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in d.items() if k in names})
