"""Sweeps through submitit (`hydra/launcher=submitit_local|submitit_slurm`, conf/hydra/launcher/).

The local test is real: a 2-job study (`sweep=noise_robustness debug=smoke`) launched by submitit_local, each job
pickled and run in its own process as on a cluster; then the same command again after one job lost its end, which
re-runs only that job from its last checkpoint (the resume the joblib path has, tests/test_sweeps.py). SLURM itself
is not on this machine: the SLURM config is checked by the sbatch script submitit would submit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dvpo_lab.config import compose_config
from tests.conftest import run_cli

ARGS = [
    "sweep=noise_robustness",
    "debug=smoke",
    "algo=ppo",
    "noise=none",
    "seed=1,2",
    "hydra/launcher=submitit_local",
    "-m",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, Path]:
    """One 2-job submitit_local sweep, shared by the tests below: (tmp folder, sweep folder)."""
    tmp = tmp_path_factory.mktemp("submitit")
    proc = run_cli(ARGS, tmp)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return tmp, tmp / "smoke" / "sweeps" / "noise_robustness"


def _job(root: Path, seed: int) -> Path:
    found = [p for p in root.iterdir() if p.is_dir() and p.name.endswith(f"seed={seed}")]
    assert len(found) == 1, list(root.iterdir())
    return found[0]


def test_submitit_local_sweep_runs_both_jobs(sweep):
    _, root = sweep
    assert (root / ".submitit").is_dir()  # launched by submitit: its pickles and each job's stdout/stderr
    for seed in (1, 2):
        summary = json.loads((_job(root, seed) / "summary.json").read_text())
        assert summary["seed"] == seed and summary["total_steps"] == 3
        assert [h["step"] for h in summary["history"]] == [0, 3]
        assert 0.0 <= summary["final/val_acc"] <= 1.0
        assert (_job(root, seed) / "csv" / "metrics.csv").read_text().count("\n") > 3  # a row per RL step


def test_submitit_local_rerun_skips_the_finished_job_and_resumes_the_other(sweep):
    tmp, root = sweep
    done, cut = _job(root, 1), _job(root, 2)
    stamp = (done / "summary.json").stat().st_mtime_ns
    before = json.loads((cut / "summary.json").read_text())
    (cut / "summary.json").unlink()  # as if the job had been killed after its last checkpoint
    proc = run_cli(ARGS, tmp)  # the same command again
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert (done / "summary.json").stat().st_mtime_ns == stamp  # finished: skipped, not rerun
    assert "already finished" in (done / "__main__.log").read_text()
    assert "resuming after RL step" in (cut / "__main__.log").read_text()
    assert json.loads((cut / "summary.json").read_text())["history"] == before["history"]


def test_submitit_slurm_config_becomes_the_sbatch_script(tmp_path, monkeypatch):
    """The keys users set (GPUs, time, partition, cpus, memory) reach sbatch; account/qos/constraint stay unset."""
    submitit = pytest.importorskip("submitit")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    cfg = compose_config(
        [
            "hydra/launcher=submitit_slurm",
            "trainer=gpu",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.timeout_min=90",
        ],
        tmp_path,
    )
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params["gpus_per_node"] == 1 and params["tasks_per_node"] == 1  # one per Lightning device
    assert params["account"] is None and params["qos"] is None and params["constraint"] is None

    srun = tmp_path / "bin" / "srun"  # submitit's SLURM executor only checks that srun exists
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}:{os.environ['PATH']}")
    # the parameter mapping of hydra_submitit_launcher's BaseSubmititLauncher.launch
    init_keys = {"submitit_folder", "max_num_timeout", "_target_"}
    executor = submitit.AutoExecutor(
        folder=tmp_path / "s", cluster="slurm", slurm_max_num_timeout=params["max_num_timeout"]
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{(k if k in base else f"slurm_{k}"): v for k, v in params.items() if k not in init_keys}
    )
    script = executor._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--time=90", "--gpus-per-node=1", "--ntasks-per-node=1", "--cpus-per-task=8"):
        assert f"#SBATCH {line}" in script, script
    assert "--mem=64GB" in script
    assert "--account" not in script and "--qos" not in script and "--constraint" not in script


def test_slurm_settings_follow_the_trainer(tmp_path):
    """GPUs per node come from the trainer (none for a CPU study), nodes from trainer.num_nodes, and FSDP's
    data-parallel size is devices x nodes."""
    cpu = compose_config(["hydra/launcher=submitit_slurm"], tmp_path)
    assert OmegaConf.to_container(cpu.hydra.launcher, resolve=True)["gpus_per_node"] == 0  # trainer=cpu asks none
    big = compose_config(
        ["hydra/launcher=submitit_slurm", "trainer=fsdp", "trainer.devices=8", "trainer.num_nodes=2"], tmp_path
    )
    params = OmegaConf.to_container(big.hydra.launcher, resolve=True)
    assert (params["gpus_per_node"], params["tasks_per_node"], params["nodes"]) == (8, 8, 2)
    assert big.trainer.strategy.data_parallel_size == 16


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["hydra/launcher=submitit_local", "+hydra.launcher.acount=x"], "hydra.launcher.acount is not a setting"),
        (["hydra/launcher=submitit_slurm", "+hydra.launcher.acount=x"], "did you mean hydra.launcher.account?"),
    ],
)
def test_launcher_mistakes_are_one_line_before_any_job(tmp_path, extra, expected):
    """A key added with `+` that the launcher does not take, caught before a job starts (submitit would fail at
    submission with a traceback); on a machine without SLURM the key is named before that is."""
    proc = run_cli(["debug=smoke", "seed=1,2", *extra, "-m"], tmp_path)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and err and expected in err[-1], proc.stderr[-2000:]
    assert not list(tmp_path.rglob("csv"))  # no job ran


def test_slurm_without_sbatch_is_one_line(tmp_path, monkeypatch):
    """hydra/launcher=submitit_slurm on a machine without SLURM: one line, before any job (submitit's own error is
    a 40-line traceback)."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no sbatch, no srun
    proc = run_cli(["debug=smoke", "seed=1,2", "hydra/launcher=submitit_slurm", "-m"], tmp_path)
    assert proc.returncode == 2 and "needs SLURM's sbatch and srun" in proc.stderr.strip().splitlines()[-1]
