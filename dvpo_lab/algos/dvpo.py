"""DVPO (arXiv 2512.03847; what is reconstructed and what goes beyond the paper: docs/algorithms.md): PPO with a
token-level multi-head quantile critic, distributional GAE, and a critic loss that shapes the value distribution's
tails asymmetrically. `algo=dvpo` selects `dist_gae` below; its own config node is `algo.dist` (`DVPOConfig`).

Shapes: B sequences, T response tokens, H critic heads, N quantiles per head. The critic gives `[B, T, H, N]`
(`critics.QuantileCritic`); the estimator reads the head ensemble `[B, T, N]`. Every term of the loss is taken at
valid tokens only (packed to `[n, ...]`), so padding never enters a statistic.

The critic loss, L = L_QR + sum_k w_k L_k (DVPO paper Eqs. 3-11), per token with pred = the ensemble over heads,
sorted for tail statistics, targets Z^ sorted, k_a = tail_size(N, tail_alpha), k_b = tail_size(N, tail_beta):
    qr     Eq. 3: quantile Huber (kappa > 0) or pinball (kappa = 0), all pairs, on each head or the ensemble,
           with the distributional value clip (`qr_term`)
    risk   Eq. 4: the QR loss re-weighted per quantile by w_i ~ exp(-risk_eta (1 - tau_i)), mean(w) = 1
    cvar   Eq. 5: (mean of the lowest k_a pred - the same of the targets)^2
    gain   Eq. 6: (mean of the highest k_b pred - the same of the targets)^2
    shift  Eq. 7: ReLU(mean target - mean pred), penalises a pessimistic mean only
    shape  Eq. 8 with margins: ReLU(D_low(pred) - (1 - m_l) D_low(Z)) + ReLU((1 + m_u) D_up(Z) - D_up(pred)),
           D = within-tail variance: contract the lower tail, expand the upper one
    curv   Eq. 9: ReLU(mean 2nd difference over the lower tail) + ReLU(-mean 2nd difference over the upper)
    cons   Eq. 10: mean over head pairs of the mean squared difference of their quantiles
A term switched off (`dist.use.<k>=false`) or weighted 0 is not computed. On CPU the QR core and the six
regularisers run compiled (`dvpo_lab.algos.kernels`); the torch functions here are the reference and the GPU path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from dvpo_lab.algos import kernels
from dvpo_lab.algos.core import agg_loss, gae_recursion, masked_whiten
from dvpo_lab.algos.quantiles import (
    cvar_weights,
    distorted_expectation,
    quantile_huber_sorted,
    sort_last,
    tail_size,
    tail_var,
    wang_weights,
)
from dvpo_lab.algos.registry import register_algo
from dvpo_lab.choices import choice_enum

__all__ = [
    "ACTOR_ADVANTAGES",
    "DVPOConfig",
    "DVPO_TERMS",
    "dist_gae_advantage",
    "dvpo_critic_loss",
    "quantile_gae",
]

ACTOR_ADVANTAGES = ("mean", "cvar", "wang")
# Regulariser names, in the paper's cumulative-ablation order; `risk` is Eq. 4.
DVPO_TERMS = ("cons", "cvar", "gain", "shift", "shape", "curv", "risk")
ActorAdvantage = choice_enum("ActorAdvantage", ACTOR_ADVANTAGES, __name__)
QrOn = choice_enum("QrOn", ("heads", "ensemble"), __name__)
ValueClip = choice_enum("ValueClip", ("mean", "quantile", "none"), __name__)


@dataclass
class DVPOTermSwitches:
    """On/off switch per regulariser (the paper's cumulative ablation switches these); the QR core is always on."""

    cons: bool = True  # Eq. 10 multi-head consistency
    cvar: bool = True  # Eq. 5 lower-tail CVaR calibration
    gain: bool = True  # Eq. 6 upper-tail gain calibration
    shift: bool = True  # Eq. 7 mean-shift penalty (one-sided)
    shape: bool = True  # Eq. 8 asymmetric tail shape: contract the lower tail, expand the upper one
    curv: bool = True  # Eq. 9 tail curvature
    risk: bool = False  # Eq. 4 risk-weighted quantiles (not in the paper's ablation; off by default)


@dataclass
class DVPOTermWeights:
    """Weight per regulariser: 0.1 is the paper's best "risk interval weight"; the table is in docs/algorithms.md."""

    cons: float = 0.1
    cvar: float = 0.1
    gain: float = 0.1
    shift: float = 0.1
    shape: float = 0.1
    curv: float = 0.01
    risk: float = 0.1


@dataclass
class DVPOConfig:
    """DVPO's own node, `algo.dist`: the actor's advantage and the distributional critic loss (Eqs. 2-11)."""

    kappa: float = 0.02  # quantile Huber threshold; 0 = pinball. Keep << reward scale (else it learns expectiles)
    qr_on: QrOn = QrOn.heads  # heads: fit every head (keeps the ensemble meaningful) | ensemble: fit the head mean
    value_clip: ValueClip = ValueClip.mean  # mean: clip the mean shift | quantile: clip each quantile | none
    tail_alpha: float = 0.1  # lower-tail fraction (k_a = max(1, floor(alpha N)))
    tail_beta: float = 0.1  # upper-tail fraction
    margin_low: float = 0.0  # 0 reproduces Eq. 8; > 0 contracts the lower tail below the target's spread
    margin_up: float = 0.0  # 0 reproduces Eq. 8; > 0 expands the upper tail beyond the target's spread
    risk_eta: float = 1.0  # Eq. 4 weights exp(-eta (1 - tau)): eta > 0 favours upper quantiles
    # the actor's advantage: mean = the paper's reconstruction (GAE on the mean value); cvar | wang are risk-aware
    # variants beyond the paper: A = rho(targets) - rho(values)
    actor_advantage: ActorAdvantage = ActorAdvantage.mean
    risk_alpha: float = 0.1  # CVaR level (actor_advantage=cvar)
    wang_eta: float = -0.5  # Wang distortion (actor_advantage=wang; < 0 risk-averse)
    use: DVPOTermSwitches = field(default_factory=DVPOTermSwitches)
    weights: DVPOTermWeights = field(default_factory=DVPOTermWeights)


# Distributional GAE (DVPO paper Eq. 2) ----------------------------------------------------------------------


def quantile_gae(
    token_rewards: torch.Tensor, quantiles: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-quantile GAE: delta^j_t = r_t + gamma theta_j(s_{t+1}) - theta_j(s_t), A^j_t = delta^j_t + gamma lam
    A^j_{t+1}; targets Z^_{j,t} = theta_j(s_t) + A^j_t, the per-quantile lambda-return (never one scalar return
    broadcast to all quantiles): `core.gae_recursion` on the N quantiles at once.

    Args:
        token_rewards: [B, T], quantiles: [B, T, N] ensemble quantiles of the rollout-time critic, mask: [B, T].
    Returns:
        (advantages [B, T, N], targets [B, T, N]), 0 at padded positions.
    """
    if quantiles.dim() != 3:
        raise ValueError(f"expected quantiles [B, T, N], got {tuple(quantiles.shape)}")
    return gae_recursion(token_rewards, quantiles, mask, gamma, lam)


def actor_weights(n: int, config: DictConfig, device, dtype) -> torch.Tensor | None:
    """Spectral weights `[N]` of the actor's risk measure (`dist.actor_advantage`); None for the mean."""
    kind = config.actor_advantage
    if kind == "mean":
        return None
    if kind == "cvar":
        return cvar_weights(n, config.risk_alpha, device=device, dtype=dtype)
    if kind == "wang":
        return wang_weights(n, config.wang_eta, device=device, dtype=dtype)
    raise ValueError(f"unknown actor_advantage {kind!r}; choices: {list(ACTOR_ADVANTAGES)}")


# The critic loss's terms: small pure functions of packed tensors ([n, H, N] predictions, [n, N] sorted targets) --


def qr_per_quantile(p: torch.Tensor, z: torch.Tensor, taus: torch.Tensor, kappa: float, qr_on: str) -> torch.Tensor:
    """Eq. 3 per quantile `[n, H', N]`: on each head (H' = H) or on the ensemble (H' = 1); compiled on CPU."""
    pred = p if qr_on == "heads" else p.mean(-2, keepdim=True)
    if kernels.available(pred):
        return kernels.quantile_huber(pred, z, taus, kappa)
    n, H, N = pred.shape
    return quantile_huber_sorted(pred, z.unsqueeze(1).expand(n, H, z.shape[-1]), taus, kappa)


def qr_term(
    qr: torch.Tensor,
    p: torch.Tensor,
    old: torch.Tensor,
    z: torch.Tensor,
    taus: torch.Tensor,
    config: DictConfig,
    clip: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3 with the distributional value clip: per token the larger of the unclipped QR loss `qr` `[n]` and the
    loss of the clipped prediction, as PPO's value clip does. "mean" translates each head's distribution so its
    mean moves at most `clip` from the rollout-time one (`old` `[n, H, N]`); "quantile" clips each quantile.
    Whether a token's clip is active is decided on the raw difference (`p - s + s` need not equal p in floating
    point, and an inactive clip must not cost a second QR pass).

    Returns:
        (per-token loss [n], clip fraction: share of tokens where the clipped branch wins).
    """
    if config.value_clip == "quantile":
        moved = ((p - old).detach().abs() > clip).flatten(1).any(-1)
    else:
        shift = p.mean(-1, keepdim=True) - old.mean(-1, keepdim=True)  # [n, H, 1]
        moved = (shift.detach().abs() > clip).flatten(1).any(-1)
    qr_clip = qr
    if moved.any():
        rows = moved.nonzero().squeeze(-1)
        pr, o = p[rows], old[rows]
        if config.value_clip == "quantile":
            p_clip = o + (pr - o).clamp(-clip, clip)
        else:
            s = shift[rows]
            p_clip = pr - s + s.clamp(-clip, clip)
        clipped = qr_per_quantile(p_clip, z[rows], taus, config.kappa, config.qr_on).mean((-1, -2))
        qr_clip = qr_clip.index_put((rows,), clipped)
    clipfrac = (qr_clip > qr).float().mean() if qr.numel() else p.new_zeros(())
    return torch.maximum(qr, qr_clip), clipfrac


def risk_term(qr_q: torch.Tensor, taus: torch.Tensor, eta: float) -> torch.Tensor:
    """Eq. 4: the per-quantile QR loss `[n, H', N]` weighted by exp(-eta (1 - tau)), normalised to mean 1."""
    rw = torch.exp(-eta * (1.0 - taus.to(qr_q.dtype)))
    return (qr_q * (rw / rw.mean())).mean((-1, -2))


def cvar_term(lo_p: torch.Tensor, lo_z: torch.Tensor) -> torch.Tensor:
    """Eq. 5: squared gap of the lower-tail means, `[n, k_a]` each -> `[n]`."""
    return (lo_p.mean(-1) - lo_z.mean(-1)).square()


def gain_term(up_p: torch.Tensor, up_z: torch.Tensor) -> torch.Tensor:
    """Eq. 6: squared gap of the upper-tail means, `[n, k_b]` each -> `[n]`."""
    return (up_p.mean(-1) - up_z.mean(-1)).square()


def shift_term(ens: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Eq. 7: ReLU(mean target - mean prediction), `[n, N]` each -> `[n]` (a pessimistic mean only)."""
    return F.relu(z.mean(-1) - ens.mean(-1))


def shape_term(lo_p, up_p, lo_z, up_z, margin_low: float, margin_up: float) -> torch.Tensor:
    """Eq. 8 with margins: contract the lower tail's variance, expand the upper tail's -> `[n]`."""
    return F.relu(tail_var(lo_p) - (1 - margin_low) * tail_var(lo_z)) + F.relu(
        (1 + margin_up) * tail_var(up_z) - tail_var(up_p)
    )


def curv_term(ens_sorted: torch.Tensor, kl: int, ku: int) -> torch.Tensor:
    """Eq. 9: ReLU(mean 2nd difference over the lowest kl) + ReLU(-mean over the highest ku), `[n, N]` -> `[n]`."""
    N = ens_sorted.shape[-1]
    if N < 3:
        return ens_sorted.new_zeros(ens_sorted.shape[0])
    d2 = ens_sorted[:, 2:] - 2 * ens_sorted[:, 1:-1] + ens_sorted[:, :-2]  # [n, N - 2]
    return F.relu(d2[:, :kl].mean(-1)) + F.relu(-d2[:, N - 2 - ku :].mean(-1))


def cons_term(p: torch.Tensor) -> torch.Tensor:
    """Eq. 10: mean over head pairs of the mean squared difference of their quantiles, `[n, H, N]` -> `[n]`."""
    H = p.shape[1]
    if H == 1:
        return p.new_zeros(p.shape[0])
    return torch.stack([(p[:, h] - p[:, g]).square().mean(-1) for h in range(H) for g in range(h + 1, H)]).mean(0)


@dataclass(frozen=True)
class Tails:
    """Tail sizes: k_a, k_b quantiles of N (Eqs. 5-8); kl, ku second differences of N - 2 (Eq. 9)."""

    ka: int
    kb: int
    kl: int
    ku: int

    @classmethod
    def of(cls, n: int, config: DictConfig) -> Tails:
        a, b = config.tail_alpha, config.tail_beta
        kl, ku = (tail_size(n - 2, a), tail_size(n - 2, b)) if n >= 3 else (1, 1)
        return cls(tail_size(n, a), tail_size(n, b), kl, ku)


def regularisers_torch(
    p: torch.Tensor, z: torch.Tensor, active, t: Tails, margin_low: float = 0.0, margin_up: float = 0.0
) -> dict[str, torch.Tensor]:
    """The active ones of cvar, gain, shift, shape, curv, cons per token `[n]` (the reference and the GPU path).

    Args:
        p: [n, H, N] predicted quantiles per head, z: [n, N] ascending targets, active: the term names to compute.
    """
    N = p.shape[-1]
    ens = p.mean(-2)
    ens_sorted = sort_last(ens)
    lo_p, up_p, lo_z, up_z = ens_sorted[:, : t.ka], ens_sorted[:, N - t.kb :], z[:, : t.ka], z[:, N - t.kb :]
    terms = {
        "cvar": lambda: cvar_term(lo_p, lo_z),
        "gain": lambda: gain_term(up_p, up_z),
        "shift": lambda: shift_term(ens, z),
        "shape": lambda: shape_term(lo_p, up_p, lo_z, up_z, margin_low, margin_up),
        "curv": lambda: curv_term(ens_sorted, t.kl, t.ku),
        "cons": lambda: cons_term(p),
    }
    return {k: fn() for k, fn in terms.items() if k in active}


@torch.no_grad()
def diagnostics(
    p: torch.Tensor, z: torch.Tensor, t: Tails, stats: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Detached critic diagnostics (`critic/quantile_spread_low`, ...), from the compiled path's `stats` `[n, 7]`
    when it ran, else computed here."""
    n, H, N = p.shape
    zero = p.new_zeros(())
    if stats is not None:
        var_lo_p, var_up_p, var_lo_z, var_up_z, crossed, mean_p, mean_z = stats.unbind(-1)
        crossed_frac = crossed.sum() / (n * (N - 1)) if n and N > 1 else zero
    else:
        ens = p.mean(-2)
        ens_sorted = sort_last(ens)
        var_lo_p, var_up_p = tail_var(ens_sorted[:, : t.ka]), tail_var(ens_sorted[:, N - t.kb :])
        var_lo_z, var_up_z = tail_var(z[:, : t.ka]), tail_var(z[:, N - t.kb :])
        mean_p, mean_z = ens.mean(-1), z.mean(-1)
        crossed_frac = (ens[:, 1:] < ens[:, :-1]).float().mean() if n and N > 1 else zero
    return {
        "quantile_spread_low": var_lo_p.mean() if n else zero,
        "quantile_spread_up": var_up_p.mean() if n else zero,
        "target_spread_low": var_lo_z.mean() if n else zero,
        "target_spread_up": var_up_z.mean() if n else zero,
        "mean_shift": (mean_p - mean_z).mean() if n else zero,
        "head_disagreement": p.mean(-1).std(-1, unbiased=False).mean() if n and H > 1 else zero,
        "crossed_frac": crossed_frac,
        "value_mean": mean_p.mean() if n else zero,
    }


def aggregate(
    per_tok: dict[str, torch.Tensor], mask: torch.Tensor, mode: str, scale: int | None
) -> dict[str, torch.Tensor]:
    """Each term's per-token values `[n]` (valid tokens of `mask` `[B, T]`, in order) reduced by `agg_loss`."""
    names, valid = list(per_tok), mask.bool()
    stacked = torch.stack([per_tok[k] for k in names])  # [K, n]: every term at once
    if mode == "token-mean":  # the packed tokens are exactly the valid ones
        agg = stacked.mean(-1) if stacked.shape[-1] else stacked.new_zeros(len(names))
    else:
        mats = stacked.new_zeros(len(names), *mask.shape).masked_scatter(valid.expand(len(names), *mask.shape), stacked)
        agg = torch.stack([agg_loss(m, mask.to(m.dtype), mode, scale) for m in mats])
    return dict(zip(names, agg.unbind(0), strict=True))


def pack_valid(
    pred: torch.Tensor, old_pred: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The valid tokens of a minibatch: predictions `[n, H, N]`, ascending targets `[n, N]` and their flat indices
    `[n]` into `B * T`.

    Raises:
        ValueError: pred/old_pred are not `[B, T, H, N]` or targets not `[B, T, N]`.
    """
    B, T, H, N = pred.shape if pred.dim() == 4 else (0, 0, 0, 0)
    if not B or old_pred.shape != pred.shape or targets.shape != (B, T, N):
        raise ValueError(
            f"expected pred/old_pred [B, T, H, N] and targets [B, T, N]; got {tuple(pred.shape)}, "
            f"{tuple(old_pred.shape)}, {tuple(targets.shape)}"
        )
    idx = mask.bool().flatten().nonzero().squeeze(-1)
    p = pred.reshape(B * T, H, N).index_select(0, idx)
    return p, sort_last(targets.detach().reshape(B * T, N).index_select(0, idx)), idx


def regulariser_terms(
    p: torch.Tensor, z: torch.Tensor, active, t: Tails, config: DictConfig, fused: bool | None
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The active regularisers per token `[n]` (Eqs. 5-10), compiled where `fused` (None: where available), with
    the compiled path's diagnostics `[n, 7]` (None on the torch path)."""
    if fused if fused is not None else kernels.available(p):
        reg, stats = kernels.regularisers(p, z, t.ka, t.kb, t.kl, t.ku, config.margin_low, config.margin_up)
        return {k: reg[j] for j, k in enumerate(kernels.REG_TERMS) if k in active}, stats
    return regularisers_torch(p, z, active, t, config.margin_low, config.margin_up), None


def dvpo_critic_loss(
    pred: torch.Tensor,
    old_pred: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    taus: torch.Tensor,
    config: DictConfig,
    *,
    cliprange_value: float | None = 0.5,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: int | None = None,
    fused: bool | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = L_QR + sum_k w_k L_k over the terms in the module docstring (DVPO paper Eqs. 3-11).

    Args:
        pred: [B, T, H, N] current critic quantiles, old_pred: [B, T, H, N] rollout-time ones, targets: [B, T, N]
        per-quantile lambda-returns (detached), mask: [B, T], taus: [N]; config: `algo.dist` (`DVPOConfig`);
        cliprange_value: the value clip (None: off); loss_agg_mode, loss_scale_factor: `agg_loss`'s reduction;
        fused: compiled regularisers (None: where available).
    Returns:
        (loss scalar, metrics): every term unweighted as `loss_<name>`, `vf_clipfrac`, diagnostics; detached.
    Raises:
        ValueError: shapes that do not match.
    """
    w = {k: float(config.weights[k]) for k in DVPO_TERMS if config.use[k] and config.weights[k]}
    p, z, idx = pack_valid(pred, old_pred, targets, mask)  # [n, H, N], [n, N] ascending, [n]
    t = Tails.of(p.shape[-1], config)
    qr_q = qr_per_quantile(p, z, taus, config.kappa, config.qr_on)  # [n, H', N]
    per_tok, clipfrac = {"qr": qr_q.mean((-1, -2))}, p.new_zeros(())
    if config.value_clip != "none" and cliprange_value is not None:
        old = old_pred.detach().flatten(0, 1).index_select(0, idx)
        per_tok["qr"], clipfrac = qr_term(per_tok["qr"], p, old, z, taus, config, cliprange_value)
    if "risk" in w:
        per_tok["risk"] = risk_term(qr_q, taus, config.risk_eta)
    regs, stats = regulariser_terms(p, z, w, t, config, fused)
    per_tok.update(regs)
    terms = aggregate({k: v.to(pred.dtype) for k, v in per_tok.items()}, mask, loss_agg_mode, loss_scale_factor)
    loss = terms["qr"] + sum(w[k] * terms[k] for k in terms if k != "qr")
    metrics = {f"loss_{k}": v.detach() for k, v in terms.items()}
    return loss, {**metrics, **diagnostics(p, z, t, stats), "vf_clipfrac": clipfrac}


def dvpo_value_loss(
    view: torch.Tensor,
    old_view: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    *,
    critic,
    config: DictConfig,
    loss_scale_factor: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The registered critic loss: `dvpo_critic_loss` with the critic's levels and the run's `algo` node."""
    taus = critic.taus.to(view.device, view.dtype)
    return dvpo_critic_loss(
        view,
        old_view,
        targets,
        mask,
        taus,
        config.dist,
        cliprange_value=config.cliprange_value,
        loss_agg_mode=config.loss_agg_mode,
        loss_scale_factor=loss_scale_factor,
    )


@register_algo("dist_gae", critic="quantile", critic_loss=dvpo_value_loss, node="dist")
def dist_gae_advantage(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    values: torch.Tensor | None,
    group_index: torch.Tensor | None,
    config: DictConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DVPO advantages: distributional GAE (Eq. 2), collapsed to one advantage per token for the actor.

    `dist.actor_advantage=mean` (the paper's reconstruction): A_t = mean_j A^j_t, which equals GAE on the mean
    value (GAE is linear in the values). `cvar` / `wang` (beyond the paper): A_t = rho(Z^_t) - rho(theta_t), the
    risk measure of the lambda-return distribution minus that of the value distribution.

    Args:
        token_rewards: [B, T], mask: [B, T], values: [B, T, N] rollout-time ensemble quantiles (required).
    Returns:
        (advantages [B, T] whitened when `algo.norm_adv`, targets [B, T, N]).
    Raises:
        ValueError: values are not `[B, T, N]` (critic=quantile).
    """
    if values is None or values.dim() != 3:
        raise ValueError("adv_estimator 'dist_gae' needs quantile values: pass values=[B, T, N] (critic=quantile)")
    adv_q, targets = quantile_gae(token_rewards, values, mask, config.gamma, config.lam)
    weights = actor_weights(values.shape[-1], config.dist, values.device, values.dtype)
    if weights is None:
        adv = adv_q.mean(-1)
    else:
        adv = distorted_expectation(targets, weights) - distorted_expectation(values, weights)
        adv = torch.where(mask.bool(), adv, torch.zeros_like(adv))
    if config.norm_adv:
        adv = masked_whiten(adv, mask)
    return adv, targets
