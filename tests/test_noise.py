"""Reward-noise models against their closed forms: flip rates, E[R~ | R] = p + (1 - 2p) R, Youden's J, and the
unbiased backward correction (Natarajan et al. 2013)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from dvpo_lab.noise import (
    AsymmetricFlipNoise,
    FlipNoise,
    GaussianNoise,
    JudgeNoise,
    NoNoise,
    backward_correct,
    build_noise,
    counter_uniform,
)

N = 100_000


def _clean(n: int = N, p1: float = 0.3, seed: int = 0) -> torch.Tensor:
    """Binary clean rewards with about ``p1`` ones (their own generator, unrelated to the noise's)."""
    # statistics below run in numpy: on a busy 2-core machine each multi-threaded torch op on 10^5
    # elements can stall for ~15 ms
    return torch.from_numpy((np.random.default_rng(seed).random(n) < p1).astype(np.float32))


def _apply(noise, clean: torch.Tensor, seed: int = 1, step: int = 0, **kw):  # type: ignore[no-untyped-def]
    groups = kw.pop("group_index", torch.arange(clean.numel()) // 8)
    return noise.apply(clean, seed=seed, step=step, group_index=groups, **kw)


@pytest.mark.parametrize("p", [0.1, 0.2, 0.3, 0.5])
def test_realised_flip_rate_close_to_p(p: float) -> None:
    clean = _clean()
    noisy, m = _apply(FlipNoise(p), clean)
    c, r_tilde = clean.numpy(), noisy.numpy()
    flip_rate = float((r_tilde != c).mean())
    assert abs(flip_rate - p) < 0.005
    assert m["noise/flip_rate"] == pytest.approx(flip_rate)
    # closed form: E[R~ | R] = p + (1 - 2p) R and J = 1 - 2p
    for r in (0.0, 1.0):
        assert float(r_tilde[c == r].mean()) == pytest.approx(p + (1 - 2 * p) * r, abs=0.01)
    assert m["noise/youden_j"] == pytest.approx(1 - 2 * p, abs=0.012)


def test_flips_independent_of_clean_value() -> None:
    clean = _clean(p1=0.5)
    noisy, m = _apply(FlipNoise(0.2), clean)
    assert abs(m["noise/fp_rate"] - m["noise/fn_rate"]) < 0.012
    # the flip pattern is the same whatever the rewards were: it never looks at the responses
    flipped = 1 - clean
    flips_a = noisy.numpy() != clean.numpy()
    flips_b = _apply(FlipNoise(0.2), flipped)[0].numpy() != flipped.numpy()
    assert np.array_equal(flips_a, flips_b)


def test_same_seed_same_flips_other_step_or_seed_differs() -> None:
    clean = _clean(1000)
    a, _ = _apply(FlipNoise(0.3), clean, seed=7, step=3)
    b, _ = _apply(FlipNoise(0.3), clean, seed=7, step=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, _apply(FlipNoise(0.3), clean, seed=7, step=4)[0])
    assert not torch.equal(a, _apply(FlipNoise(0.3), clean, seed=8, step=3)[0])


def test_sample_offset_matches_one_big_batch() -> None:
    # two DDP ranks with offsets reproduce the single-process draws exactly
    clean = _clean(1000)
    whole, _ = _apply(FlipNoise(0.4), clean, step=5)
    g = torch.arange(1000) // 8
    lo, _ = FlipNoise(0.4).apply(clean[:600], seed=1, step=5, group_index=g[:600], sample_offset=0)
    hi, _ = FlipNoise(0.4).apply(clean[600:], seed=1, step=5, group_index=g[600:], sample_offset=600)
    assert torch.equal(torch.cat([lo, hi]), whole)


def test_p_zero_and_no_noise_leave_rewards_untouched() -> None:
    clean = _clean(5000)
    for noise in (FlipNoise(0.0), NoNoise(), build_noise("none")):
        noisy, m = _apply(noise, clean)
        assert torch.equal(noisy, clean) and noisy.dtype == clean.dtype
        assert m["noise/flip_rate"] == 0.0 and m["noise/youden_j"] == 1.0
    assert torch.equal(_apply(FlipNoise(1.0), clean)[0], 1 - clean)


def test_group_granularity_flips_whole_groups() -> None:
    clean = _clean(8000, p1=0.5)
    groups = torch.arange(8000) // 8
    noisy, _ = _apply(FlipNoise(0.2, granularity="group"), clean, group_index=groups)
    flips = (noisy != clean).view(1000, 8)
    assert bool((flips.all(1) | ~flips.any(1)).all())  # every group all-flipped or untouched
    assert abs(float(flips[:, 0].float().mean()) - 0.2) < 0.04
    # keyed by group id, not by position: shuffling the batch moves each group's flip with it
    perm = torch.randperm(8000, generator=torch.Generator().manual_seed(0))
    shuffled, _ = _apply(FlipNoise(0.2, granularity="group"), clean[perm], group_index=groups[perm])
    assert torch.equal(shuffled, noisy[perm])


def test_asymmetric_rates_and_backward_correction() -> None:
    fp, fn = 0.1, 0.3
    clean = _clean(p1=0.4)
    noisy, m = _apply(build_noise("asym_flip", fp=fp, fn=fn), clean)
    assert m["noise/fp_rate"] == pytest.approx(fp, abs=0.006)
    assert m["noise/fn_rate"] == pytest.approx(fn, abs=0.008)
    assert m["noise/youden_j"] == pytest.approx(1 - fp - fn, abs=0.012)
    # Natarajan et al. 2013: the backward-corrected reward is unbiased for the clean mean
    clean_mean = float(clean.numpy().mean())
    assert float(backward_correct(noisy, fp, fn).numpy().mean()) == pytest.approx(clean_mean, abs=0.01)
    sym, _ = _apply(FlipNoise(0.2), clean)
    assert float(backward_correct(sym, 0.2, 0.2).numpy().mean()) == pytest.approx(clean_mean, abs=0.01)
    with pytest.raises(ValueError, match="J = 0"):
        backward_correct(noisy, 0.5, 0.5)


def test_metrics_fall_back_to_configured_rates_for_absent_class() -> None:
    _, m = _apply(FlipNoise(0.25), torch.ones(64))
    assert m["noise/fp_rate"] == 0.25 and all(math.isfinite(v) for v in m.values())
    _, m = _apply(AsymmetricFlipNoise(0.1, 0.2), torch.zeros(64))
    assert m["noise/fn_rate"] == 0.2
    _, m = _apply(FlipNoise(0.25), torch.zeros(0))
    assert m["noise/flip_rate"] == 0.0 and m["noise/youden_j"] == 0.5


def test_draws_are_uniform_and_fast() -> None:
    t0 = time.perf_counter()
    u = counter_uniform(3, 4, np.arange(N))
    assert time.perf_counter() - t0 < 0.5  # milliseconds in practice; loose for a shared machine
    assert u.min() >= 0.0 and u.max() < 1.0
    assert np.histogram(u, bins=10, range=(0, 1))[0].min() > N / 10 * 0.95
    assert np.array_equal(u, counter_uniform(3, 4, np.arange(N)))
    assert np.isfinite(counter_uniform(-1, -2, np.array([-5, 2**62]))).all()


@pytest.mark.parametrize(
    "kind, kwargs, match",
    [
        ("gaussian", {}, "unknown noise kind 'gaussian'.*flip"),
        ("judge", {"acc": 1.5}, "noise.acc"),
        ("gauss", {"sigma": -0.1}, "noise.sigma"),
        ("majority_vote", {"task": None}, "needs the task"),
        ("flip", {"p": 1.2}, "noise.p"),
        ("flip", {"p": -0.1}, "noise.p"),
        ("flip", {"p": 0.2, "granularity": "token"}, "granularity"),
        ("asym_flip", {"fp": 0.1, "fn": 2}, "noise.fn"),
    ],
)
def test_bad_configs_fail_clearly(kind: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_noise(kind, **kwargs)


def test_rejects_non_binary_or_misshaped_input() -> None:
    with pytest.raises(ValueError, match="binary"):
        _apply(FlipNoise(0.1), torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match=r"\[B\]"):
        _apply(FlipNoise(0.1), torch.zeros(2, 2), group_index=torch.zeros(4))
    with pytest.raises(ValueError, match="group_index"):
        _apply(FlipNoise(0.1, granularity="group"), torch.zeros(4), group_index=torch.zeros(3))


# --- asymmetric FP/FN from its config, judge, Gaussian --------------------------------------------------------


def _noise_from_config(option: str, task=None):  # type: ignore[no-untyped-def]
    from dvpo_lab.run import make_noise
    from tests.conftest import compose_cfg

    return make_noise(compose_cfg([f"noise={option}"]), task)


def test_asym_config_realises_its_fp_and_fn_rates() -> None:
    noise = _noise_from_config("asym_fp0.1_fn0.3")
    assert isinstance(noise, AsymmetricFlipNoise) and (noise.fp, noise.fn) == (0.1, 0.3)
    clean = _clean(p1=0.5)
    noisy, m = _apply(noise, clean)
    c, r = clean.numpy(), noisy.numpy()
    assert float(r[c == 0].mean()) == pytest.approx(0.1, abs=0.005)  # P(R~=1 | R=0)
    assert float(1 - r[c == 1].mean()) == pytest.approx(0.3, abs=0.006)  # P(R~=0 | R=1)
    assert m["noise/youden_j"] == pytest.approx(0.6, abs=0.01)
    assert torch.equal(_apply(noise, clean)[0], noisy)  # same seed, same noise


def test_judge_reports_the_verdict_with_its_accuracy() -> None:
    noise = _noise_from_config("rm0.72")
    assert isinstance(noise, JudgeNoise) and noise.acc == 0.72
    clean = _clean(p1=0.4)
    noisy, m = _apply(noise, clean)
    realised = float((noisy.numpy() == clean.numpy()).mean())
    assert realised == pytest.approx(0.72, abs=0.005) and m["noise/judge_acc"] == pytest.approx(realised)
    assert m["noise/fp_rate"] == pytest.approx(0.28, abs=0.006) and m["noise/fn_rate"] == pytest.approx(0.28, abs=0.006)
    assert m["noise/youden_j"] == pytest.approx(2 * 0.72 - 1, abs=0.012)
    assert torch.equal(_apply(noise, clean, seed=3, step=2)[0], _apply(JudgeNoise(0.72), clean, seed=3, step=2)[0])
    assert not torch.equal(noisy, _apply(noise, clean, step=1)[0])
    assert torch.equal(_apply(JudgeNoise(1.0), clean)[0], clean)  # a perfect judge changes nothing
    # per sample, even though flips are keyed like FlipNoise: a group never flips as one
    flips = (noisy != clean).view(-1, 8)
    assert float((flips.all(1) | ~flips.any(1)).float().mean()) < 0.1


def test_gaussian_adds_seeded_normal_noise() -> None:
    sigma = 0.3
    noise = _noise_from_config("gauss0.3")
    assert isinstance(noise, GaussianNoise) and noise.sigma == sigma
    clean = _clean(p1=0.5)
    noisy, m = _apply(noise, clean)
    delta = noisy.numpy().astype(np.float64) - clean.numpy()
    assert abs(delta.mean()) < 0.005 and delta.std() == pytest.approx(sigma, abs=0.005)
    assert m["noise/gauss_mean"] == pytest.approx(delta.mean(), abs=1e-6)
    assert m["noise/gauss_sd"] == pytest.approx(delta.std(), abs=1e-6)
    # normal, not merely the right two moments: the tails match too
    assert float((np.abs(delta) > 2 * sigma).mean()) == pytest.approx(0.0455, abs=0.003)
    # FP/FN at threshold 0.5: P(N(0, sigma^2) >= 0.5) = 1 - Phi(0.5 / sigma)
    expected = 0.5 * math.erfc(0.5 / (sigma * math.sqrt(2)))
    assert m["noise/fp_rate"] == pytest.approx(expected, abs=0.004)
    assert m["noise/fn_rate"] == pytest.approx(expected, abs=0.004)
    assert m["noise/youden_j"] == pytest.approx(1 - 2 * expected, abs=0.008)
    assert torch.equal(_apply(noise, clean)[0], noisy)
    assert not torch.equal(_apply(noise, clean, step=1)[0], noisy)
    lo, _ = noise.apply(clean[:600], seed=1, step=0, group_index=torch.zeros(600))
    hi, _ = noise.apply(clean[600:1000], seed=1, step=0, group_index=torch.zeros(400), sample_offset=600)
    assert torch.equal(torch.cat([lo, hi]), noisy[:1000])
    untouched, m0 = _apply(GaussianNoise(0.0), clean)
    assert torch.equal(untouched, clean) and m0["noise/flip_rate"] == 0.0
