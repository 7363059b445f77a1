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


def resolve_ckpt_path(cfg: DictConfig, out_dir: Path) -> str | None:
    if cfg.ckpt_path in (None, ""):
        return None
    if cfg.ckpt_path != "last":
        if not Path(cfg.ckpt_path).exists():
            raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not exist (use a .ckpt file, 'last' or null)")
        return str(cfg.ckpt_path)
    own = out_dir / "checkpoints" / "last.ckpt"
    if own.exists():
        return str(own)
    fp = config_fingerprint(cfg)
    root = Path(cfg.paths.log_dir) / cfg.task_name
    found = [p for pattern in ("runs/*/checkpoints/last.ckpt", "multiruns/*/*/checkpoints/last.ckpt")
             for p in root.glob(pattern) if p.exists()]
    same = [p for p in found if (p.parents[1] / "fingerprint.txt").exists()
            and (p.parents[1] / "fingerprint.txt").read_text().strip() == fp]
    if not same:
        log.warning("ckpt_path=last: no earlier run of this config under %s; starting fresh", root)
        return None
    best = max(same, key=lambda p: p.stat().st_mtime)
    log.info("ckpt_path=last: resuming %s", best)
    return str(best)


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
    before = [r for r in old if kind_step(r) not in seen
              and kind_step(r)[1] <= (epoch if kind_step(r)[0] else epoch + 1)]
    fields = list(dict.fromkeys(old_fields + new_fields))
    tmp = cur.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(sorted(before + new, key=lambda r: (kind_step(r)[1], not kind_step(r)[0])))
    tmp.replace(cur)
    keep.unlink(missing_ok=True)
