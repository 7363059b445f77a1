"""Reward-noise models against their closed forms: flip rates, E[R~ | R] = p + (1 - 2p) R, Youden's J, and the
unbiased backward correction (Natarajan et al. 2013); built from their `_target_` configs, a user's own model
from a folder outside the package, and seeded outputs equal to those recorded before the `noise/` split."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import open_dict

from dvpo_lab.config import CONF_DIR, ConfigError
from dvpo_lab.noise import (
    AsymmetricFlipNoise,
    FlipNoise,
    GaussianNoise,
    JudgeNoise,
    MajorityVoteNoise,
    NoNoise,
    RewardNoise,
    backward_correct,
)
from tests.conftest import compose_cfg, run_cli

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
    for noise in (FlipNoise(0.0), NoNoise()):
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
    noisy, m = _apply(AsymmetricFlipNoise(fp=fp, fn=fn), clean)
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


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (JudgeNoise, {"acc": 1.5}, "noise.acc"),
        (GaussianNoise, {"sigma": -0.1}, "noise.sigma"),
        (MajorityVoteNoise, {"task": None}, "needs the task"),
        (FlipNoise, {"p": 1.2}, "noise.p"),
        (FlipNoise, {"p": -0.1}, "noise.p"),
        (FlipNoise, {"p": 0.2, "granularity": "token"}, "granularity"),
        (AsymmetricFlipNoise, {"fp": 0.1, "fn": 2}, "noise.fn"),
    ],
)
def test_bad_arguments_fail_clearly(cls: type, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


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


# --- built from config: `_target_` + arguments + `name` -------------------------------------------------------

NOISE_OPTIONS = sorted(p.stem for p in (CONF_DIR / "noise").glob("*.yaml"))


def test_every_option_builds_its_target_class_and_is_named_after_its_file() -> None:
    from dvpo_lab.run import make_noise
    from dvpo_lab.tasks.arith import ArithTask

    task = ArithTask(digits=2, n_test=5, n_sft=1)
    assert len(NOISE_OPTIONS) == 8
    for option in NOISE_OPTIONS:
        cfg = compose_cfg([f"noise={option}"])
        noise = make_noise(cfg, task)
        module, _, name = cfg.noise._target_.rpartition(".")
        assert module == "dvpo_lab.noise" and type(noise).__name__ == name, option
        assert cfg.noise.name == option  # the run's label: run folder, tags, report rows
        assert getattr(noise, "task", task) is task  # majority_vote gets the run's own task, not a copy


def test_listed_knobs_equal_the_constructor_defaults() -> None:
    """A YAML lists a knob the class has a default for only so that `noise.KEY=...` can override it; its value
    is that default (one source: the constructor)."""
    import inspect

    from hydra.utils import get_object

    checked = 0
    for option in NOISE_OPTIONS:
        node = yaml.safe_load((CONF_DIR / "noise" / f"{option}.yaml").read_text())
        params = inspect.signature(get_object(node["_target_"])).parameters
        for key, value in node.items():
            if key in params and params[key].default is not inspect.Parameter.empty:
                assert value == params[key].default, (option, key)
                checked += 1
    assert checked >= 6  # granularity x 4, majority_vote's k and temperature


def test_gcr_reward_takes_only_noise_that_reads_fractions() -> None:
    from dvpo_lab.run import make_noise

    gcr = ["task=dialogue", "task.reward=gcr"]
    assert isinstance(make_noise(compose_cfg([*gcr, "noise=none"])), NoNoise)
    for option in ("flip0.2", "gauss0.3"):
        with pytest.raises(ConfigError, match=f"noise={option} flips a binary reward but task.reward=gcr"):
            make_noise(compose_cfg([*gcr, f"noise={option}"]))


def test_constructor_refusals_and_the_task_key_are_one_line_config_errors() -> None:
    from dvpo_lab.run import make_noise

    cfg = compose_cfg(["noise=flip0.2"])
    cfg.noise.granularity = "token"  # past the start checks, as a value only the class knows to refuse
    with pytest.raises(ConfigError) as e:
        make_noise(cfg)
    assert "noise=flip0.2 (dvpo_lab.noise.FlipNoise)" in str(e.value) and "noise.granularity" in str(e.value)
    assert "\n" not in str(e.value)
    cfg = compose_cfg(["noise=majority_vote", "+noise.task=3"])
    with pytest.raises(ConfigError, match="noise.task is not a config key"):
        make_noise(cfg, None)


def test_start_checks_walk_the_noise_node_against_its_constructor() -> None:
    from dvpo_lab.checks import check_keys

    check_keys(compose_cfg(["noise=majority_vote"]))  # name, _target_, k, temperature: all accepted
    with pytest.raises(ConfigError, match=r"noise.fnn=0.2 is not a config key \(did you mean noise.fn\?"):
        check_keys(compose_cfg(["noise=asym_fp0.1_fn0.3", "+noise.fnn=0.2"]))
    cfg = compose_cfg(["noise=none"])
    with open_dict(cfg):
        cfg.noise._target_ = "dvpo_lab.noise.NoSuchNoise"
    with pytest.raises(ConfigError, match="noise._target_=dvpo_lab.noise.NoSuchNoise cannot be imported"):
        check_keys(cfg)


def test_misspelt_noise_key_fails_at_start_with_one_line(tmp_path: Path) -> None:
    from tests.test_start_checks import failed_with

    failed_with(run_cli(["debug=smoke", "logger=csv", "noise.pp=0.3"], tmp_path), "noise.pp")


USER_NOISE = '''"""A user's own noise model: every training reward replaced by a constant."""

import torch

from dvpo_lab.noise import RewardNoise, noise_metrics


class ConstantNoise(RewardNoise):
    needs_binary_scores = False  # takes any clean score

    def __init__(self, value: float) -> None:
        self.value = value

    def apply(self, clean, *, seed, step, group_index, sample_offset=0, responses=None, problems=None):
        noisy = torch.full_like(clean, self.value)
        metrics = noise_metrics(clean.numpy() >= 0.5, noisy.numpy() >= 0.5, 0.0, 0.0)
        return noisy, {**metrics, "noise/constant": self.value}
'''


def test_user_noise_class_from_its_own_folder_trains(tmp_path: Path, cache_dir: Path, monkeypatch) -> None:
    """One class in the user's module and one YAML in the user's config folder, no edit to the package: found
    through `hydra.searchpath` and PYTHONPATH, built by `_target_`, and what training sees (3 RL steps)."""
    code, configs = tmp_path / "code", tmp_path / "my_configs"
    (configs / "noise").mkdir(parents=True)
    code.mkdir()
    (code / "my_noise_model.py").write_text(USER_NOISE)
    (configs / "noise" / "my_noise.yaml").write_text(
        "_target_: my_noise_model.ConstantNoise\nname: my_noise\nvalue: 0.25\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(code))
    proc = run_cli(
        ["debug=smoke", "logger=csv", "noise=my_noise", f"hydra.searchpath=[file://{configs}]", "algo=grpo"],
        tmp_path,
        cache_dir,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    (run_dir,) = tmp_path.glob("*/runs/*_my_noise_s1")  # noise.name labels the run folder
    with (run_dir / "csv" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("critic/score/mean")]
    assert len(rows) == 3
    for r in rows:
        assert float(r["critic/score/mean"]) == 0.25 and float(r["noise/constant"]) == 0.25
        assert float(r["critic/score_clean/mean"]) in (0.0, 0.25, 0.5, 0.75, 1.0)  # 4 responses, binary


# --- seeded outputs: the same numbers as before the split into noise/ and seeding.py ---------------------------

# recorded from the single-module dvpo_lab/noise.py: apply(CLEAN, seed=2, step=3, group_index=[0]*4 + [1]*4,
# sample_offset=16)
CLEAN = [0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
RECORDED = [
    (FlipNoise(0.3), [1, 1, 1, 0, 1, 1, 1, 0], {"noise/flip_rate": 0.5, "noise/fp_rate": 0.75}),
    (FlipNoise(0.4, granularity="group"), [1, 0, 0, 1, 0, 1, 1, 0], {"noise/flip_rate": 1.0}),
    (AsymmetricFlipNoise(0.1, 0.3), [1, 1, 1, 0, 1, 0, 0, 0], {"noise/fp_rate": 0.25, "noise/fn_rate": 0.25}),
    (JudgeNoise(0.72), [1, 1, 1, 0, 1, 1, 0, 0], {"noise/judge_acc": 0.625, "noise/youden_j": 0.25}),
    (
        GaussianNoise(0.3),
        [
            0.2884380519390106,
            0.9124361872673035,
            0.7025554776191711,
            0.2685365080833435,
            0.7463687658309937,
            0.25796544551849365,
            -0.5065503120422363,
            1.2126765251159668,
        ],
        {"noise/gauss_mean": -0.014696661379477297, "noise/gauss_sd": 0.2920660499693962},
    ),
]


@pytest.mark.parametrize("noise, expected, metrics", RECORDED, ids=["flip", "flip_group", "asym", "judge", "gauss"])
def test_seeded_outputs_equal_the_recorded_ones(noise: RewardNoise, expected: list, metrics: dict) -> None:
    out, m = noise.apply(torch.tensor(CLEAN), seed=2, step=3, group_index=torch.arange(8) // 4, sample_offset=16)
    assert out.tolist() == expected
    for k, v in metrics.items():
        assert m[k] == v, k
