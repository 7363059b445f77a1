"""Shared fixtures: compose the real config once, shrink it with `debug=smoke`, give each run its own folder.

The warm-start cache is shared by the whole session (a smoke warm-start is 4 SFT steps), so each test pays
only for its own RL steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from dvpo_lab.config import compose_config, register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
SHARED_GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
register_configs()


def _share_cores_among_workers() -> None:
    """Under pytest-xdist, give each worker its share of the cores: torch would otherwise start one thread per
    core in every worker (and in every CLI subprocess, which inherits OMP_NUM_THREADS). A test that sets
    `threads` in its config still gets what it asks for."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // workers)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_share_cores_among_workers()


def compose_cfg(
    overrides: list[str] | None = None, out_dir: Path | None = None, cache_dir: Path | None = None
) -> DictConfig:
    """`compose_config` with the run's log and cache folders under the test's own tmp_path."""
    cfg = compose_config(list(overrides or []), out_dir or ROOT / "outputs" / "unused")
    if out_dir is not None:
        with open_dict(cfg):
            cfg.paths.log_dir = str(out_dir.parent)
            if cache_dir is not None:
                cfg.paths.cache_dir = str(cache_dir)
        HydraConfig().set_config(cfg)
    return cfg


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def smoke_cfg(tmp_path, cache_dir):
    """Factory: `smoke_cfg("algo=grpo", ...)` -> a `debug=smoke` config writing under tmp_path."""

    def make(*overrides: str, name: str = "run") -> DictConfig:
        return compose_cfg(["debug=smoke", "logger=csv", *overrides], tmp_path / name, cache_dir)

    return make


def run_cli(
    args: list[str], tmp_path: Path, cache_dir: Path | None = None, timeout: float = 300, **popen
) -> subprocess.CompletedProcess:
    """`python -m dvpo_lab ARGS` in a subprocess, outputs under tmp_path."""
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled"), "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "dvpo_lab",
        f"paths.log_dir={tmp_path}",
        f"paths.cache_dir={cache_dir or tmp_path / 'cache'}",
        *args,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **popen)
