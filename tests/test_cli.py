"""`python -m dvpo_lab` as a user runs it: bad input exits non-zero with a message; a killed run resumes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run_cli

SMOKE = ["debug=smoke", "logger=csv"]


def failed_with(proc: subprocess.CompletedProcess, *words: str) -> str:
    """A user error: exit status 2, no traceback, one error line naming `words`."""
    from tests.test_start_checks import failed_with as one_line_error

    return one_line_error(proc, *words)


def test_unknown_option_lists_choices(tmp_path):
    failed_with(run_cli([*SMOKE, "noise=flip0.25"], tmp_path), "flip0.25", "flip0.2", "flip0.3", "none")


def test_misspelt_key(tmp_path):
    failed_with(run_cli([*SMOKE, "algo.clip_ratio=0.3"], tmp_path), "clip_ratio")


def test_impossible_batch_sizes(tmp_path):
    failed_with(run_cli([*SMOKE, "rollout.minibatch_size=3"], tmp_path), "rollout.minibatch_size=3", "divide")


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "no_such_dir"
    failed_with(run_cli([*SMOKE, "task=gsm8k", f"task.data_dir={missing}"], tmp_path), str(missing))


def test_malformed_jsonl_names_file_and_line(tmp_path):
    data = tmp_path / "gsm"
    data.mkdir()
    good = json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"})
    (data / "train.jsonl").write_text(good + "\n" + good + "\n{not json\n")
    (data / "test.jsonl").write_text(good + "\n")
    failed_with(run_cli([*SMOKE, "task=gsm8k", f"task.data_dir={data}"], tmp_path), "train.jsonl:3")


def _steps(run_dir: Path) -> dict[int, dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("training/step")]
    return {
        int(float(r["training/step"])): {
            k: v for k, v in r.items() if v != "" and not k.startswith(("timing_s/", "perf/"))
        }
        for r in rows
    }


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    """Kill a real run after a checkpoint, resume with ckpt_path=last: same metrics as a run never killed."""
    cache = tmp_path / "cache"
    steps = 8
    args = [*SMOKE, f"total_steps={steps}", "eval_every=4", "ckpt_every=1", "noise=flip0.2", "seed=3"]
    full = run_cli([*args, "task_name=full", f"hydra.run.dir={tmp_path}/full"], tmp_path, cache)
    assert full.returncode == 0, full.stderr[-3000:]

    run_dir = tmp_path / "killed"
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "dvpo_lab",
        f"paths.log_dir={tmp_path}",
        f"paths.cache_dir={cache}",
        *args,
        "task_name=killed",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                epoch = torch.load(ckpt, weights_only=False)["epoch"]
            except Exception:  # being written
                epoch = -1
            if epoch >= 3:
                proc.send_signal(signal.SIGKILL)
                killed_at = epoch
                break
        time.sleep(0.05)
    proc.wait()
    assert killed_at is not None and killed_at < steps - 1, "the run ended before it could be killed"
    assert not (run_dir / "summary.json").exists()

    resumed = run_cli([*args, "task_name=killed", f"hydra.run.dir={run_dir}", "ckpt_path=last"], tmp_path, cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((tmp_path / "full" / "summary.json").read_text())
    b = json.loads((run_dir / "summary.json").read_text())
    assert a["history"] == b["history"]
    full_steps, resumed_steps = _steps(tmp_path / "full"), _steps(run_dir)
    assert sorted(resumed_steps) == list(range(steps))
    for s in range(steps):
        assert full_steps[s] == resumed_steps[s], f"step {s} differs after resume"


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    """trainer=ddp on CPU (gloo), 2 ranks: each samples its own rollouts; the run finishes and evaluates."""
    proc = run_cli(
        [
            *SMOKE,
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "algo=ppo",
            f"hydra.run.dir={tmp_path}/ddp",
        ],
        tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["history"][-1]["step"] == summary["total_steps"]
