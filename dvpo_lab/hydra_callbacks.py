"""Hydra callbacks (`conf/hydra/default.yaml`): run folders no two runs share, and a sweep that reports failures.

- Run and sweep folders named by Hydra's default patterns (a timestamp to the second) are claimed with an
  exclusive `mkdir` before Hydra writes anything; a second run started in the same second (a shell loop with
  `&`, a SLURM array) gets the same name with `_2`, `_3`, ... instead of sharing the folder.
- A folder the user names (`hydra.run.dir=D`) is checked before Hydra writes to it: one that holds another
  config's run, or a run of this config that this one does not continue, is refused (`dvpo_lab.resume`).
- A multirun whose jobs failed ends with one line naming them and exit status 1, after every job has run.

Hydra turns an exception raised in a callback into a warning and goes on, so a refusal here is `SystemExit`
after one line on stderr (the same form `dvpo_lab.__main__` gives every user error).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from dvpo_lab.config import ConfigError

log = logging.getLogger("dvpo_lab")
FAILED = "failed.txt"  # a multirun job's error, in its folder (written by dvpo_lab.run.run_job)


def _refuse(message: str, status: int) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def _named_by_user(config: DictConfig, key: str) -> bool:
    """Whether `hydra.run.dir` / `hydra.sweep.dir` comes from the command line or a preset, not the default."""
    if any(o.lstrip("+").split("=", 1)[0] == key for o in config.hydra.overrides.hydra):
        return True
    from dvpo_lab.config import CONF_DIR

    default = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "hydra" / "default.yaml"), resolve=False)
    node, leaf = key.removeprefix("hydra.").split(".")
    raw = OmegaConf.to_container(config.hydra[node], resolve=False).get(leaf)
    return raw != default[node][leaf]


CLAIMED: set[str] = set()  # run folders this process claimed under Hydra's default name (dvpo_lab.run may drop one)


def claim_folder(path: Path) -> Path:
    """Create `path` (or `path_2`, `path_3`, ... if taken) exclusively; return the one created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        candidate = path if i == 1 else path.with_name(f"{path.name}_{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"no free run folder next to {path}")


def check_launcher(launcher: DictConfig) -> None:
    """The submitit launchers' settings before any job is submitted: every key is one of the plugin's (a key added
    with `+hydra.launcher.KEY=...` would reach sbatch as an unknown argument), and SLURM's commands exist here.

    Raises:
        ConfigError: one line naming the key and the fix.
    """
    target = launcher.get("_target_", "")
    if not target.startswith("hydra_plugins.hydra_submitit_launcher"):
        return
    import dataclasses
    import difflib
    import shutil

    from hydra_plugins.hydra_submitit_launcher import config as plugin

    slurm = target.endswith("SlurmLauncher")
    option = "submitit_slurm" if slurm else "submitit_local"
    schema = plugin.SlurmQueueConf if slurm else plugin.LocalQueueConf
    known = {f.name for f in dataclasses.fields(schema)}
    for key in launcher:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"did you mean hydra.launcher.{close[0]}? " if close else ""
            raise ConfigError(
                f"hydra.launcher.{key} is not a setting of hydra/launcher={option}; "
                f"{hint}the keys are in conf/hydra/launcher/ and sweeps/README.md"
            )
    if slurm and not (shutil.which("sbatch") and shutil.which("srun")):
        raise ConfigError(
            "hydra/launcher=submitit_slurm needs SLURM's sbatch and srun on PATH (run it on the cluster's login node); "
            "on this machine use hydra/launcher=submitit_local or joblib"
        )


class RunFolders(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from dvpo_lab.resume import is_secondary_rank

        if is_secondary_rank():  # a DDP rank > 0 re-launched by Lightning joins rank 0's folder
            return
        if _named_by_user(config, "hydra.run.dir"):
            from dvpo_lab.resume import check_run_folder, config_fingerprint

            cfg = OmegaConf.masked_copy(config, [k for k in config.keys() if k != "hydra"])
            try:
                check_run_folder(cfg, Path(config.hydra.run.dir), config_fingerprint(cfg))
            except ConfigError as e:
                _refuse(str(e), 2)
            return
        claimed = claim_folder(Path(config.hydra.run.dir))
        CLAIMED.add(str(claimed))
        with read_write(config.hydra.run), open_dict(config.hydra.run):
            config.hydra.run.dir = str(claimed)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_launcher(config.hydra.launcher)
        except ConfigError as e:
            _refuse(str(e), 2)
        if _named_by_user(config, "hydra.sweep.dir"):
            return  # named sweeps are resumed in place; each job checks its own folder (dvpo_lab.run)
        claimed = claim_folder(Path(config.hydra.sweep.dir))
        with read_write(config.hydra.sweep), open_dict(config.hydra.sweep):
            config.hydra.sweep.dir = str(claimed)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = sorted(sweep_dir.glob(f"*/{FAILED}"))
        if failed:
            names = ", ".join(p.parent.name for p in failed)
            _refuse(
                f"{len(failed)} job(s) of the sweep in {sweep_dir} failed: {names} (errors in their {FAILED}); "
                f"retry only those: the same command with hydra.sweep.dir={sweep_dir} resume=true",
                1,
            )
