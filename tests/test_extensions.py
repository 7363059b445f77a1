"""A user's own algorithm from files outside the package: one module (`@register_algo`) and one YAML, found through
`extra_modules` and `hydra.searchpath`, trained for 3 steps; its own config node checked at start."""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dvpo_lab.config import ConfigError
from dvpo_lab.extensions import import_extra_modules

# The two files a user writes for a new algorithm (counted in the README): REINFORCE++ with a group baseline
# (veRL's `reinforce_plus_plus_baseline`): subtract the group's mean score, then whiten over the batch.
MY_ALGO = """
from dataclasses import dataclass

import torch

from dvpo_lab.algos import broadcast_seq_advantage, group_advantages, masked_whiten, outcome_scores, register_algo


@dataclass
class RppBaselineConfig:
    whiten: bool = True  # whiten the group-centred advantages over the batch
    marker: str = ""  # a file this algorithm writes once, so the test knows it ran


@register_algo("rpp_baseline", critic="none", grouped=True, node="params", node_schema=RppBaselineConfig)
def rpp_baseline(token_rewards, mask, *, values, group_index, config):
    scores = outcome_scores(token_rewards, mask)
    adv = broadcast_seq_advantage(group_advantages(scores, group_index, norm_by_std=False), mask)
    if config.params.whiten:
        adv = masked_whiten(adv, mask)
    if config.params.marker:
        open(config.params.marker, "a").write("called\\n")
    return adv, adv
"""
MY_YAML = """# @package _global_
# REINFORCE++-baseline: my_algo.py
defaults:
  - override /critic: none
  - _self_

extra_modules: [my_algo]
algo:
  name: rpp_baseline
  adv_estimator: rpp_baseline
  norm_adv: false
  use_kl_in_reward: true
  cliprange_value: null
  params: # every key, so that each can be overridden (algo.params.whiten=false); types: RppBaselineConfig
    whiten: true
    marker: ""
"""


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """The user's folder: my_algo.py and conf/algo/rpp_baseline.yaml, nothing else."""
    (tmp_path / "my_algo.py").write_text(MY_ALGO)
    (tmp_path / "conf" / "algo").mkdir(parents=True)
    (tmp_path / "conf" / "algo" / "rpp_baseline.yaml").write_text(MY_YAML)
    return tmp_path


def run(folder: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "dvpo_lab",
        "debug=smoke",
        "logger=csv",
        "callbacks=none",
        f"hydra.searchpath=[file://{folder / 'conf'}]",
        f"hydra.run.dir={folder / 'run'}",
        *overrides,
    ]
    return subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=600)


def test_a_users_algorithm_trains_from_two_files_outside_the_package(user_folder: Path):
    marker = user_folder / "called.txt"
    res = run(user_folder, "algo=rpp_baseline", f"algo.params.marker={marker}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert marker.read_text().count("called") == 3  # once per RL step: the user's estimator made the advantages
    rows = list(csv.DictReader(open(user_folder / "run" / "csv" / "metrics.csv")))
    steps = [r for r in rows if r.get("critic/advantages/mean")]
    assert len(steps) == 3 and all(abs(float(r["critic/advantages/mean"])) < 1e-5 for r in steps)  # whitened
    assert (user_folder / "run" / "hf" / "final" / "config.json").is_file()


def test_a_misspelt_key_of_a_users_algorithm_fails_at_start_with_one_line(user_folder: Path):
    res = run(user_folder, "algo=rpp_baseline", "+algo.params.whitten=false")  # `+` passes Hydra's own check
    assert res.returncode == 2
    out = res.stdout + res.stderr
    err = [line for line in out.splitlines() if "error" in line.lower() and "HYDRA_FULL_ERROR" not in line]
    assert len(err) == 1 and "algo.params" in err[0] and "whitten" in err[0] and "whiten" in err[0], out
    assert "Traceback" not in out
    assert not (user_folder / "run" / "csv").exists()  # refused before anything ran


def test_extra_modules_errors_name_the_entry_and_the_fix(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"'no_such_module_xyz'.*PYTHONPATH"):
        import_extra_modules(["no_such_module_xyz"])
    with pytest.raises(ConfigError, match=r"not a \.py file"):
        import_extra_modules([str(tmp_path / "missing.py")])
    (tmp_path / "user_mod_abc.py").write_text(
        textwrap.dedent("""
        VALUE = 41
    """)
    )
    mod, again = import_extra_modules(["user_mod_abc.py"]) + import_extra_modules([str(tmp_path / "user_mod_abc.py")])
    assert mod is again and mod.VALUE == 41  # imported once, by path or again
    sys.modules.pop("user_mod_abc", None)
