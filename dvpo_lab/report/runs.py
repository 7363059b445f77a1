"""Run folders and the ledger: what one job of a sweep left on disk, read into a `Run`.

A job's folder holds `.hydra/overrides.yaml` and `.hydra/config.yaml` (Hydra), `fingerprint.txt` (written when
RL starts), `summary.json` (written when it finishes), `failed.txt` (written by a multirun job that raised) and
`csv/metrics.csv` (the CSV logger). The ledger (`runs.jsonl`, one JSON line per job) holds the same facts in one
small file, so a report can be regenerated, and a sweep resumed elsewhere (`restore`), without the folders.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# override keys that do not define the method
NOT_METHOD = (
    "seed",
    "noise",
    "sweep",
    "debug",
    "paths.",
    "hydra.",
    "threads",
    "task_name",
    "resume",
    "study",
    "logger",
    "callbacks",
    "ckpt_path",
    "ckpt_every",
)
LEDGER = "runs.jsonl"  # one line per job, written beside report.md: the report's input, small enough to commit


@dataclass
class Run:
    """One job of a sweep. Accuracies are fractions in [0, 1]; `wall_s` is seconds from the start of RL
    (`fingerprint.txt`) to `summary.json`, nan when unknown."""

    folder: Path
    status: str  # finished | failed | unfinished
    task: str = "?"
    algo: str = "?"
    noise: str = "?"
    seed: int = -1
    total_steps: int = 0
    extra: str = ""  # the job's other overrides (a swept knob)
    history: list[dict] = field(default_factory=list)  # [{"step": s, "val/acc": a}, ...]
    wall_s: float = math.nan
    error: str = ""
    preset: str = ""  # the job's `experiment=` preset: orders methods as the study lists them (ablation rows)

    @property
    def method(self) -> str:
        return f"{self.algo} {self.extra}".strip()

    @property
    def initial(self) -> float:
        return self.history[0]["val/acc"] if self.history and self.history[0]["step"] == 0 else math.nan

    @property
    def final(self) -> float:
        return self.history[-1]["val/acc"] if self.history else math.nan

    @property
    def last3(self) -> float:
        return statistics.fmean(h["val/acc"] for h in self.history[-3:]) if self.history else math.nan

    @property
    def evaluations(self) -> list[dict]:
        """The history without the step-0 (warm-start) evaluation: the evaluations made during RL."""
        return [h for h in self.history if h["step"] != 0]

    def score(self, k: int = 1) -> float:
        """Mean clean accuracy (fraction) of the last `k` evaluations during RL (`evaluations`; the warm-start's
        never counts); fewer than `k` give the mean of those there are, none gives nan. `score(1)` is `final`
        for every run that evaluated at least once after step 0. Raises ValueError when `k` < 1."""
        if k < 1:
            raise ValueError(f"last-k score with k={k}: k counts evaluations and must be >= 1")
        last = self.evaluations[-k:]
        return statistics.fmean(h["val/acc"] for h in last) if last else math.nan

    @property
    def last_step(self) -> int:
        return self.history[-1]["step"] if self.history else 0


def _overrides(folder: Path) -> list[str]:
    path = folder / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.exists() else []


def _extra(overrides: list[str]) -> str:
    keep = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key == "algo" or key.startswith(NOT_METHOD) or key == "experiment":
            continue  # the algorithm (and an experiment preset) show in algo's name
        keep.append(o.lstrip("+"))
    return ",".join(keep)


def _preset(overrides: list[str]) -> str:
    return next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("experiment=")), "")


def split_common(runs: list[Run]) -> list[str]:
    """Take the overrides every run shares (`trainer=gpu` for a whole study) out of the method names, so methods
    read `dvpo_qr` and `--baseline dvpo_qr` matches; returns them for the report's header."""
    if not runs:
        return []
    common = set.intersection(*(set(filter(None, r.extra.split(","))) for r in runs))
    for r in runs:
        r.extra = ",".join(o for o in r.extra.split(",") if o and o not in common)
    return sorted(common)


def _history_from_csv(folder: Path) -> list[dict]:
    path = folder / "csv" / "metrics.csv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/acc")]
    return [{"step": int(float(r["step"])), "val/acc": float(r["val/acc"])} for r in rows]


def load(roots: list[Path]) -> list[Run]:
    """Every run folder under `roots` (finished, failed and unfinished), or the jobs of a ledger file."""
    folders: set[Path] = set()
    runs = []
    for root in roots:
        if root.is_file():
            runs += [ledger_run(json.loads(line)) for line in root.read_text().splitlines() if line.strip()]
            continue
        for marker in ("fingerprint.txt", "summary.json", "failed.txt"):
            folders.update(p.parent for p in root.rglob(marker))
    for folder in sorted(folders):
        ov = _overrides(folder)
        summ, failed = folder / "summary.json", folder / "failed.txt"
        if summ.exists():
            s = json.loads(summ.read_text())
            start = folder / "fingerprint.txt"
            # a job restored from a ledger has no start marker: its summary carries the run time measured where it ran
            if start.exists():
                wall = summ.stat().st_mtime - start.stat().st_mtime
            else:
                wall = s["wall_s"] if s.get("wall_s") is not None else math.nan
            runs.append(
                Run(
                    folder,
                    "finished",
                    s["task"],
                    s["algo"],
                    s["noise"],
                    int(s["seed"]),
                    int(s["total_steps"]),
                    _extra(ov),
                    s.get("history", []),
                    wall,
                    preset=_preset(ov),
                )
            )
            continue
        cfg_path = folder / ".hydra" / "config.yaml"
        cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
        run = Run(
            folder,
            "failed" if failed.exists() else "unfinished",
            (cfg.get("task") or {}).get("name", "?"),
            (cfg.get("algo") or {}).get("name", "?"),
            (cfg.get("noise") or {}).get("name", "?"),
            int(cfg.get("seed", -1)),
            int(cfg.get("total_steps", 0)),
            _extra(ov),
            _history_from_csv(folder),
            preset=_preset(ov),
        )
        if failed.exists():
            run.error = failed.read_text().splitlines()[0][:300] if failed.read_text() else "failed"
        runs.append(run)
    return runs


def job_name(folder: Path, root: Path) -> str:
    """A job's name in a ledger and in a report: its folder relative to `root` when inside it, else the folder."""
    return str(folder.relative_to(root)) if folder.is_relative_to(root) else str(folder)


def ledger_line(r: Run, root: Path) -> dict:
    """`r` as one ledger line (a JSON-able dict); the job's folder is stored relative to `root` (`job_name`)."""
    return {
        "job": job_name(r.folder, root),
        "status": r.status,
        "task": r.task,
        "algo": r.algo,
        "noise": r.noise,
        "seed": r.seed,
        "total_steps": r.total_steps,
        "extra": r.extra,
        "history": r.history,
        "wall_s": r.wall_s,
        "error": r.error,
        "overrides": _overrides(r.folder),
    }


def ledger_run(d: dict) -> Run:
    """The `Run` of one ledger line (inverse of `ledger_line`, with the folder relative to the ledger's root)."""
    return Run(
        Path(d["job"]),
        d["status"],
        d["task"],
        d["algo"],
        d["noise"],
        d["seed"],
        d["total_steps"],
        d["extra"],
        d["history"],
        d["wall_s"] if d["wall_s"] is not None else math.nan,
        d["error"],
        _preset(d.get("overrides", [])),
    )


def restore(ledger: Path, sweep_dir: Path) -> int:
    """Recreate the finished jobs of a ledger as folders under `sweep_dir` (summary.json + the job's overrides),
    so that rerunning the study's command on another machine skips them (resume=true) and runs only the rest;
    each keeps the run time measured where it ran (`wall_s` in its summary.json). Returns the number of folders
    written (jobs whose `summary.json` already exists are left alone)."""
    n = 0
    for line in ledger.read_text().splitlines():
        d = json.loads(line) if line.strip() else None
        if not d or d["status"] != "finished":
            continue
        folder = sweep_dir / d["job"]
        if (folder / "summary.json").exists():
            continue
        (folder / ".hydra").mkdir(parents=True, exist_ok=True)
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(d["overrides"]))
        r = ledger_run(d)
        (folder / "summary.json").write_text(
            json.dumps(
                {
                    "algo": r.algo,
                    "task": r.task,
                    "noise": r.noise,
                    "seed": r.seed,
                    "total_steps": r.total_steps,
                    "initial/val_acc": r.initial,
                    "final/val_acc": r.final,
                    "best/val_acc": max((h["val/acc"] for h in r.history), default=math.nan),
                    "history": r.history,
                    "wall_s": None if math.isnan(r.wall_s) else r.wall_s,  # where it ran; `load` reads it back
                    "restored_from": str(ledger),
                },
                indent=1,
            )
        )
        n += 1
    return n
