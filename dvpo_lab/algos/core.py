"""Core tensor functions shared by PPO, GRPO and DVPO, after veRL's `verl/trainer/ppo/core_algos.py`.

Every function is pure: tensors in, tensors out, no module state. Shapes use B = batch of sequences,
T = padded response length (at most the generation budget L), V = vocabulary. Masks are {0, 1} (bool or float)
with 1 = valid generated token; they are never broadcast implicitly: a mask must have exactly the shape of the
tensor it masks.

Masked statistics read padded positions through `torch.where`, never through `x * mask`, so a NaN or inf
sitting in a padded slot (e.g. a -inf log-prob) cannot leak into a valid result or its gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dvpo_lab.algos.kl_ctrl import AdaptiveKLController, FixedKLController
from dvpo_lab.choices import choice_enum

__all__ = [
    "AGG_LOSS_MODES",
    "KL_PENALTY_KINDS",
    "AdaptiveKLController",
    "FixedKLController",
    "agg_loss",
    "build_token_rewards",
    "compute_gae",
    "gae_recursion",
    "compute_policy_loss",
    "compute_value_loss",
    "entropy_from_logits",
    "group_advantages",
    "kl_penalty",
    "logprob_diff",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "rollout_is_weights",
]

AGG_LOSS_MODES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
    "dr-grpo",
)
# verl key (`kl_penalty`) -> canonical estimator; both spellings are accepted.
_KL_ALIASES = {"k1": "k1", "kl": "k1", "abs": "abs", "k2": "k2", "mse": "k2", "k3": "k3", "low_var_kl": "k3"}
KL_PENALTY_KINDS = tuple(_KL_ALIASES)
AggLossMode = choice_enum("AggLossMode", AGG_LOSS_MODES, __name__)  # the typed config's `algo.loss_agg_mode`
KLPenalty = choice_enum("KLPenalty", KL_PENALTY_KINDS, __name__)  # `algo.kl_penalty`, `algo.kl_loss_type`


def _check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise ValueError unless all tensors share one shape (we refuse silent broadcasting)."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch: {shapes}")


# Masked statistics (veRL/TRL `masked_whiten`) ---------------------------------------------------------------


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `x` over valid positions.

    Args:
        x: [B, T] (any shape), mask: same shape as `x`.
        dim: reduce over this dim (result [B] for dim=-1), or over everything when None (scalar).
    """
    _check_same_shape(x=x, mask=mask)
    xm = torch.where(mask.bool(), x, torch.zeros_like(x))
    return xm.sum() if dim is None else xm.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over valid positions; an empty selection gives 0 (not NaN).

    Args:
        x: [B, T], mask: [B, T]. dim as in `masked_sum`.
    """
    count = masked_sum(torch.ones_like(x), mask, dim=dim)
    return masked_sum(x, mask, dim=dim) / count.clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` over all valid positions (scalar), Bessel-corrected by default as in TRL/verl.

    Fewer than two valid positions give 0 rather than NaN (verl raises; we prefer a finite no-op whitening).

    Args:
        x: [B, T], mask: [B, T].
    """
    x = torch.where(mask.bool(), x, torch.zeros_like(x))  # an inf pad would otherwise give a NaN gradient
    mean = masked_mean(x, mask)
    sq = masked_sum((x - mean) ** 2, mask)
    count = masked_sum(torch.ones_like(x), mask)
    denom = (count - 1.0) if unbiased else count
    return sq / denom.clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Standardise `x` with the masked batch statistics (veRL/TRL `masked_whiten`): (x - mu) / sqrt(var + eps).

    With shift_mean=False the mean is added back (TRL `whiten_rewards`). Padded positions are 0 in the output.

    Args:
        x: [B, T], mask: [B, T].
    Returns:
        [B, T].
    """
    x = torch.where(mask.bool(), x, torch.zeros_like(x))  # keeps the backward finite when pads hold inf
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, torch.zeros_like(out))


# Loss aggregation (veRL `agg_loss`, TRL GRPO `loss_type`) ---------------------------------------------------


def agg_loss(
    loss_mat: torch.Tensor, mask: torch.Tensor, mode: str, loss_scale_factor: int | None = None
) -> torch.Tensor:
    """Reduce a per-token loss matrix to a scalar (verl `agg_loss`, `loss_agg_mode`).

    Modes (L = `loss_scale_factor`, the configured generation budget `rollout.max_new_tokens`):
        token-mean:              sum(m*l) / sum(m)                        (verl default, TRL "bnpo")
        seq-mean-token-mean:     mean_i( sum_t(m*l) / sum_t(m) )          (original GRPO)
        seq-mean-token-sum:      mean_i( sum_t(m*l) )
        seq-mean-token-sum-norm: sum(m*l) / L                             (verl Dr. GRPO; not divided by B)
        dr-grpo:                 sum(m*l) / (B * L)                       (TRL `loss_type="dr_grpo"`)
    Sequences with no valid token contribute 0 but still count in B. The two Dr. GRPO modes divide by a
    constant, not by the padded width T: a batch's padding follows its longest response, so dividing by T
    would re-introduce the length-dependent weighting Dr. GRPO removes (veRL pads every batch to the budget,
    TRL and SkyRL divide by `max_completion_length` explicitly).

    Args:
        loss_mat: [B, T], mask: [B, T].
        loss_scale_factor: L in tokens, >= T; required by the two Dr. GRPO modes, ignored by the others.
    Returns:
        scalar tensor.
    Raises:
        ValueError: unknown mode; a Dr. GRPO mode without `loss_scale_factor`, or with one below T.
    """
    if loss_mat.dim() != 2:
        raise ValueError(f"loss_mat must be [B, T], got shape {tuple(loss_mat.shape)}")
    n_seq, width = loss_mat.shape
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    if mode == "seq-mean-token-mean":
        return masked_mean(loss_mat, mask, dim=-1).mean()
    if mode == "seq-mean-token-sum":
        return masked_sum(loss_mat, mask, dim=-1).mean()
    if mode in ("seq-mean-token-sum-norm", "dr-grpo"):
        if loss_scale_factor is None:
            raise ValueError(
                f"loss_agg_mode {mode!r} needs loss_scale_factor (the generation budget, "
                "rollout.max_new_tokens): it divides by a constant, not by the padded width"
            )
        if loss_scale_factor < width:
            # a response longer than the budget means the caller passed the wrong budget
            raise ValueError(f"loss_scale_factor={loss_scale_factor} is below the padded response width {width}")
        total = masked_sum(loss_mat, mask)
        return total / loss_scale_factor if mode == "seq-mean-token-sum-norm" else total / (n_seq * loss_scale_factor)
    raise ValueError(f"unknown loss_agg_mode {mode!r}; valid modes: {list(AGG_LOSS_MODES)}")


# KL estimators and entropy (veRL `kl_penalty`, `entropy_from_logits`) ---------------------------------------


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from sampled-token log-probs (verl `kl_penalty`;
    k1/k2/k3 as in J. Schulman, "Approximating KL divergence", 2020).

    With d = logp - ref_logp: k1 ("kl") = d; "abs" = |d|; k2 ("mse") = d^2 / 2;
    k3 ("low_var_kl") = exp(-d) - 1 + d, with verl's clamps (exponent to [-20, 20], result to [-10, 10]).
    Padded positions are not masked here: aggregate with `agg_loss` or `masked_mean`.

    Args:
        logp: [B, T] log pi_theta (or pi_old in "KL in reward" mode), ref_logp: [B, T] log pi_ref.
    Returns:
        [B, T].
    """
    _check_same_shape(logp=logp, ref_logp=ref_logp)
    if kind not in _KL_ALIASES:
        raise ValueError(f"unknown kl kind {kind!r}; valid kinds: {list(KL_PENALTY_KINDS)}")
    d = logp - ref_logp
    canonical = _KL_ALIASES[kind]
    if canonical == "k1":
        return d
    if canonical == "abs":
        return d.abs()
    if canonical == "k2":
        return 0.5 * d.square()
    # k3: pi_ref/pi - 1 - log(pi_ref/pi); clamps follow verl so one outlier token cannot blow up the loss.
    neg_d = torch.clamp(-d, min=-20.0, max=20.0)
    return torch.clamp(torch.exp(neg_d) - 1.0 - neg_d, min=-10.0, max=10.0)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution softmax(logits), logsumexp(z) - sum softmax(z) * z
    (verl `entropy_from_logits`).

    Logits set to -inf (e.g. by top-k filtering) are handled: their 0 * -inf terms count as 0.

    Args:
        logits: [B, T, V] (already temperature-scaled).
    Returns:
        [B, T].
    """
    probs = torch.softmax(logits, dim=-1)
    # Replace non-finite logits before the product so neither the value nor its gradient becomes NaN.
    finite_logits = torch.where(torch.isfinite(logits), logits, torch.zeros_like(logits))
    return torch.logsumexp(logits, dim=-1) - (probs * finite_logits).sum(dim=-1)


# Policy and value losses (PPO, Schulman et al. 2017) --------------------------------------------------------


def compute_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float | None = 3.0,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: int | None = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate with optional dual clip (Schulman et al. 2017; dual clip Ye et al. 2020;
    verl `compute_policy_loss_vanilla`).

    rho = exp(clamp(logp - old_logp, -20, 20));
    L^clip = max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high));
    for A < 0 and dual clip on: L = min(L^clip, -c A); times w per token when rollout IS weights are given
    (`rollout_is_weights`, veRL's argument of the same name).  Aggregated with `agg_loss`.

    Args:
        logp: [B, T] log pi_theta (carries the gradient), old_logp: [B, T] log pi_old,
        advantages: [B, T] (already whitened if wanted), mask: [B, T].
        clip_ratio_c: dual-clip constant c (> 1); None disables dual clip.
        loss_agg_mode, loss_scale_factor: passed to `agg_loss`.
        rollout_is_weights: [B, T] detached truncated importance weights pi_old / pi_rollout
            (`rollout_is_weights`), multiplied into the per-token loss before aggregation; None = 1 everywhere.
    Returns:
        (loss scalar, metrics) with detached scalar tensors: pg_clipfrac (fraction of valid tokens where the
        clipped branch is active), ppo_kl (masked mean of old_logp - logp), pg_clipfrac_lower (fraction where
        the dual clip is active).
    """
    _check_same_shape(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (or None to disable dual clip), got {clip_ratio_c}")
    log_ratio = torch.clamp(logp - old_logp, min=-20.0, max=20.0)  # verl: keeps exp() finite
    ratio = torch.exp(log_ratio)

    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    clip_losses = torch.maximum(pg_losses1, pg_losses2)
    pg_clipfrac = masked_mean((pg_losses2 > pg_losses1).to(logp.dtype), mask)

    if clip_ratio_c is None:
        pg_losses = clip_losses
        pg_clipfrac_lower = torch.zeros((), dtype=logp.dtype, device=logp.device)
    else:
        # Dual clip bounds the loss of negative-advantage tokens whose ratio exploded (Ye et al. 2020).
        pg_losses3 = -advantages * clip_ratio_c
        negative = advantages < 0
        pg_losses = torch.where(negative, torch.minimum(clip_losses, pg_losses3), clip_losses)
        pg_clipfrac_lower = masked_mean(((clip_losses > pg_losses3) & negative).to(logp.dtype), mask)

    if rollout_is_weights is not None:
        _check_same_shape(logp=logp, rollout_is_weights=rollout_is_weights)
        pg_losses = pg_losses * rollout_is_weights.detach()
    loss = agg_loss(pg_losses, mask, loss_agg_mode, loss_scale_factor)
    metrics = {
        "pg_clipfrac": pg_clipfrac.detach(),
        "ppo_kl": masked_mean(-log_ratio, mask).detach(),
        "pg_clipfrac_lower": pg_clipfrac_lower.detach(),
    }
    return loss, metrics


def logprob_diff(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mismatch between the trainer's and the rollout engine's log-probs of the sampled tokens.

    |old_logp - rollout_logp| per valid token, its max and mean over the batch (veRL logs the same comparison in
    probability space as `training/rollout_probs_diff_{max,mean}`). Both are log softmax(logits / temperature) of
    the same weights: they differ only by the engines' numerics (float32 on CPU: ~1e-6; bf16 kernels: ~1e-2).

    Args:
        old_logp: [B, T] the training forward's log-probs, rollout_logp: [B, T] the engine's, mask: [B, T].
    Returns:
        {"logprob_diff_max", "logprob_diff_mean"}: detached scalar tensors (0 for an empty mask).
    """
    _check_same_shape(old_logp=old_logp, rollout_logp=rollout_logp, mask=mask)
    valid = mask.bool()
    diff = torch.where(valid, (old_logp - rollout_logp).abs(), torch.zeros_like(old_logp)).detach()
    return {"logprob_diff_max": diff.max(), "logprob_diff_mean": masked_mean(diff, mask)}


def rollout_is_weights(
    old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, cap: float = 2.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Truncated importance sampling (TIS) weights that correct for the rollout engine's drift from the trainer
    (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training"; veRL
    `compute_rollout_correction_weights` with rollout_is=token, TRL `vllm_importance_sampling_cap`).

    w = min(exp(clamp(old_logp - rollout_logp, -20, 20)), cap), detached, 0 on padding: the tokens were drawn from
    pi_rollout but the surrogate assumes pi_old, so each token's loss is reweighted by pi_old / pi_rollout, capped
    to bound the variance.

    Args:
        old_logp: [B, T] log pi_old (the training forward), rollout_logp: [B, T] log pi_rollout (the engine),
        mask: [B, T]. cap: the truncation (veRL `rollout_is_threshold`), >= 1.
    Returns:
        (weights [B, T], metrics) with veRL's names, statistics of the weights before the cap over valid tokens:
        rollout_is_mean, rollout_is_max, rollout_is_ratio_fraction_high (fraction of tokens above the cap, i.e.
        capped), detached scalar tensors.
    Raises:
        ValueError: cap < 1 (a cap below 1 would shrink even exact tokens), or shapes that differ.
    """
    if not cap >= 1.0:
        raise ValueError(f"rollout IS cap must be >= 1, got {cap}")
    _check_same_shape(old_logp=old_logp, rollout_logp=rollout_logp, mask=mask)
    valid = mask.bool()
    log_ratio = torch.clamp(old_logp - rollout_logp, min=-20.0, max=20.0)  # verl SAFETY_BOUND
    raw = torch.where(valid, torch.exp(log_ratio), torch.zeros_like(log_ratio)).detach()
    metrics = {
        "rollout_is_mean": masked_mean(raw, mask),
        "rollout_is_max": raw.max(),
        "rollout_is_ratio_fraction_high": masked_mean((raw > cap).to(raw.dtype), mask),
    }
    return raw.clamp(max=cap), metrics


def compute_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float | None = 0.5,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (verl `compute_value_loss`): 0.5 * agg(max((v - R)^2, (v_clip - R)^2)),
    v_clip = clip(v, v_old - eps_v, v_old + eps_v).

    Args:
        values: [B, T] current critic outputs (carry the gradient), old_values: [B, T] rollout-time values,
        returns: [B, T] critic targets (GAE returns, detached), mask: [B, T].
        cliprange_value: eps_v; None disables clipping (plain 0.5 * squared error).
        loss_agg_mode, loss_scale_factor: passed to `agg_loss`.
    Returns:
        (loss scalar, {"vf_clipfrac": detached scalar}); vf_clipfrac = fraction of valid tokens where the
        clipped branch wins.
    """
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    vf_losses1 = (values - returns).square()
    if cliprange_value is None:
        vf_losses = vf_losses1
        vf_clipfrac = torch.zeros((), dtype=values.dtype, device=values.device)
    else:
        v_clipped = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
        vf_losses2 = (v_clipped - returns).square()
        vf_losses = torch.maximum(vf_losses1, vf_losses2)
        vf_clipfrac = masked_mean((vf_losses2 > vf_losses1).to(values.dtype), mask)
    loss = 0.5 * agg_loss(vf_losses, mask, loss_agg_mode, loss_scale_factor)
    return loss, {"vf_clipfrac": vf_clipfrac.detach()}


# Rewards and advantages (veRL `core_algos.py`) --------------------------------------------------------------


def build_token_rewards(
    scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards r_t = 1[t = last valid] * score - kl_coef * kl_t on valid tokens (verl: the score sits
    on the last valid response token).

    Sequences with no valid token get an all-zero row (their score has nowhere to go).

    Args:
        scores: [B] sequence scores R~, mask: [B, T],
        kl: [B, T] per-token KL estimate (or None for no KL in reward).
    Returns:
        [B, T], 0 at padded positions.
    """
    if scores.dim() != 1 or mask.dim() != 2 or scores.shape[0] != mask.shape[0]:
        raise ValueError(f"expected scores [B] and mask [B, T], got {tuple(scores.shape)}, {tuple(mask.shape)}")
    valid = mask.bool()
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    # [B] index of the last valid token, -1 for an empty row (which then matches no position).
    last = torch.where(valid, positions, torch.full_like(positions, -1)).max(dim=-1).values
    is_last = positions == last.unsqueeze(-1)  # [B, T]
    if not scores.is_floating_point():
        scores = scores.to(torch.get_default_dtype())  # integer 0/1 correctness scores
    rewards = torch.where(is_last, scores.unsqueeze(-1).expand(-1, mask.shape[1]), 0.0)
    if kl is not None:
        _check_same_shape(kl=kl, mask=mask)
        rewards = rewards - kl_coef * torch.where(valid, kl, torch.zeros_like(kl))
    return rewards


@torch.no_grad()
def gae_recursion(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    bootstrap: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The one GAE recursion (Schulman et al. 2016) behind every critic's targets: scalar `[B, T]`, ensemble
    `[B, T, K]` and quantile `[B, T, N]` values all run through it.

    delta_t = r_t + gamma b_{t+1} - V_t;  A_t = delta_t + gamma lam A_{t+1};  targets = A_t + V_t, where
    b_{t+1} = V_{t+1} (plain GAE) or `bootstrap(V_{t+1}, has_next)` (RB-PPO's contaminated bootstrap), and V
    after the last valid token is 0. Carry-through masking as veRL's `compute_gae_advantage_return`: masked
    positions pass both carries (next value, running A) through unchanged, so padding anywhere (including
    interleaved observation tokens) leaves the valid outputs unchanged; outputs at masked positions are 0.
    These are targets: no gradient flows through them.

    Args:
        token_rewards: [B, T]; values: [B, T, *E] V(s_t) aligned with token t (E = () scalar, (K,) ensemble,
        (N,) quantiles: every trailing entry gets its own recursion with the same reward); mask: [B, T].
        bootstrap: optional (next_value [B, *E], has_next [B, 1...]) -> [B, *E], the value gamma multiplies.
    Returns:
        (advantages [B, T, *E], targets [B, T, *E]), 0 at padded positions.
    Raises:
        ValueError: when values' first two dims or the mask differ from token_rewards' shape.
    """
    if values.shape[:2] != token_rewards.shape or mask.shape != token_rewards.shape:
        raise ValueError(
            f"expected token_rewards [B, T], values [B, T, ...], mask [B, T]; got "
            f"{tuple(token_rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    extra = (1,) * (values.dim() - 2)
    valid = mask.bool().reshape(*mask.shape, *extra)
    rewards = token_rewards.reshape(*token_rewards.shape, *extra)
    next_value = torch.zeros_like(values[:, 0])
    running = torch.zeros_like(values[:, 0])
    has_next = torch.zeros_like(valid[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        boot = next_value if bootstrap is None else bootstrap(next_value, has_next)
        delta = rewards[:, t] + gamma * boot - values[:, t]
        gae_t = delta + gamma * lam * running
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        has_next = has_next | valid[:, t]
        running = torch.where(valid[:, t], gae_t, running)
        advantages[:, t] = running
    advantages = torch.where(valid, advantages, torch.zeros_like(advantages))
    return advantages, torch.where(valid, advantages + values, torch.zeros_like(values))


def compute_gae(
    token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scalar GAE (verl `compute_gae_advantage_return`): `gae_recursion` on values `[B, T]`; no whitening here
    (see `masked_whiten`).

    Args:
        token_rewards: [B, T], values: [B, T] V(s_t) aligned with token t, mask: [B, T].
    Returns:
        (advantages [B, T], returns [B, T] = advantages + values), 0 at padded positions.
    """
    _check_same_shape(token_rewards=token_rewards, values=values, mask=mask)
    return gae_recursion(token_rewards, values, mask, gamma, lam)


@torch.no_grad()
def group_advantages(
    scores: torch.Tensor,
    group_index: torch.Tensor,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    leave_one_out: bool = False,
) -> torch.Tensor:
    """Outcome advantages relative to the group of responses to the same prompt (Shao et al. 2024; verl
    `compute_grpo_outcome_advantage`, `compute_rloo_outcome_advantage`).

    GRPO: (r - mean) / (std + eps), std Bessel-corrected;  Dr. GRPO (norm_by_std=False): r - mean;
    RLOO (leave_one_out=True, norm_by_std=False): G/(G-1) (r - mean) = r - mean of the other G-1 rewards.
    With both flags the leave-one-out advantage is divided by (std + eps). A group of size 1 uses mean 0 and
    std 1 (verl), so its advantage is r / (1 + eps) (or r).

    Args:
        scores: [B] sequence scores, group_index: [B] integer prompt ids (any values; equal id = same group).
    Returns:
        [B] advantages.
    """
    if scores.dim() != 1 or group_index.shape != scores.shape:
        raise ValueError(f"expected scores [B], group_index [B]; got {tuple(scores.shape)}, {tuple(group_index.shape)}")
    if not scores.is_floating_point():
        scores = scores.to(torch.get_default_dtype())
    group_ids, inverse = torch.unique(group_index, return_inverse=True)  # inverse: [B] dense ids 0..G-1
    zeros = scores.new_zeros(group_ids.numel())
    count = zeros.index_add(0, inverse, torch.ones_like(scores))
    mean = zeros.index_add(0, inverse, scores) / count
    sq_dev = zeros.index_add(0, inverse, (scores - mean[inverse]).square())
    std = torch.sqrt(sq_dev / (count - 1.0).clamp(min=1.0))
    singleton = count == 1
    mean = torch.where(singleton, torch.zeros_like(mean), mean)
    std = torch.where(singleton, torch.ones_like(std), std)

    adv = scores - mean[inverse]
    if leave_one_out:
        scale = torch.where(singleton, torch.ones_like(count), count / (count - 1.0).clamp(min=1.0))
        adv = adv * scale[inverse]
    if norm_by_std:
        adv = adv / (std[inverse] + eps)
    return adv
