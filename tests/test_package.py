"""The package as a user gets it: a wheel built from this checkout and installed (not editable) in a fresh venv,
run from an empty folder; the `dvpo-lab` script; the Python API (`dvpo_lab.train`); a user's own config folder
on `hydra.searchpath`.

The fresh venv has no dependencies of its own (nothing can be downloaded here): a `.pth` file puts this
interpreter's site-packages (torch, Hydra, ..., pip) after its own, so the wheel's `dvpo_lab` is the one imported
(asserted), while `.pth` files of that borrowed folder, such as the editable install's finder, are not run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from dvpo_lab import ConfigError, compose, train
from dvpo_lab.api import run_folder
from dvpo_lab.config import compose_config
from dvpo_lab.resume import config_fingerprint
from dvpo_lab.tasks import task_arguments
from tests.conftest import ROOT

SOURCES = ("pyproject.toml", "README.md", "dvpo_lab", "conf", "sweeps")  # what the wheel is built from
MY_CONFIGS = ROOT / "docs" / "examples" / "my_configs"
SEARCHPATH = f"hydra.searchpath=[file://{MY_CONFIGS}]"


def _check(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{proc.args}: exit {proc.returncode}\n{out[-4000:]}"
    return out


def test_pyproject_lists_every_folder():
    """Every package folder and config-group folder is in pyproject's `packages` (one left out is not shipped)."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])

    def folders(top: Path, name: str, suffix: str) -> set[str]:
        return {
            ".".join((name, *d.relative_to(top).parts)).rstrip(".")
            for d in [top, *top.rglob("*")]
            if d.is_dir() and d.name != "__pycache__" and any(d.glob(f"*{suffix}"))
        }

    wanted = (
        folders(ROOT / "dvpo_lab", "dvpo_lab", ".py")
        | folders(ROOT / "conf", "dvpo_lab.conf", ".yaml")
        | folders(ROOT / "sweeps", "dvpo_lab.sweeps", ".yaml")
    )
    assert listed == wanted, (
        f"pyproject [tool.setuptools] packages: add {sorted(wanted - listed)}, drop {sorted(listed - wanted)}"
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> SimpleNamespace:
    """`pip wheel` of a copy of the sources, installed with `pip install` into a fresh venv (~3 s)."""
    tmp = tmp_path_factory.mktemp("package")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
        else:
            shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _check(
        subprocess.run(
            [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp / "dist"), str(src)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    )
    (wheel,) = (tmp / "dist").glob("dvpo_lab-*.whl")

    venv = tmp / "venv"
    _check(
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True, timeout=120
        )
    )
    python = venv / "bin" / "python"
    site = Path(
        _check(
            subprocess.run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                capture_output=True,
                text=True,
            )
        ).strip()
    )
    borrowed = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "_dvpo_lab_test_deps.pth").write_text("".join(f"{p}\n" for p in borrowed))
    _check(
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "--disable-pip-version-check",
                "install",
                "--no-deps",
                "--no-index",
                "--ignore-installed",
                "-q",
                str(wheel),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PROJECT_ROOT", "DVPO_LAB_CACHE")}
    env.update(XDG_CACHE_HOME=str(tmp / "xdg"), WANDB_MODE="disabled", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    empty = tmp / "empty"
    empty.mkdir()
    return SimpleNamespace(
        wheel=wheel,
        python=python,
        script=venv / "bin" / "dvpo-lab",
        site=site,
        env=env,
        cwd=empty,
        cache=tmp / "xdg" / "dvpo_lab",
    )


def _run(installed: SimpleNamespace, *cmd: str | Path, timeout: float = 300) -> str:
    return _check(
        subprocess.run(
            [str(c) for c in cmd], cwd=installed.cwd, env=installed.env, capture_output=True, text=True, timeout=timeout
        )
    )


def test_wheel_ships_every_config(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    shipped = {f"dvpo_lab/{p.relative_to(ROOT)}" for top in ("conf", "sweeps") for p in (ROOT / top).rglob("*.yaml")}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert {f"dvpo_lab/{p.relative_to(ROOT / 'dvpo_lab')}" for p in (ROOT / "dvpo_lab").rglob("*.cpp")} <= names


def test_wheel_runs_from_an_empty_folder_and_reuses_the_warm_start(installed):
    """The installed script and `python -m dvpo_lab` run `debug=smoke` from a folder outside the checkout; the
    second run reuses the warm-start the first trained, from the user cache (here $XDG_CACHE_HOME/dvpo_lab)."""
    where = _run(
        installed,
        installed.python,
        "-c",
        "import dvpo_lab, dvpo_lab.config as c; print(dvpo_lab.__file__); print(c.CONF_DIR)",
    ).split()
    assert all(Path(p).is_relative_to(installed.site) for p in where), where  # not the checkout, not editable
    assert not any(Path(p).is_relative_to(ROOT) for p in where)

    # threads=1: the same run; two torch threads per run on a busy 2-core machine cost minutes (spin-waits)
    first = _run(installed, installed.script, "debug=smoke", "threads=1")
    assert "warm-start: training" in first
    cached = [p for p in (installed.cache / "warmstart").iterdir() if p.is_dir()]
    assert len(cached) == 1, cached
    second = _run(installed, installed.python, "-m", "dvpo_lab", "debug=smoke", "threads=1")
    assert f"warm-start: reusing {cached[0]}" in second
    runs = sorted((installed.cwd / "outputs" / "smoke" / "runs").iterdir())
    assert len(runs) == 2 and all((r / "summary.json").is_file() for r in runs), runs


def test_wheel_help_completion_and_user_configs(installed):
    """`--help` is the custom one (groups, examples, the cache folder); `-sc install=bash` prints the completion
    script; a user's config folder joins with an absolute `hydra.searchpath` from any folder."""
    helped = _run(installed, installed.script, "--help")
    assert "== Examples ==" in helped and "dvpo-lab debug=smoke" in helped and str(installed.cache) in helped
    assert re.search(r"^algo: .*\bdvpo\b", helped, re.M)  # Hydra's list of groups and options
    completion = _run(installed, installed.script, "-sc", "install=bash")
    assert "complete -o nospace -o default -F hydra_bash_completion dvpo-lab" in completion
    job = _run(installed, installed.python, "-m", "dvpo_lab", SEARCHPATH, "task=my_arith", "--cfg", "job")
    assert "digits: 4" in job and "ops: +-" in job


def test_script_of_this_install_finds_its_configs(tmp_path):
    """The `dvpo-lab` script of the environment running the tests (editable in `make setup`), from another folder."""
    script = Path(sys.executable).parent / "dvpo-lab"
    if not script.exists():
        pytest.skip("dvpo_lab is not installed in this environment (pip install -e .)")
    proc = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "== Examples ==" in _check(proc)


# ------------------------------------------------------------------------------------------------ Python API
def test_train_api_runs_like_the_cli(tmp_path, cache_dir):
    """`train(overrides)` runs the CLI's config in a new run folder and returns summary.json plus `run_dir`;
    the folder then refuses a second run (as `hydra.run.dir=` on the command line does)."""
    overrides = ["debug=smoke", "logger=csv", f"paths.log_dir={tmp_path}", f"paths.cache_dir={cache_dir}"]
    metrics = train(overrides)
    run_dir = Path(metrics.pop("run_dir"))
    assert run_dir.parent == tmp_path / "smoke" / "runs" and run_dir.name.endswith("_dvpo_flip0.2_s1")
    assert metrics == json.loads((run_dir / "summary.json").read_text())
    assert [h["step"] for h in metrics["history"]] == [0, 3]
    assert 0.0 <= metrics["final/val_acc"] <= 1.0
    cli_cfg = compose_config(overrides, tmp_path / "unused")  # what `python -m dvpo_lab OVERRIDES` runs
    assert (run_dir / "fingerprint.txt").read_text().strip() == config_fingerprint(cli_cfg)
    assert "run folder" in (run_dir / "train.log").read_text()
    with pytest.raises(ConfigError, match="already holds a run of this config"):
        train(overrides, output_dir=run_dir)


def test_train_api_takes_an_edited_config(tmp_path, cache_dir):
    """`train(cfg=compose(...))` after edits; the caller's Hydra state is as it was after the run."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    cfg = compose(["debug=smoke", "logger=csv", f"paths.log_dir={tmp_path}", f"paths.cache_dir={cache_dir}"])
    cfg.seed, cfg.total_steps, cfg.eval_every = 7, 2, 2
    before = HydraConfig.instance().cfg, GlobalHydra.instance().is_initialized()
    metrics = train(cfg=cfg)
    assert (metrics["seed"], metrics["total_steps"]) == (7, 2)
    assert Path(metrics["run_dir"]).name.endswith("_s7")  # the folder pattern reads the edited config
    assert (HydraConfig.instance().cfg, GlobalHydra.instance().is_initialized()) == before


def test_run_folders_are_never_shared(tmp_path):
    """Two runs of one config started in the same second get two folders (the pattern is claimed)."""
    cfg = compose(["debug=smoke", f"paths.log_dir={tmp_path}"])
    first, second = run_folder(cfg), run_folder(cfg)  # one `${now:}` value: the same name, claimed twice
    assert second == first.with_name(first.name + "_2") and first.is_dir() and second.is_dir()


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["algo=nope"], ["algo/nope", "dvpo"]),
        (["+algo.gama=0.9"], ["algo.gama", "algo.gamma"]),
        (["seed=1,2"], ["seed=1,2", "--multirun"]),
        (["debug=smoke", "rollout.minibatch_size=3"], ["rollout.minibatch_size=3", "divide"]),
        (
            [SEARCHPATH, "experiment=my_study", "algo=dvpo", "debug=smoke"],
            ["algo=dvpo contradicts experiment=my_study"],
        ),
    ],
)
def test_train_api_user_errors_raise_config_error(tmp_path, overrides, words):
    """A user error is a ConfigError with one line naming it, never SystemExit; nothing is trained."""
    with pytest.raises(ConfigError) as err:
        train([*overrides, f"paths.log_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"])
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert not (tmp_path / "cache").exists()


def test_train_api_takes_overrides_or_cfg():
    with pytest.raises(ConfigError, match="not both"):
        train(["debug=smoke"], cfg=compose(["debug=smoke"]))


# ------------------------------------------------------------------------------------- a user's config folder
def test_user_config_folder_on_searchpath():
    """docs/examples/my_configs: a task built on the package's arith, and a study preset that pins groups."""
    task = compose([SEARCHPATH, "task=my_arith"]).task
    assert (task.name, task.digits, task.ops, task.n_test) == ("arith", 4, "+-", 300)
    assert task_arguments(task)["test_seed"] == 2  # the package's arith: its class's default
    study = compose([SEARCHPATH, "experiment=my_study"])
    assert (study.algo.name, study.noise.name, study.task.digits, study.task_name) == ("ppo", "flip0.3", 4, "my_study")
