"""Calling the registered algorithms from tests with plain keyword knobs: each builds the `algo` node the
LightningModule passes (`config=`), starting from the schema's defaults."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from dvpo_lab.algos import DVPO_TERMS, get_algo
from dvpo_lab.algos.dvpo import dvpo_critic_loss
from dvpo_lab.config import AlgoConfig

# keyword -> the key of the `algo` node it sets
_KEYS = {
    "whiten_advantages": "norm_adv",
    "actor_advantage": "dist.actor_advantage",
    "risk_alpha": "dist.risk_alpha",
    "wang_eta": "dist.wang_eta",
    "robust_c": "robust.c",
    "robust_rho": "robust.rho",
    "robust_v_lo": "robust.v_lo",
}


def algo_config(**knobs):
    """The `algo` node with these knobs set (gamma, lam, norm_adv_by_std, whiten_advantages, robust_c, ...)."""
    cfg = OmegaConf.structured(AlgoConfig)
    for k, v in knobs.items():
        OmegaConf.update(cfg, _KEYS.get(k, k), v)
    return cfg


def call_estimator(
    name: str, token_rewards: torch.Tensor, mask: torch.Tensor, values=None, group_index=None, lam: float = 1.0, **knobs
):
    """`get_algo(name).estimator` with lambda = 1 unless given (the tests' closed forms use it)."""
    return get_algo(name).estimator(
        token_rewards, mask, values=values, group_index=group_index, config=algo_config(lam=lam, **knobs)
    )


def dvpo_loss(
    pred,
    old,
    targets,
    mask,
    taus,
    weights: dict[str, float] | None = None,
    *,
    cliprange_value: float | None = 0.5,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor=None,
    fused=None,
    **dist,
):
    """`dvpo_critic_loss` with the regularisers weighted by `weights` (absent terms off) and `algo.dist` knobs."""
    cfg = algo_config(**{f"dist.{k}": v for k, v in dist.items()}).dist
    for t in DVPO_TERMS:
        cfg.use[t] = bool((weights or {}).get(t, 0.0))
        cfg.weights[t] = float((weights or {}).get(t, 0.0))
    return dvpo_critic_loss(
        pred,
        old,
        targets,
        mask,
        taus,
        cfg,
        cliprange_value=cliprange_value,
        loss_agg_mode=loss_agg_mode,
        loss_scale_factor=loss_scale_factor,
        fused=fused,
    )
