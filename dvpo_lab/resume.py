"""Resuming: find the checkpoint `ckpt_path=last` means, and keep every metric row across the interruption.

A run folder holds `fingerprint.txt` (a hash of its config minus paths and resume keys). `ckpt_path=last`
resumes the run's own folder if it has a checkpoint (same `hydra.run.dir`), else the newest run of the same
fingerprint under `outputs/<task_name>/`. Lightning's CSVLogger starts a fresh `metrics.csv` on resume, so
the rows written before the interruption are set aside first and merged back afterwards.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dvpo_lab.config import ConfigError

log = logging.getLogger(__name__)
BEFORE_RESUME = "metrics.before_resume.csv"


def config_fingerprint(cfg: DictConfig) -> str:
    """Identity of a run for `ckpt_path=last` and `resume=true`: the config minus paths, loggers, callbacks,
    resume keys and the study's name (none of them changes what the run computes)."""
    c = OmegaConf.to_container(cfg, resolve=False)
    for k in ("paths", "ckpt_path", "logger", "callbacks", "extras", "hydra", "resume", "study"):
        c.pop(k, None)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_ckpt_path(cfg: DictConfig, out_dir: Path, fingerprint: str | None = None) -> str | None:
    """The checkpoint `cfg.ckpt_path` means: a path, or `last` = this folder's own `last.ckpt`, else the newest
    `last.ckpt` of the same fingerprint under `outputs/<task_name>/`.

    Raises:
        ConfigError: the path does not exist, or (training) the checkpoint was written under another config
            (resuming it would continue the wrong model).
    """
    if cfg.ckpt_path in (None, ""):
        return None
    if cfg.ckpt_path != "last":
        if not Path(cfg.ckpt_path).exists():
            raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not exist (use a .ckpt file, 'last' or null)")
        found = str(cfg.ckpt_path)
    elif (out_dir / "checkpoints" / "last.ckpt").exists():
        found = str(out_dir / "checkpoints" / "last.ckpt")
    else:
        fp = fingerprint or config_fingerprint(cfg)
        root = Path(cfg.paths.log_dir) / cfg.task_name
        runs = [
            p
            for pattern in ("runs/*/checkpoints/last.ckpt", "multiruns/*/*/checkpoints/last.ckpt")
            for p in root.glob(pattern)
            if p.exists()
        ]
        same = [
            p
            for p in runs
            if (p.parents[1] / "fingerprint.txt").exists()
            and (p.parents[1] / "fingerprint.txt").read_text().strip() == fp
        ]
        if not same:
            log.warning("ckpt_path=last: no earlier run of this config under %s; starting fresh", root)
            return None
        found = str(max(same, key=lambda p: p.stat().st_mtime))
        log.info("ckpt_path=last: resuming %s", found)
    if cfg.mode == "train" and fingerprint is not None:
        theirs = checkpoint_fingerprint(found)
        if theirs is not None and theirs != fingerprint:
            raise ConfigError(
                f"ckpt_path={cfg.ckpt_path} ({found}) was written by a run of another config (fingerprint {theirs}, "
                f"this run's {fingerprint}); resuming it would continue the wrong model: run with that run's "
                "config, or drop ckpt_path to start fresh"
            )
    return found


def prepare_resume(ckpt: str, out_dir: Path) -> int:
    """Set the metric rows written before the interruption aside; return the checkpoint's RL step index."""
    epoch = int(torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)["epoch"])
    old = Path(ckpt).resolve().parents[1] / "csv" / "metrics.csv"
    keep = out_dir / "csv" / BEFORE_RESUME
    keep.parent.mkdir(parents=True, exist_ok=True)
    if keep.exists() and old.resolve() == (out_dir / "csv" / "metrics.csv").resolve():
        merge_resumed_metrics(out_dir, epoch)  # a second interruption: fold the earlier part in first
    if old.exists():
        if old.parent.resolve() == keep.parent.resolve():
            old.replace(keep)
        else:
            shutil.copyfile(old, keep)
    log.info("resuming after RL step %d from %s", epoch, ckpt)
    return epoch


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.exists():
        return [], []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def merge_resumed_metrics(out_dir: Path, epoch: int) -> None:
    """metrics.csv := rows from before the interruption (up to the checkpoint) + rows written since."""
    keep, cur = out_dir / "csv" / BEFORE_RESUME, out_dir / "csv" / "metrics.csv"
    old_fields, old = _rows(keep)
    new_fields, new = _rows(cur)

    def kind_step(r: dict[str, str]) -> tuple[bool, int]:
        return bool(r.get("training/step")), int(float(r.get("step") or -1))

    seen = {kind_step(r) for r in new}
    # training rows of steps 0..epoch and evaluations up to step epoch + 1 were final when the checkpoint was cut
    before = [
        r for r in old if kind_step(r) not in seen and kind_step(r)[1] <= (epoch if kind_step(r)[0] else epoch + 1)
    ]
    fields = list(dict.fromkeys(old_fields + new_fields))
    tmp = cur.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(sorted(before + new, key=lambda r: (kind_step(r)[1], not kind_step(r)[0])))
    tmp.replace(cur)
    keep.unlink(missing_ok=True)


def is_secondary_rank() -> bool:
    """Whether this process is a rank > 0 of a multi-process run (Lightning re-launches the command for each
    local rank with `hydra.run.dir` set to rank 0's folder; SLURM starts one per task): such a process joins
    rank 0's run folder, it neither checks nor records it."""
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


class FolderTaken(ConfigError):
    """The run folder already holds a run this one may not write into (another config's, or a finished one)."""


def check_run_folder(cfg: DictConfig, out_dir: Path, fingerprint: str) -> None:
    """A run never writes into a folder that holds another run, except to continue the same config.

    A folder holds a run once `fingerprint.txt` is in it (written at the start of training). Continuing is
    `ckpt_path=last` or `resume=true` with the same fingerprint in `mode=train`; anything else is refused
    before this run writes a byte there.

    Raises:
        FolderTaken: naming the folder, both fingerprints and the fix.
    """
    fp_file = out_dir / "fingerprint.txt"
    if not fp_file.exists() or is_secondary_rank():
        return
    theirs = fp_file.read_text().strip()
    if theirs != fingerprint:
        raise FolderTaken(
            f"hydra.run.dir={out_dir} holds a run of another config (fingerprint {theirs}, this run's {fingerprint}); "
            "keep both: choose another hydra.run.dir (hydra.sweep.dir for a sweep), or delete that folder"
        )
    if cfg.mode == "train" and (cfg.resume or cfg.ckpt_path == "last"):
        return
    raise FolderTaken(
        f"hydra.run.dir={out_dir} already holds a run of this config (fingerprint {fingerprint}); continue it "
        "with ckpt_path=last, or choose another hydra.run.dir"
    )


def record_run(cfg: DictConfig, out_dir: Path, fingerprint: str) -> None:
    """Claim the folder for this run: `fingerprint.txt` (train) and Hydra's `.hydra/` record (config.yaml,
    hydra.yaml, overrides.yaml), written here, after `check_run_folder`, rather than by Hydra before it
    (`hydra.output_subdir: null`), so a refused run leaves the folder's earlier record intact."""
    from hydra.core.hydra_config import HydraConfig

    if is_secondary_rank():
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.mode == "train":
        (out_dir / "fingerprint.txt").write_text(fingerprint + "\n")
    record = out_dir / ".hydra"
    record.mkdir(exist_ok=True)
    (record / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.instance().cfg
        (record / "hydra.yaml").write_text(OmegaConf.to_yaml(hydra_cfg))
        (record / "overrides.yaml").write_text(OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task))


def checkpoint_fingerprint(ckpt: str) -> str | None:
    """The config fingerprint a checkpoint was written under: stored in it, else its run folder's file."""
    stored = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True).get("dvpo_lab", {})
    if stored.get("fingerprint"):
        return str(stored["fingerprint"])
    fp_file = Path(ckpt).resolve().parents[1] / "fingerprint.txt"
    return fp_file.read_text().strip() if fp_file.exists() else None
