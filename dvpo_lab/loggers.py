"""One job's experiment loggers: built from `cfg.logger`, finished with the job.

- `csv/metrics.csv` is always written, whatever `logger=` says: resuming (`dvpo_lab.resume`) and the report
  (`dvpo_lab.report`) read it. `logger=none` means no experiment tracker, not no metrics.
- W&B gets one run per job. Lightning's `WandbLogger` attaches to `wandb.run` when one is open, so unless each
  job finishes its run, every later job of a multirun in the same process (Hydra's basic launcher, a reused
  joblib worker) logs into the first job's run. `finish_loggers` ends it whatever happened to the job.
- The W&B run's config holds the whole resolved config (`algo.name`, `seed`, ...: what a dashboard filters by).
- The W&B run id is saved in the run folder (`wandb_id.txt`); a job that continues a checkpoint
  (`ckpt_path=last`, `resume=true`) continues the W&B run of the checkpoint's folder (`resume="allow"`).
"""

from __future__ import annotations

import logging
import secrets
import string
import sys
from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from dvpo_lab.config import CONF_DIR
from dvpo_lab.resume import resolve_ckpt_path

log = logging.getLogger(__name__)
WANDB_ID = "wandb_id.txt"  # in the run folder: the W&B run a resumed job continues
CSV_CONF = CONF_DIR / "logger" / "csv.yaml"  # the one definition of the CSV logger, also when logger= omits it


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The full config, interpolations resolved (`paths.output_dir` is this job's folder), minus Hydra's own node.

    Returns a nested dict of plain values (W&B shows `algo.name`, `rollout.temperature`, ...)."""
    return {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in cfg.items()
        if k != "hydra"
    }


def _is_wandb(node: Any) -> bool:
    target = OmegaConf.select(node, "_target_", default=None) if OmegaConf.is_config(node) else None
    return target is not None and issubclass(hydra.utils.get_class(target), WandbLogger)


def _resumed_checkpoint(cfg: DictConfig, out_dir: Path) -> str | None:
    """The checkpoint `run` continues from (None for a fresh run or an evaluation)."""
    if cfg.mode != "train" or cfg.ckpt_path in (None, ""):
        return None
    resume_log = logging.getLogger(resolve_ckpt_path.__module__)
    quiet, resume_log.disabled = resume_log.disabled, True  # run() resolves it again and logs it then, once
    try:
        return resolve_ckpt_path(cfg, out_dir)
    finally:
        resume_log.disabled = quiet


def new_run_id() -> str:
    """8 random characters from [a-z0-9], the form of the ids W&B generates itself."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def wandb_run_id(cfg: DictConfig, out_dir: Path) -> str:
    """This job's W&B run id, saved to `out_dir/wandb_id.txt` (by global rank 0).

    A job that continues a checkpoint continues the W&B run of the folder holding it (its `wandb_id.txt`), so
    `ckpt_path=last` and `resume=true` extend one W&B run; any other job starts a new run with a new id."""
    ckpt = _resumed_checkpoint(cfg, out_dir)
    saved = Path(ckpt).resolve().parents[1] / WANDB_ID if ckpt else None
    run_id = saved.read_text().strip() if saved is not None and saved.exists() else new_run_id()
    if rank_zero_only.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / WANDB_ID).write_text(run_id + "\n")
    return run_id


def _finish_wandb(exit_code: int) -> None:
    wandb = sys.modules.get("wandb")  # never imported: no run to finish
    if wandb is not None and wandb.run is not None:
        try:
            wandb.finish(exit_code=exit_code)
        except Exception as e:  # a tracker that cannot close must not hide the job's own error or result
            log.warning("W&B run %s did not finish cleanly: %s: %s", wandb.run.id, type(e).__name__, e)


def build_loggers(cfg: DictConfig, out_dir: Path) -> list[Logger]:
    """The loggers of `cfg.logger`, plus the CSV logger at `out_dir/csv` when the config has none there.

    Each W&B logger gets this job's run id (`wandb_run_id`) unless the config sets `id`, and every logger but
    the CSV gets `hyperparameters(cfg)`. A W&B run still open in this process (a job run without `run_job`)
    is finished first: Lightning would otherwise log this job into it. `finish_loggers` ends the job's run."""
    nodes = [n for n in (cfg.logger or {}).values() if n is not None]
    if any(_is_wandb(n) for n in nodes) and getattr(sys.modules.get("wandb"), "run", None) is not None:
        log.warning(
            "finishing the W&B run %s left open in this process: each job logs to its own run",
            sys.modules["wandb"].run.id,
        )
        _finish_wandb(exit_code=0)
    loggers: list[Logger] = []
    for node in nodes:
        own_id = _is_wandb(node) and node.get("id") is None and node.get("version") is None
        loggers.append(hydra.utils.instantiate(node, **({"id": wandb_run_id(cfg, out_dir)} if own_id else {})))
    csv_dir = (out_dir / "csv").resolve()
    if not any(isinstance(lg, CSVLogger) and Path(lg.log_dir).resolve() == csv_dir for lg in loggers):
        node = OmegaConf.load(CSV_CONF).csv
        node.save_dir = str(out_dir)
        loggers.insert(0, hydra.utils.instantiate(node))
    params = hyperparameters(cfg)
    for lg in loggers:
        if not isinstance(lg, CSVLogger):  # the run folder's .hydra/config.yaml already holds them beside the CSV
            lg.log_hyperparams(params)
        if isinstance(lg, WandbLogger) and rank_zero_only.rank == 0:
            log.info(
                "W&B run %s in %s (`wandb sync` uploads an offline run)", lg.version, Path(lg.save_dir or ".") / "wandb"
            )
    return loggers


def finish_loggers(failed: bool) -> None:
    """End this process's W&B run (exit code 1 when the job failed or was interrupted), so that the next job in
    the same process starts its own. Safe to call when there is none, and more than once."""
    _finish_wandb(exit_code=1 if failed else 0)


@rank_zero_only
def log_summary(loggers: list[Logger], summary: dict[str, Any]) -> None:
    """The run's final numbers (the `summary` keys with a '/': `final/val_acc`, ...) as each W&B run's summary,
    the numbers a W&B sweep or dashboard reads (sweeps/wandb/*.yaml: `final/val_acc`)."""
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.summary.update({k: v for k, v in summary.items() if "/" in k})
