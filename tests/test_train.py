"""End to end on the real tiny model: smoke runs per algorithm, reproducibility, NaN handling, GSM8K path."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from dvpo_lab import report
from dvpo_lab.models.build import build_policy, build_tokenizer
from dvpo_lab.run import run
from tests.conftest import SHARED_GSM8K

TIMING_PREFIXES = ("timing_s/", "perf/")


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "csv" / "metrics.csv"
    assert path.exists(), f"no metrics.csv in {run_dir}"
    with path.open() as f:
        return list(csv.DictReader(f))


def training_rows(rows: list[dict[str, str]]) -> dict[int, dict[str, float]]:
    """RL-step rows keyed by step, timing columns dropped (they differ run to run)."""
    out: dict[int, dict[str, float]] = {}
    for r in rows:
        if r.get("training/step"):
            vals = {k: float(v) for k, v in r.items() if v != "" and not k.startswith(TIMING_PREFIXES)}
            out[int(float(r["training/step"]))] = vals
    return out


ALGOS = ["dvpo", "ppo", "rbppo", "grpo", "dr_grpo", "rloo", "reinforce_pp"]
CRITIC_KEYS = {
    "ppo": ("critic/vf_loss", "critic/vf_explained_var", "critic/vf_clipfrac"),
    "rbppo": ("critic/vf_loss", "critic/head_disagreement", "critic/vf_explained_var"),
    "dvpo": (
        "critic/vf_loss",
        "critic/loss_qr",
        "critic/loss_cons",
        "critic/loss_cvar",
        "critic/loss_gain",
        "critic/loss_shift",
        "critic/loss_shape",
        "critic/loss_curv",
        "critic/quantile_spread_low",
        "critic/quantile_spread_up",
        "critic/head_disagreement",
        "critic/crossed_frac",
        "critic/vf_explained_var",
    ),
}


@pytest.mark.parametrize("algo", ALGOS)
def test_every_algorithm_trains_8_steps_with_finite_metrics(smoke_cfg, algo):
    cfg = smoke_cfg(
        f"algo={algo}",
        "noise=flip0.2",
        "total_steps=8",
        "eval_every=4",
        "ckpt_every=4",
        *(["critic.n_quantiles=16"] if algo == "dvpo" else []),
    )  # a key of the quantile critic only
    out = Path(cfg.paths.output_dir)
    run(cfg)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == algo and summary["total_steps"] == cfg.total_steps
    assert [h["step"] for h in summary["history"]][0] == 0 and summary["history"][-1]["step"] == cfg.total_steps

    steps = training_rows(read_metrics(out))
    assert sorted(steps) == list(range(cfg.total_steps))
    for row in steps.values():
        assert all(math.isfinite(v) for v in row.values()), row
        for key in (
            "actor/pg_loss",
            "actor/grad_norm",
            "critic/score/mean",
            "critic/score_clean/mean",
            "noise/flip_rate",
            "response_length/mean",
        ):
            assert key in row, f"{key} missing from {sorted(row)}"
        for key in CRITIC_KEYS.get(algo, ()):
            assert key in row, f"{key} missing from {sorted(row)}"
        if algo not in CRITIC_KEYS:
            assert "critic/vf_loss" not in row
        if algo in ("grpo", "dr_grpo", "rloo"):
            assert "actor/kl_loss" in row
        if algo == "reinforce_pp":
            assert "actor/reward_kl_penalty" in row

    # parameters moved away from the warm-start
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    start = build_policy(cfg.model, build_tokenizer(cfg.model), _warm_dir(cfg)).state_dict()
    moved = [k for k, v in start.items() if not torch.equal(v, last[f"policy.{k}"])]
    assert len(moved) > len(start) // 2, f"only {len(moved)}/{len(start)} policy tensors changed"


def _warm_dir(cfg) -> str:
    from dvpo_lab.sft import warm_start_key

    return str(Path(cfg.paths.cache_dir) / "warmstart" / warm_start_key(cfg))


def test_same_seed_same_metrics(smoke_cfg, capsys):
    runs = []
    for name in ("a", "b"):
        cfg = smoke_cfg("algo=ppo", "noise=flip0.2", "seed=7", name=name)
        run(cfg)
        runs.append(training_rows(read_metrics(Path(cfg.paths.output_dir))))
    assert runs[0] == runs[1]
    other = smoke_cfg("algo=ppo", "noise=flip0.2", "seed=8", name="c")
    run(other)
    assert training_rows(read_metrics(Path(other.paths.output_dir))) != runs[0]

    report.main([str(Path(other.paths.output_dir).parent)])  # the three runs above, aggregated
    out = capsys.readouterr().out
    assert "| arith_teacher | ppo | flip0.2 | 3 | 3 |" in out, out  # 3 runs (seeds 7, 7, 8) of 3 RL steps


def test_nan_loss_stops_and_keeps_checkpoint(smoke_cfg):
    """A diverging run stops with an error naming the term; the last good checkpoint stays on disk."""
    cfg = smoke_cfg("algo=grpo", "algo.actor_lr=1e12", "algo.grad_clip=1e30", "total_steps=6", "ckpt_every=1")
    with pytest.raises(FloatingPointError) as e:
        run(cfg)
    msg = str(e.value)
    assert any(
        term in msg
        for term in ("actor/pg_loss", "actor/kl_loss", "actor/entropy", "gradient norm", "parameters became non-finite")
    )
    assert "checkpoint" in msg
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    state = torch.load(ckpt, weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


@pytest.mark.skipif(not SHARED_GSM8K.exists(), reason=f"{SHARED_GSM8K} absent (only on the project's machines)")
def test_gsm8k_path_runs_on_the_tiny_model(smoke_cfg):
    cfg = smoke_cfg(
        "task=gsm8k",
        f"task.data_dir={SHARED_GSM8K}",
        "task.max_train=64",
        "task.max_test=4",
        "task.max_response_len=24",
        "total_steps=2",
        "eval_every=2",
    )
    run(cfg)
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["task"] == "gsm8k" and 0.0 <= summary["final/val_acc"] <= 1.0


def test_wandb_offline_logger(smoke_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = smoke_cfg("logger=many", "total_steps=2", "eval_every=2")
    run(cfg)
    out = Path(cfg.paths.output_dir)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert runs, f"no offline W&B run under {out / 'wandb'}"
    assert (out / "csv" / "metrics.csv").exists()


def test_eval_mode_reports_clean_accuracy(smoke_cfg):
    acc = run(smoke_cfg("mode=eval"))
    assert 0.0 <= acc <= 1.0


def test_advantage_dumps_render_side_by_side_on_identical_responses(smoke_cfg, tmp_path):
    """DVPO and PPO with one seed sample the same step-0 responses; viz draws their advantages side by side."""
    from dvpo_lab import viz

    dirs = []
    for algo in ("dvpo", "ppo"):
        cfg = smoke_cfg(
            f"algo={algo}",
            "total_steps=2",
            "algo.viz_every=1",
            "algo.viz_samples=3",
            *(["critic.n_quantiles=8"] if algo == "dvpo" else []),
            name=algo,
        )
        run(cfg)
        dirs.append(Path(cfg.paths.output_dir))
    dumps = [viz.load_dump(d, 0) for d in dirs]
    assert [r["tokens"] for r in dumps[0]["responses"]] == [r["tokens"] for r in dumps[1]["responses"]]
    for d in dumps:
        for r in d["responses"]:
            assert len(r["tokens"]) == len(r["advantages"]) == len(r["values"]) > 0
    out = tmp_path / "fig"
    assert viz.main([str(d) for d in dirs] + ["--step", "0", "--out", str(out)]) == 0
    assert (tmp_path / "fig.png").stat().st_size > 1000 and "<span" in (tmp_path / "fig.html").read_text()
    assert viz.main([str(dirs[0]), "--step", "7", "--out", str(out)]) == 2  # a step never dumped: clear error


@pytest.mark.parametrize("task, noise", [("sciqa", "majority_vote"), ("arith", "gauss0.3")])
def test_new_tasks_and_noises_run_end_to_end(smoke_cfg, task, noise):
    """sciqa on the tiny model under majority-vote pseudo-labels (the initial policy's samples label each prompt
    once), and Gaussian score noise: the run trains, logs the realised noise statistics, and stays finite."""
    cfg = smoke_cfg(f"task={task}", f"noise={noise}")
    run(cfg)
    out = Path(cfg.paths.output_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == task and summary["noise"] == noise and 0.0 <= summary["final/val_acc"] <= 1.0
    steps = training_rows(read_metrics(out))
    assert sorted(steps) == list(range(cfg.total_steps))
    for row in steps.values():
        assert all(math.isfinite(v) for v in row.values()), row
        for key in ("noise/fp_rate", "noise/fn_rate", "noise/youden_j", "critic/score_clean/mean"):
            assert key in row, f"{key} missing from {sorted(row)}"
    if noise == "majority_vote":
        assert all(0.0 <= r["noise/mv_agreement"] <= 1.0 for r in steps.values())
        # a label per distinct training prompt, computed once: the cache grows by at most a step's prompts
        sizes = [steps[s]["noise/mv_cache_size"] for s in sorted(steps)]
        assert sizes == sorted(sizes) and 0 < sizes[-1] <= cfg.total_steps * cfg.rollout.prompts_per_step
        ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        assert any(k.startswith("reference.") for k in ckpt)  # the frozen initial policy that samples labels
    else:
        assert all("noise/gauss_sd" in r for r in steps.values())
