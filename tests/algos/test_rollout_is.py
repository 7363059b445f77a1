"""Engine-vs-trainer log-prob mismatch (`rollout/logprob_diff_*`) and truncated importance sampling
(`algo.rollout_is`): the pure functions on hand-made tensors, then short `debug=smoke` runs that log them, and the
start check that refuses rollout IS without engine log-probs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from dvpo_lab.algos.core import agg_loss, compute_policy_loss, logprob_diff, rollout_is_weights
from dvpo_lab.config import ConfigError
from dvpo_lab.rollout import FastSampler
from dvpo_lab.run import run

DIFF_KEYS = ("rollout/logprob_diff_max", "rollout/logprob_diff_mean")
IS_KEYS = ("rollout_corr/rollout_is_mean", "rollout_corr/rollout_is_max", "rollout_corr/rollout_is_ratio_fraction_high")


# ------------------------------------------------------------------------------------ pure functions
def test_weights_are_the_capped_ratio_with_verl_metrics():
    old = torch.tensor([[0.0, math.log(1.5), math.log(3.0), -1.0]])
    rollout = torch.tensor([[0.0, 0.0, 0.0, 5.0]])  # last column is padding: its ratio would be e^-6
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w, m = rollout_is_weights(old, rollout, mask, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 1.5, 2.0, 0.0]]))  # min(pi_old / pi_rollout, cap), 0 on pad
    # statistics of the weights before the cap, over valid tokens (veRL compute_is_metrics, token level)
    assert float(m["rollout_is_mean"]) == pytest.approx((1.0 + 1.5 + 3.0) / 3)
    assert float(m["rollout_is_max"]) == pytest.approx(3.0)
    assert float(m["rollout_is_ratio_fraction_high"]) == pytest.approx(1 / 3)
    assert not w.requires_grad


def test_weights_are_detached_and_bounded_for_huge_ratios():
    old = torch.tensor([[100.0, -100.0]], requires_grad=True)
    w, m = rollout_is_weights(old, torch.zeros(1, 2), torch.ones(1, 2), cap=5.0)
    assert not w.requires_grad
    torch.testing.assert_close(w, torch.tensor([[5.0, math.exp(-20.0)]]))  # exp of the log-ratio clamped to 20
    assert math.isfinite(float(m["rollout_is_max"]))


@pytest.mark.parametrize("cap", [0.5, float("nan")])
def test_cap_below_one_is_refused(cap):
    with pytest.raises(ValueError, match="cap"):
        rollout_is_weights(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), cap=cap)


def test_logprob_diff_reads_valid_tokens_only():
    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, 7.0, 7.0]])
    rollout = torch.tensor([[-1.1, -2.0, -2.7], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # row 1's padding differs by 7: ignored
    d = logprob_diff(old, rollout, mask)
    assert float(d["logprob_diff_max"]) == pytest.approx(0.3)
    assert float(d["logprob_diff_mean"]) == pytest.approx((0.1 + 0.0 + 0.3 + 0.0) / 4)


def _loss_inputs():
    g = torch.Generator().manual_seed(0)
    logp = (torch.randn(3, 5, generator=g) * 0.1 - 1.0).requires_grad_()
    old = logp.detach() + torch.randn(3, 5, generator=g) * 0.1
    adv = torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2, [1.0] * 4 + [0.0]])
    return logp, old, adv, mask


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_unit_weights_leave_the_loss_and_its_gradient_unchanged(mode):
    logp, old, adv, mask = _loss_inputs()
    plain, pm = compute_policy_loss(logp, old, adv, mask, loss_agg_mode=mode, loss_scale_factor=8)
    (g_plain,) = torch.autograd.grad(plain, logp)
    ones, om = compute_policy_loss(
        logp, old, adv, mask, loss_agg_mode=mode, loss_scale_factor=8, rollout_is_weights=torch.ones(3, 5)
    )
    (g_ones,) = torch.autograd.grad(ones, logp)
    assert torch.equal(plain, ones) and torch.equal(g_plain, g_ones)
    assert {k: float(v) for k, v in pm.items()} == {k: float(v) for k, v in om.items()}


def test_weights_scale_each_token_loss_as_computed_by_hand():
    logp, old, adv, mask = _loss_inputs()
    w = torch.tensor([[0.5, 1.0, 2.0, 1.5, 0.25]]).expand(3, 5).contiguous()
    loss, _ = compute_policy_loss(logp, old, adv, mask, 0.2, 0.2, 3.0, "token-mean", rollout_is_weights=w)
    # by hand: the clipped surrogate with dual clip per token (PPO, Ye et al.), times w, token mean
    ratio = torch.exp(logp - old)
    clip = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
    per_token = torch.where(adv < 0, torch.minimum(clip, -adv * 3.0), clip)
    expected = (per_token * w * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected)
    # a constant weight scales the loss by that constant
    half, _ = compute_policy_loss(logp, old, adv, mask, rollout_is_weights=torch.full((3, 5), 0.5))
    plain, _ = compute_policy_loss(logp, old, adv, mask)
    torch.testing.assert_close(half, 0.5 * plain)
    # and no gradient flows into the weights
    wg = w.clone().requires_grad_()
    out, _ = compute_policy_loss(logp, old, adv, mask, rollout_is_weights=wg)
    out.backward()
    assert wg.grad is None
    assert agg_loss(per_token * w, mask, "token-mean").item() == pytest.approx(loss.item())


# ------------------------------------------------------------------------------------ runs
def _steps(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return [r for r in csv.DictReader(f) if r.get("training/step")]


def test_recomputed_old_logprobs_log_the_mismatch(smoke_cfg):
    """fp32 fast sampler vs the training forward: the same function of the same weights, ~1e-6 apart."""
    cfg = smoke_cfg("algo=grpo", "rollout.reuse_sampler_logprobs=false")
    run(cfg)
    rows = _steps(Path(cfg.paths.output_dir))
    assert len(rows) == 3
    for r in rows:
        d_max, d_mean = float(r[DIFF_KEYS[0]]), float(r[DIFF_KEYS[1]])
        assert 0.0 <= d_mean <= d_max < 1e-4, (d_max, d_mean)
        assert not any(r.get(k) for k in IS_KEYS)  # rollout_is is off: no weights, no IS metrics
    print("measured rollout/logprob_diff_max per step:", [r[DIFF_KEYS[0]] for r in rows])


def test_reused_logprobs_log_no_mismatch(smoke_cfg):
    """The default (fast sampler, log-probs reused as the old ones): nothing to compare, no made-up 0 logged."""
    cfg = smoke_cfg("algo=grpo", "total_steps=1", "eval_every=1")
    run(cfg)
    rows = _steps(Path(cfg.paths.output_dir))
    assert rows and all(not r.get(k) for r in rows for k in (*DIFF_KEYS, *IS_KEYS))


def test_rollout_is_logs_its_weights(smoke_cfg):
    cfg = smoke_cfg("algo=ppo", "rollout.reuse_sampler_logprobs=false", "algo.rollout_is.enabled=true")
    run(cfg)
    rows = _steps(Path(cfg.paths.output_dir))
    assert len(rows) == 3
    for r in rows:
        mean, wmax, high = (float(r[k]) for k in IS_KEYS)
        # fp32: pi_old / pi_rollout = exp(+-1e-6), nothing reaches the cap of 2
        assert abs(mean - 1) < 1e-4 and abs(wmax - 1) < 1e-4 and high == 0.0, (mean, wmax, high)
        assert float(r[DIFF_KEYS[0]]) < 1e-4
        assert math.isfinite(float(r["actor/pg_loss"]))


class ShiftedSampler(FastSampler):
    """The fast sampler reporting its log-probs plus `shift`: a user's engine (`rollout.engine._target_`) whose
    numerics drift from the trainer's by a known amount, so that pi_old / pi_rollout = exp(-shift) on every token."""

    def __init__(self, shift: float = 0.0) -> None:
        self.shift = shift

    def generate(self, *args, **kwargs):
        tokens, logp = super().generate(*args, **kwargs)
        return tokens, (logp + self.shift if logp is not None else None)


def test_rollout_is_weights_reach_the_actor_loss(smoke_cfg):
    """An engine whose log-probs are log(3) too low: w = 3, capped to 2, so the actor's gradient is twice the
    uncorrected one (same rollout, same weights, one minibatch; actor/grad_norm is measured before clipping)."""
    grad_norm, rows = {}, {}
    for enabled in (False, True):
        cfg = smoke_cfg(
            "algo=ppo",
            "noise=gauss0.3",  # a continuous training reward: advantages, hence gradients, are never all zero
            "total_steps=1",
            "eval_every=1",
            "rollout.minibatch_size=4",
            "rollout.reuse_sampler_logprobs=false",
            f"algo.rollout_is.enabled={str(enabled).lower()}",
            name=f"is_{enabled}",
        )
        with open_dict(cfg):
            cfg.rollout.engine = {"_target_": f"{__name__}.ShiftedSampler", "shift": -math.log(3.0)}
        run(cfg)
        (rows[enabled],) = _steps(Path(cfg.paths.output_dir))
        grad_norm[enabled] = float(rows[enabled]["actor/grad_norm"])
    on = rows[True]
    assert float(on["rollout/logprob_diff_mean"]) == pytest.approx(math.log(3.0), abs=1e-4)
    assert float(on["rollout_corr/rollout_is_mean"]) == pytest.approx(3.0, rel=1e-4)  # before the cap (veRL)
    assert float(on["rollout_corr/rollout_is_ratio_fraction_high"]) == 1.0  # every token capped
    assert grad_norm[False] > 0
    assert grad_norm[True] == pytest.approx(2.0 * grad_norm[False], rel=1e-4)


@pytest.mark.parametrize(
    ("overrides", "fix"),
    [
        (["rollout.engine=hf"], "rollout.engine=fast"),
        ([], "rollout.reuse_sampler_logprobs=false"),  # fast sampler with its log-probs reused (the default)
        (["rollout.reuse_sampler_logprobs=false", "algo.rollout_is.cap=0.5"], "algo.rollout_is.cap"),
    ],
    ids=["hf_engine", "fast_reused", "cap_below_1"],
)
def test_start_check_refuses_rollout_is_without_engine_logprobs(smoke_cfg, overrides, fix):
    cfg = smoke_cfg("algo.rollout_is.enabled=true", *overrides)
    with pytest.raises(ConfigError, match=fix.replace(".", r"\.")) as e:
        run(cfg)
    assert "\n" not in str(e.value)
    assert not (Path(cfg.paths.output_dir) / "csv").exists()  # refused before any training
