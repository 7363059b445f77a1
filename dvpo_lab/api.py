"""The Python API: `dvpo_lab.train(overrides)` runs what `dvpo-lab OVERRIDES` runs and returns its metrics.

    import dvpo_lab

    metrics = dvpo_lab.train(["algo=ppo", "noise=flip0.3", "debug=smoke"])
    metrics["initial/val_acc"], metrics["final/val_acc"], metrics["run_dir"]

    cfg = dvpo_lab.compose(["algo=grpo"])          # the same config, to read or edit before running it
    with open_dict(cfg):
        cfg.rollout.temperature = 0.8
    metrics = dvpo_lab.train(cfg=cfg)

As lightning-hydra-template's `src/train.py` `train(cfg)`, minus `@hydra.main`: the config is composed from the
same files (`dvpo_lab.config.CONF_DIR`, plus any `hydra.searchpath=[file:///abs/dir]` in the overrides), passes
the same start checks, and runs in a run folder claimed by the same rules as the command line's
(`dvpo_lab.hydra_callbacks`): a new folder under `paths.log_dir` named by `hydra.run.dir`'s pattern (`_2`,
`_3`, ... when taken), or the folder the caller names, refused when it holds another run. A user error raises
`ConfigError` (one line naming the key, the value and the fix); nothing calls `sys.exit`. Multiruns (`-m`,
`a=1,2`) are the command line's job.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict, read_write

from dvpo_lab.config import CONF_DIR, ConfigError, register_configs

log = logging.getLogger("dvpo_lab")
LOG_FILE = "train.log"  # the run's log lines, in its folder (the command line's is __main__.log)

# Hydra's noise around an error message (kept out of the one line)
_DROP = (
    "full_key:",
    "reference_type=",
    "object_type=",
    "To append to your config",
    "Config search path",
    "provider=",
    "Set the environment variable HYDRA_FULL_ERROR",
)


def one_line(exc: BaseException) -> str:
    """An error message as one line: Hydra's multi-line compose errors folded, choices joined with ` | `."""
    lines, options = [], []
    for text in (str(exc), str(exc.__cause__ or "")):
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(_DROP) or line in lines:
                continue
            if raw.startswith("\t"):
                options.append(line)
            else:
                lines.append(line.rstrip("."))
    out = "; ".join(lines)
    hint = _did_you_mean(exc.__cause__)
    return out + (f" ({' | '.join(options)})" if options else "") + (f"; did you mean {hint}?" if hint else "")


def _did_you_mean(cause: BaseException | None) -> str | None:
    """The closest key of the schema node a misspelt key was set on (`Key 'gama' not in 'AlgoConfig'`)."""
    import dataclasses
    import difflib

    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    from dvpo_lab import config

    if not isinstance(cause, ConfigKeyError | ConfigAttributeError) or not getattr(cause, "full_key", None):
        return None
    parent, _, key = str(cause.full_key).rpartition(".")
    node = getattr(cause, "parent_node", None)
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if isinstance(target, str):  # a _target_ node (noise, critic, task, trainer, ...): its class's arguments
        from dvpo_lab.checks import _target_params

        found = _target_params(target)
        near = difflib.get_close_matches(key, sorted(found[0]), n=1, cutoff=0.6) if found else []
        return f"{parent + '.' if parent else ''}{near[0]}" if near else None
    schema = getattr(cause, "object_type", None)
    if not (
        isinstance(schema, type)
        and dataclasses.is_dataclass(schema)
        and schema.__module__.startswith(config.__name__.rpartition(".")[0])
    ):  # a dvpo_lab schema
        return None
    near = difflib.get_close_matches(key, [f.name for f in dataclasses.fields(schema)], n=1, cutoff=0.6)
    return f"{parent + '.' if parent else ''}{near[0]}" if near else None


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a user's overrides or values cause (as `dvpo_lab.__main__` reports them)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return HydraException, OmegaConfBaseException


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The config `dvpo-lab OVERRIDES` would run, with its `hydra` node (run-folder pattern, chosen options,
    overrides) and interpolations left unresolved: for reading, or editing under `open_dict`, then
    `train(cfg=...)`.

    Args:
        overrides: command-line overrides, e.g. ``["algo=ppo", "rollout.temperature=0.8",
            "hydra.searchpath=[file:///abs/my_configs]"]``.
    Raises:
        ConfigError: an unknown group or option, a misspelt key, a value of the wrong type, sweep syntax
            (``seed=1,2``: a multirun is the command line's ``-m``); Hydra's message in one line.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    register_configs()
    outer = get_gh_backup()  # a caller's own Hydra app (train() called from its task function) is left as it was
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="train"):
            return hydra_compose("config", overrides=list(overrides or []), return_hydra_config=True)
    except _user_errors() as e:
        raise ConfigError(one_line(e)) from e
    finally:
        restore_gh_from_backup(outer)


def _with_hydra_node(cfg: DictConfig) -> DictConfig:
    """A deep copy of `cfg` that has a `hydra` node: its own, or the default one (no chosen options, no
    overrides) for a config that lost it (e.g. a run's `.hydra/config.yaml`)."""
    cfg = copy.deepcopy(cfg)
    if "hydra" not in cfg:
        node = compose().hydra
        with read_write(node), open_dict(node):
            node.runtime.choices = {}
            node.overrides.task = []
        with read_write(cfg), open_dict(cfg):
            cfg.hydra = node
    return cfg


def run_folder(cfg: DictConfig, output_dir: str | Path | None = None) -> Path:
    """The run folder of `cfg` (a config with its `hydra` node), by the command line's rules: `output_dir` or a
    `hydra.run.dir` the overrides name is used as is (`dvpo_lab.run` refuses it if it holds another run);
    otherwise `hydra.run.dir`'s pattern is claimed with an exclusive mkdir, `_2`, `_3`, ... when taken.

    Returns:
        The folder, absolute (created when claimed).
    """
    from omegaconf import OmegaConf

    from dvpo_lab.hydra_callbacks import _named_by_user, claim_folder

    if output_dir is not None:
        return Path(os.path.abspath(output_dir))
    pattern = Path(os.path.abspath(str(OmegaConf.select(cfg, "hydra.run.dir"))))
    return pattern if _named_by_user(cfg, "hydra.run.dir") else claim_folder(pattern)


class _RunLog:
    """`dvpo_lab`'s log lines (INFO and up) into `<run folder>/train.log` while a run lasts; restores the
    logger's level after."""

    def __init__(self, folder: Path):
        self.folder, self.handler, self.level = folder, None, log.level

    def __enter__(self) -> _RunLog:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.folder / LOG_FILE)
        self.handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        log.addHandler(self.handler)
        self.console = None
        if not logging.getLogger().handlers:  # a script without logging set up: show progress on the console too
            self.console = logging.StreamHandler()
            self.console.setFormatter(self.handler.formatter)
            log.addHandler(self.console)
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: Any) -> None:
        log.removeHandler(self.handler)
        self.handler.close()
        if self.console is not None:
            log.removeHandler(self.console)
        log.setLevel(self.level)


def train(
    overrides: list[str] | None = None, cfg: DictConfig | None = None, output_dir: str | Path | None = None
) -> dict[str, Any]:
    """Run one config as `dvpo-lab` does (checks, warm-start from the cache, RL or `mode=sft|eval`) in this
    process, and return its metrics.

    Args:
        overrides: command-line overrides (``["algo=ppo", "debug=smoke"]``); composed by `compose`.
        cfg: a composed config instead (from `compose`, edited or not; or one without its `hydra` node, such
            as a run's `.hydra/config.yaml`, which then runs with no preset checks). Not with `overrides`.
        output_dir: the run folder; by default a new one under `paths.log_dir` (see `run_folder`).
    Returns:
        `mode=train`: the run's `summary.json` (``initial/val_acc``, ``final/val_acc``, ``best/val_acc`` as
        fractions in [0, 1], ``history``: one ``{"step", "val/acc", ...}`` per evaluation, ``algo``, ``task``,
        ``noise``, ``seed``, ``total_steps``); `mode=eval`: ``{"val/acc": ...}``; `mode=sft`: ``{}``. Always
        with ``run_dir``: the run folder (str).
    Raises:
        ConfigError: a bad override or value, bad data, a folder that holds another run; one line naming the
            key, the value and the fix, raised before any data, warm-start or model is loaded where it can be.
    """
    from hydra.core.hydra_config import HydraConfig

    if cfg is not None and overrides:
        raise ConfigError("train() takes overrides or cfg, not both; compose(overrides), edit, then train(cfg=...)")
    full = _with_hydra_node(cfg) if cfg is not None else compose(overrides)
    outer = HydraConfig.instance().cfg  # a caller's own Hydra run, restored after this one
    try:
        return _train(full, output_dir)
    finally:
        HydraConfig.instance().cfg = outer


def _train(full: DictConfig, output_dir: str | Path | None) -> dict[str, Any]:
    """`train` once the config is composed: claim the folder, set Hydra's runtime config, run, read the summary."""
    from hydra.core.hydra_config import HydraConfig

    from dvpo_lab.loggers import finish_loggers
    from dvpo_lab.run import run

    try:
        folder = run_folder(full, output_dir)
        with read_write(full), open_dict(full):
            full.hydra.run.dir = str(folder)
            full.hydra.runtime.output_dir = str(folder)
            full.paths.output_dir = "${hydra:runtime.output_dir}"  # as the shipped paths/default.yaml has it
        HydraConfig.instance().set_config(full)
        job_cfg = copy.deepcopy(full)  # what Hydra hands a task function: the config without its hydra node
        with read_write(job_cfg), open_dict(job_cfg):
            del job_cfg["hydra"]
    except _user_errors() as e:
        raise ConfigError(one_line(e)) from e
    with _RunLog(folder):
        try:
            result = run(job_cfg)
        except ConfigError as e:
            log.error("%s", e)
            raise
        except _user_errors() as e:
            log.error("%s", one_line(e))
            raise ConfigError(one_line(e)) from e
        finally:  # the run's W&B run ends with it, so the next train() gets its own
            finish_loggers(failed=sys.exc_info()[0] is not None)
    summary = folder / "summary.json"
    if job_cfg.mode == "train" and summary.exists():
        metrics = json.loads(summary.read_text())
    else:
        metrics = {"val/acc": result} if job_cfg.mode == "eval" else {}
    return {**metrics, "run_dir": str(folder)}
