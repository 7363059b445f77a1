"""A user's own reward function and own JSONL data, from files in a folder outside the package, trained for 3 steps.

What the user writes, counted (README "Bring your own reward / data"):
  * a reward: 1 file (``my_rewards.py``, one function) + one override, ``task.reward._target_=my_rewards.<fn>``;
  * a dataset: 1 file (``data.jsonl``) + overrides, ``task=jsonl task.path=...``; or 2 files with a task YAML
    (``task/my_data.yaml`` on ``hydra.searchpath``) that names the columns once.
Each training test is one ``python -m dvpo_lab debug=smoke`` process (the warm-start cache is the session's).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dvpo_lab.checks import check_config
from dvpo_lab.run import make_task
from dvpo_lab.tasks.jsonl import JSONLTask
from tests.conftest import compose_cfg

REWARD_FILE = '''\
"""My reward: 0.375 for every response, and a line per call with the batch size (to see who scored what)."""
from pathlib import Path


def constant(responses, problems):
    with open(Path(__file__).with_suffix(".calls"), "a") as f:
        f.write(f"{len(responses)}\\n")
    return [0.375] * len(responses)
'''


def _dvpo_lab(args: list[str], cwd: Path, cache_dir: Path, **env: str) -> subprocess.CompletedProcess:
    """`python -m dvpo_lab debug=smoke ARGS` run from `cwd` (a folder outside the checkout)."""
    run_dir = cwd / "run"
    cmd = [
        sys.executable,
        "-m",
        "dvpo_lab",
        "debug=smoke",
        "logger=csv",
        "export.enabled=false",
        f"paths.log_dir={cwd / 'outputs'}",
        f"paths.cache_dir={cache_dir}",
        f"hydra.run.dir={run_dir}",
        *args,
    ]
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **env}
    res = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _metrics(run_dir: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with open(run_dir / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if v not in ("", None):
                    out.setdefault(k, []).append(float(v))
    return out


def _data(folder: Path, n: int = 30) -> Path:
    """A user's data file: one-digit sums with their own column names and a worked solution per row."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "question": f"{i % 10}+{i // 10}=",
            "final": i % 10 + i // 10,
            "worked": f"#### {i % 10 + i // 10}",
            "source": "mine",
        }
        for i in range(n)
    ]
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_user_reward_function_trains_and_scores_rollouts_and_val_acc(tmp_path: Path, cache_dir: Path) -> None:
    """One file, one override: the user's function scores every rollout batch (B = 2 prompts x 2 samples, once per
    RL step) and the evaluation, so its 0.375 is the score of every step and val/acc (`noise=none` only so that
    the training score is the clean one: flip-type noise takes binary scores)."""
    user = tmp_path / "user"
    user.mkdir()
    (user / "my_rewards.py").write_text(REWARD_FILE)
    _dvpo_lab(["task.reward._target_=my_rewards.constant", "noise=none"], user, cache_dir, PYTHONPATH=str(user))
    m = _metrics(user / "run")
    assert m["critic/score/mean"] == m["critic/score_clean/mean"] == [0.375] * 3  # it scored the 3 rollouts
    assert m["val/acc"] and set(m["val/acc"]) == {0.375}  # ... and the greedy evaluation
    calls = [int(x) for x in (user / "my_rewards.calls").read_text().split()]
    assert calls.count(4) == 3, calls  # once per RL step on the rollout batch
    summary = json.loads((user / "run" / "summary.json").read_text())
    assert summary["final/val_acc"] == 0.375


def test_jsonl_dataset_trains_with_no_code(tmp_path: Path, cache_dir: Path) -> None:
    """One data file and overrides: `task=jsonl task.path=...` with the user's column names trains 3 steps."""
    user = tmp_path / "user"
    data = _data(user)
    res = _dvpo_lab(
        [
            "task=jsonl",
            f"task.path={data}",
            "task.prompt_key=question",
            "task.answer_key=final",
            "task.solution_key=worked",
            "task.max_response_len=8",
        ],
        user,
        tmp_path / "cache",
    )
    assert f"jsonl from {data}: 27 train, 3 test problems" in res.stdout + res.stderr
    m = _metrics(user / "run")
    assert len(m["critic/score_clean/mean"]) == 3 and all(0 <= x <= 1 for x in m["critic/score_clean/mean"])
    assert len(m["val/acc"]) >= 2  # step 0 and step 3
    summary = json.loads((user / "run" / "summary.json").read_text())
    assert summary["task"] == "jsonl" and summary["total_steps"] == 3
    assert any(p.name.startswith("jsonl-tiny-") for p in (tmp_path / "cache" / "warmstart").iterdir())


def test_jsonl_task_yaml_on_the_searchpath(tmp_path: Path) -> None:
    """Two files: the data and `task/my_data.yaml` (built on the package's jsonl option) in the user's config
    folder; `task=my_data` is then an option like the package's own."""
    data = _data(tmp_path / "user")
    conf = tmp_path / "user" / "conf"
    (conf / "task").mkdir(parents=True)
    (conf / "task" / "my_data.yaml").write_text(
        "defaults:\n  - jsonl\n  - _self_\n"
        f"name: my_data\npath: {data}\nprompt_key: question\nanswer_key: final\nsolution_key: worked\n"
        "max_response_len: 8\n"
    )
    cfg = compose_cfg([f"hydra.searchpath=[file://{conf}]", "task=my_data", "debug=smoke"])
    check_config(cfg, dict(cfg.hydra.runtime.choices), list(cfg.hydra.overrides.task))
    task = make_task(cfg)
    assert isinstance(task, JSONLTask) and cfg.task.name == "my_data" and task.num_train() == 27
    p = task.test_problems()[0]
    assert (p.prompt, p.answer, p.solution, p.extra_info) == ("0+0=", "0", "#### 0", {"source": "mine"})
    assert task.score(["#### 0", "#### 1"], [p, p]).tolist() == [1.0, 0.0]  # the strict rule by default


def test_reward_module_by_file_with_extra_modules(tmp_path: Path) -> None:
    """Without PYTHONPATH: `extra_modules=[path/to/file.py]` imports the file, its stem names the `_target_`."""
    from dvpo_lab.extensions import import_extra_modules

    path = tmp_path / "my_rewards_by_file.py"
    path.write_text(REWARD_FILE)
    import_extra_modules([str(path)])
    cfg = compose_cfg(["task.reward._target_=my_rewards_by_file.constant", f"extra_modules=[{path}]"])
    check_config(cfg, dict(cfg.hydra.runtime.choices), list(cfg.hydra.overrides.task))
    task = make_task(compose_cfg(["task.reward._target_=my_rewards_by_file.constant", "task.n_test=4"]))
    p = task.test_problems()
    assert task.score(["x"] * 4, p).tolist() == [0.375] * 4
    assert path.with_suffix(".calls").read_text().split() == ["4"]


@pytest.mark.parametrize("bad", ["[0.375]", "[2.0, 0.0]"])
def test_a_reward_that_returns_nonsense_stops_with_one_line(tmp_path: Path, bad: str) -> None:
    path = tmp_path / f"bad_reward_{len(bad)}.py"
    path.write_text(f"def fn(responses, problems):\n    return {bad}\n")
    from dvpo_lab.config import ConfigError
    from dvpo_lab.extensions import import_extra_modules

    import_extra_modules([str(path)])
    task = make_task(compose_cfg([f"task.reward._target_={path.stem}.fn", "task.n_test=2"]))
    with pytest.raises(ConfigError, match=rf"^task.reward \({path.stem}.fn\) "):
        task.score(["a", "b"], task.test_problems())


def test_a_reward_class_is_built_once_with_partial_false(tmp_path: Path) -> None:
    """A stateful reward (e.g. a reward model loaded once): a class named by `_target_`, `_partial_=false`."""
    from dvpo_lab.extensions import import_extra_modules

    path = tmp_path / "my_reward_model.py"
    path.write_text(
        "class Judge:\n    def __init__(self, value: float = 1.0):\n        self.value = value\n\n"
        "    def __call__(self, responses, problems):\n        return [self.value] * len(responses)\n"
    )
    import_extra_modules([str(path)])
    overrides = ["task.reward._target_=my_reward_model.Judge", "task.reward._partial_=false", "+task.reward.value=0.5"]
    cfg = compose_cfg(overrides)
    check_config(cfg, dict(cfg.hydra.runtime.choices), list(cfg.hydra.overrides.task))
    task = make_task(compose_cfg([*overrides, "task.n_test=3"]))
    assert type(task.reward).__name__ == "Judge" and task.score(["a"] * 3, task.test_problems()).tolist() == [0.5] * 3
