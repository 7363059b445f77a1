"""Critic kinds (`critic=scalar|ensemble|quantile|none`): how a value model's raw head is read, what the
advantage estimator receives, and which loss trains it.

A critic is a transformer backbone plus one linear head with `n_out` outputs per token (`models.build`):
    scalar    n_out = 1             -> values [B, T]            (PPO; veRL `compute_value_loss`)
    ensemble  n_out = K             -> values [B, T, K]         (RB-PPO, docs/algorithms.md "RB-PPO")
    quantile  n_out = H * N         -> quantiles [B, T, H, N]   (DVPO paper, Eqs. 2-11); the estimator gets the
                                                                 ensemble [B, T, N] (mean over heads)
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from dvpo_lab.algos.core import compute_value_loss
from dvpo_lab.algos.distributional import (
    DVPO_TERMS,
    dvpo_critic_loss,
    monotone_quantiles,
    quantile_levels,
)
from dvpo_lab.algos.robust import ensemble_value_loss

__all__ = ["CRITIC_KINDS", "ESTIMATOR_CRITICS", "Critic"]

CRITIC_KINDS = ("none", "scalar", "ensemble", "quantile")
# Which critic kind each registered estimator reads (critic-free estimators need "none").
ESTIMATOR_CRITICS = {"gae": "scalar", "robust_gae": "ensemble", "dist_gae": "quantile", "grpo": "none",
                     "dr_grpo": "none", "rloo": "none", "reinforce_pp": "none"}


class Critic:
    """The config-driven glue between a value model's head and the algorithms (no parameters of its own).

    Args:
        ccfg: the `critic` config node (kind, n_heads, n_quantiles, tau_grid, monotone, ...).
        acfg: the `algo` config node (clip range, aggregation, the DVPO loss knobs under `dist`).
    """

    def __init__(self, ccfg: DictConfig, acfg: DictConfig) -> None:
        if ccfg.kind not in CRITIC_KINDS:
            raise ValueError(f"critic.kind={ccfg.kind!r}; choices: {list(CRITIC_KINDS)}")
        self.kind, self.ccfg, self.acfg = ccfg.kind, ccfg, acfg
        self.n_heads, self.n_quantiles = int(ccfg.n_heads), int(ccfg.n_quantiles)
        self.taus = quantile_levels(self.n_quantiles, ccfg.tau_grid) if self.kind == "quantile" else None

    @property
    def n_out(self) -> int:
        return {"none": 0, "scalar": 1, "ensemble": self.n_heads, "quantile": self.n_heads * self.n_quantiles}[
            self.kind]

    def view(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw head outputs `[b, T, n_out]` -> scalar `[b, T]`, ensemble `[b, T, K]` or quantile `[b, T, H, N]`."""
        if self.kind == "scalar":
            return raw[..., 0]
        if self.kind == "ensemble":
            return raw
        q = raw.reshape(*raw.shape[:-1], self.n_heads, self.n_quantiles)
        return monotone_quantiles(q, self.ccfg.monotone)

    def estimator_values(self, view: torch.Tensor) -> torch.Tensor:
        """What the advantage estimator reads: the view itself, or the head ensemble `[B, T, N]` of quantiles."""
        return view.mean(-2) if self.kind == "quantile" else view

    @staticmethod
    def mean_value(values: torch.Tensor) -> torch.Tensor:
        """A scalar value per token `[B, T]` from estimator values or targets (for explained variance)."""
        return values if values.dim() == 2 else values.mean(-1)

    def loss(self, view, old_view, targets, mask, loss_scale_factor: int | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The critic loss for this kind; metrics come back without the `critic/` prefix.
        `loss_scale_factor`: the generation budget, the constant divisor of the Dr. GRPO `loss_agg_mode`s."""
        a, budget = self.acfg, loss_scale_factor
        if self.kind == "scalar":
            loss, m = compute_value_loss(view, old_view, targets, mask, a.cliprange_value, a.loss_agg_mode, budget)
            return loss, {"vf_loss": loss.detach(), **m}
        if self.kind == "ensemble":
            loss, m = ensemble_value_loss(view, old_view, targets, mask, a.cliprange_value, a.loss_agg_mode, budget)
            return loss, {"vf_loss": loss.detach(), **m}
        d = a.dist
        weights = {t: d.weights[t] if d.use[t] else 0.0 for t in DVPO_TERMS}
        loss, m = dvpo_critic_loss(
            view, old_view, targets, mask, self.taus.to(view.device, view.dtype), kappa=d.kappa, qr_on=d.qr_on,
            value_clip=d.value_clip, cliprange_value=a.cliprange_value, tail_alpha=d.tail_alpha,
            tail_beta=d.tail_beta, margin_low=d.margin_low, margin_up=d.margin_up, risk_eta=d.risk_eta,
            weights=weights, loss_agg_mode=a.loss_agg_mode, loss_scale_factor=budget)
        return loss, {"vf_loss": loss.detach(), **m}
