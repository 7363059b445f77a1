"""Aggregate a sweep: `python -m dvpo_lab.report DIR [DIR ...] [--out OUT] [--baseline ppo]`.

Reads every run folder under the given folders (a `-m sweep=NAME` folder, a multirun folder, or `outputs/`)
and writes `report.md` plus PNG plots into `--out` (default: the first DIR), and prints the summary table.
Works on partial sweeps: finished runs (`summary.json`) are aggregated, failed jobs (`failed.txt`, written
by a multirun job that raised) and unfinished ones (started, no summary yet: interrupted or still running)
are listed with how far they got.

A *method* is the algorithm's name plus whatever else the job's overrides set besides noise and seed
(`critic.n_quantiles=50`, an Optuna point, ...), so a study over any knob groups correctly. Per (task,
method, noise) cell: final clean greedy accuracy, mean and 95% t-interval over seeds, the seed sd, the
gain over the warm-start with its interval, and the mean of the last three evaluations (less noisy than
the last alone). Paired differences against `--baseline` (same task, noise and seed: same warm-start and
same step-0 samples) come with a seeded bootstrap 95% interval over seeds and the count of seeds above.
Plots: final accuracy against noise per method (mean and 95% CI), learning curves per noise setting.

Beside report.md goes `runs.jsonl`, one line per job (status, config, evaluation history, wall time): small
enough to commit with the report, and itself an input (`python -m dvpo_lab.report DIR/runs.jsonl`). On a new
machine, `python -m dvpo_lab.report LEDGER --restore SWEEP_DIR` recreates the finished jobs' folders so that
rerunning the study's command there skips them and runs only what is missing.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

NOISE_ORDER = ["none", "flip0.1", "flip0.2", "flip0.3", "asym_fp0.1_fn0.3", "gauss0.3", "rm0.72", "majority_vote"]
# override keys that do not define the method
NOT_METHOD = ("seed", "noise", "sweep", "debug", "paths.", "hydra.", "threads", "task_name", "resume", "study",
              "logger", "callbacks", "ckpt_path", "ckpt_every")


@dataclass
class Run:
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


LEDGER = "runs.jsonl"  # one line per job, written beside report.md: the report's input, small enough to commit


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
            wall = summ.stat().st_mtime - start.stat().st_mtime if start.exists() else math.nan
            runs.append(Run(folder, "finished", s["task"], s["algo"], s["noise"], int(s["seed"]), int(s["total_steps"]),
                            _extra(ov), s.get("history", []), wall, preset=_preset(ov)))
            continue
        cfg_path = folder / ".hydra" / "config.yaml"
        cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
        run = Run(folder, "failed" if failed.exists() else "unfinished",
                  (cfg.get("task") or {}).get("name", "?"), (cfg.get("algo") or {}).get("name", "?"),
                  (cfg.get("noise") or {}).get("name", "?"), int(cfg.get("seed", -1)), int(cfg.get("total_steps", 0)),
                  _extra(ov), _history_from_csv(folder), preset=_preset(ov))
        if failed.exists():
            run.error = failed.read_text().splitlines()[0][:300] if failed.read_text() else "failed"
        runs.append(run)
    return runs


def ledger_line(r: Run, root: Path) -> dict:
    folder = str(r.folder.relative_to(root)) if r.folder.is_relative_to(root) else str(r.folder)
    return {"job": folder, "status": r.status, "task": r.task, "algo": r.algo, "noise": r.noise, "seed": r.seed,
            "total_steps": r.total_steps, "extra": r.extra, "history": r.history, "wall_s": r.wall_s,
            "error": r.error, "overrides": _overrides(r.folder)}


def ledger_run(d: dict) -> Run:
    return Run(Path(d["job"]), d["status"], d["task"], d["algo"], d["noise"], d["seed"], d["total_steps"],
               d["extra"], d["history"], d["wall_s"] if d["wall_s"] is not None else math.nan, d["error"],
               _preset(d.get("overrides", [])))


def restore(ledger: Path, sweep_dir: Path) -> int:
    """Recreate the finished jobs of a ledger as folders under `sweep_dir` (summary.json + the job's overrides),
    so that rerunning the study's command on another machine skips them (resume=true) and runs only the rest."""
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
        (folder / "summary.json").write_text(json.dumps({
            "algo": r.algo, "task": r.task, "noise": r.noise, "seed": r.seed, "total_steps": r.total_steps,
            "initial/val_acc": r.initial, "final/val_acc": r.final,
            "best/val_acc": max((h["val/acc"] for h in r.history), default=math.nan), "history": r.history,
            "restored_from": str(ledger)}, indent=1))
        n += 1
    return n


# ---------------------------------------------------------------------------------------------- statistics
def t_interval(xs: list[float]) -> tuple[float, float, float]:
    """(mean, lower, upper) of the 95% t-interval; a single value has no interval (nan bounds)."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, math.nan, math.nan
    from scipy.stats import t

    half = t.ppf(0.975, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, m - half, m + half


def bootstrap_interval(xs: list[float], n: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean (seeded: the same report every time)."""
    a = np.asarray(xs, dtype=float)
    if len(a) < 2:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n, len(a)))
    means = a[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _pct(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _ci(m: float, lo: float, hi: float) -> str:
    return f"{_pct(m)} [{_pct(lo)}, {_pct(hi)}]" if not math.isnan(lo) else _pct(m)


def noise_key(noise: str) -> tuple[int, str]:
    return (NOISE_ORDER.index(noise) if noise in NOISE_ORDER else len(NOISE_ORDER), noise)


def cells(runs: list[Run]) -> dict[tuple[str, str, str], list[Run]]:
    out: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for r in runs:
        if r.status == "finished":
            out[(r.task, r.method, r.noise)].append(r)
    for rs in out.values():
        rs.sort(key=lambda r: r.seed)
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], _method_key(kv[0][1], kv[1]), noise_key(kv[0][2]))))


def _natural(name: str) -> list:
    """Sort key with numbers compared as numbers: n_quantiles=50 < 200 < 500."""
    return [(0, float(p), "") if re.fullmatch(r"\d+(\.\d+)?", p) else (1, 0.0, p)
            for p in re.split(r"(\d+(?:\.\d+)?)", name) if p]


def _method_key(method: str, runs: list[Run]) -> tuple:
    """The study's order: by `experiment=` preset (ablation rows 1..5), then by name."""
    return runs[0].preset, _natural(method)


def method_order(c: dict[tuple[str, str, str], list[Run]], task: str | None = None) -> list[str]:
    """The methods of `cells` (of one task) in the study's order."""
    key = {m: _method_key(m, rs) for (t, m, _), rs in c.items() if task is None or t == task}
    return sorted(key, key=key.get)


# ---------------------------------------------------------------------------------------------- tables
def summary_table(runs: list[Run]) -> str:
    lines = ["| task | method | noise | seeds | RL steps | initial % | final % [95% CI] | seed sd "
             "| gain (points) [95% CI] | last-3 mean % | wall per run (s) |", "|---" * 11 + "|"]
    for (task, method, noise), rs in cells(runs).items():
        final = [r.final for r in rs]
        gain = [r.final - r.initial for r in rs]
        sd = statistics.stdev(final) * 100 if len(final) > 1 else math.nan
        walls = [r.wall_s for r in rs if not math.isnan(r.wall_s)]
        lines.append(
            f"| {task} | {method} | {noise} | {len(rs)} | {'/'.join(sorted({str(r.total_steps) for r in rs}))} "
            f"| {_pct(statistics.fmean(r.initial for r in rs))} | {_ci(*t_interval(final))} "
            f"| {'-' if math.isnan(sd) else f'{sd:.1f}'} | {_ci(*t_interval(gain))} "
            f"| {_pct(statistics.fmean(r.last3 for r in rs))} | {statistics.fmean(walls) if walls else math.nan:.0f} |")
    return "\n".join(lines)


def per_seed_table(runs: list[Run]) -> str:
    c = cells(runs)
    methods = method_order(c)
    rows: dict[tuple[str, str, int], dict[str, float]] = defaultdict(dict)
    for (task, method, noise), rs in c.items():
        for r in rs:
            rows[(task, noise, r.seed)][method] = r.final
    lines = ["| task | noise | seed | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
    for (task, noise, seed), vals in sorted(rows.items(), key=lambda kv: (kv[0][0], noise_key(kv[0][1]), kv[0][2])):
        accs = " | ".join(_pct(vals.get(m, math.nan)) for m in methods)
        lines.append(f"| {task} | {noise} | {seed} | {accs} |")
    return "\n".join(lines)


def paired_table(runs: list[Run], baseline: str) -> str | None:
    c = cells(runs)
    if not any(m == baseline for _, m, _ in c):
        return None
    lines = [f"| task | noise | method | seeds paired | mean difference vs {baseline} (points) | bootstrap 95% CI "
             f"| t 95% CI | seeds above {baseline} |", "|---|---|---|---|---|---|---|---|"]
    for (task, method, noise), rs in c.items():
        base = {r.seed: r.final for r in c.get((task, baseline, noise), [])}
        if method == baseline or not base:
            continue
        diffs = [r.final - base[r.seed] for r in rs if r.seed in base]
        if not diffs:
            continue
        lo, hi = bootstrap_interval(diffs)
        verdict = "" if math.isnan(lo) else (" (ahead)" if lo > 0 else " (behind)" if hi < 0 else " (tied)")
        _, tlo, thi = t_interval(diffs)
        lines.append(f"| {task} | {noise} | {method} | {len(diffs)} | {100 * statistics.fmean(diffs):+.1f} "
                     f"| [{100 * lo:+.1f}, {100 * hi:+.1f}]{verdict} | [{100 * tlo:+.1f}, {100 * thi:+.1f}] "
                     f"| {sum(d > 0 for d in diffs)} of {len(diffs)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plots
def plot_accuracy_vs_noise(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = cells(runs)
    tasks = sorted({t for t, _, _ in c})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        noises = sorted({n for t, _, n in c if t == task}, key=noise_key)
        methods = method_order(c, task)
        for j, method in enumerate(methods):
            xs, ms, errs = [], [], []
            for i, noise in enumerate(noises):
                rs = c.get((task, method, noise))
                if not rs:
                    continue
                m, lo, _ = t_interval([r.final for r in rs])
                xs.append(i + (j - (len(methods) - 1) / 2) * 0.06)
                ms.append(100 * m)
                errs.append(0.0 if math.isnan(lo) else 100 * (m - lo))
            ax.errorbar(xs, ms, yerr=errs, marker="o", capsize=3, label=method)
        init = [r.initial for rs in c.values() for r in rs if r.task == task and not math.isnan(r.initial)]
        if init:
            ax.axhline(100 * statistics.fmean(init), color="grey", ls="--", lw=1, label="warm-start")
        ax.set_xticks(range(len(noises)), noises)
        ax.set_xlabel("training reward noise")
        ax.set_ylabel("final clean accuracy (%), mean and 95% CI over seeds")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_learning_curves(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = cells(runs)
    panels = sorted({(t, n) for t, _, n in c}, key=lambda tn: (tn[0], noise_key(tn[1])))
    cols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.6 * nrows), squeeze=False)
    for ax, (task, noise) in zip(axes.flat, panels, strict=False):
        for method in [m for m in method_order(c, task) if (task, m, noise) in c]:
            rs = c[(task, method, noise)]
            steps = sorted({h["step"] for r in rs for h in r.history})
            mean, lo, hi = [], [], []
            for s in steps:
                vals = [h["val/acc"] for r in rs for h in r.history if h["step"] == s]
                m, a, b = t_interval(vals)
                mean.append(100 * m)
                lo.append(100 * (m if math.isnan(a) else a))
                hi.append(100 * (m if math.isnan(b) else b))
            (line,) = ax.plot(steps, mean, marker=".", label=f"{method} (n={len(rs)})")
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_title(f"{task}, noise={noise}")
        ax.set_xlabel("RL step")
        ax.set_ylabel("clean accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- report
def _command(roots: list[Path], out: Path, baseline: str, title: str | None) -> str:
    """The command line that regenerates this report."""
    cmd = ["python -m dvpo_lab.report", *map(str, roots), "--out", str(out)]
    if baseline != "ppo":
        cmd += ["--baseline", f"'{baseline}'" if " " in baseline else baseline]
    if title:
        cmd += ["--title", f"'{title}'"]
    return " ".join(cmd)


def write_report(roots: list[Path], out: Path, baseline: str = "ppo", title: str | None = None) -> Path:
    runs = load(roots)
    common = split_common(runs)
    out.mkdir(parents=True, exist_ok=True)
    finished = [r for r in runs if r.status == "finished"]
    lines = [f"# {title or 'Sweep report'}", "",
             f"Source: {', '.join(str(r) for r in roots)}. Generated by `{_command(roots, out, baseline, title)}`.", "",
             f"Runs: {len(finished)} finished, {sum(r.status == 'failed' for r in runs)} failed, "
             f"{sum(r.status == 'unfinished' for r in runs)} unfinished."]
    if common:
        lines.append(f"Overrides every run shares (left out of the method names): `{' '.join(common)}`.")
    walls = [r.wall_s for r in finished if not math.isnan(r.wall_s)]
    if walls:
        lines.append(f"Run time (start of RL to summary, evaluations included): {sum(walls) / 3600:.2f} h summed over "
                     f"runs, {statistics.fmean(walls):.0f} s per run on average.")
    if finished:
        plot_accuracy_vs_noise(runs, out / "accuracy_vs_noise.png")
        plot_learning_curves(runs, out / "learning_curves.png")
        lines += ["", "## Final clean accuracy per cell", "",
                  "Mean over seeds with its 95% t-interval; the gain is final minus warm-start accuracy (a cell whose "
                  "gain interval excludes 0 has separated from the warm-start).", "", summary_table(runs), "",
                  "![final clean accuracy against noise](accuracy_vs_noise.png)", "",
                  "![learning curves](learning_curves.png)", ""]
        paired = paired_table(runs, baseline)
        if paired:
            lines += [f"## Paired differences against {baseline}", "",
                      "Same task, noise and seed (same warm-start, same step-0 samples); final clean accuracy. "
                      "'ahead' / 'behind': the bootstrap interval excludes 0; 'tied' otherwise. With few seeds the "
                      "percentile bootstrap is too narrow (3 seeds have only 10 distinct resamples): read the "
                      "t-interval beside it too.", "", paired, ""]
        else:
            lines += [f"(No `{baseline}` runs: no paired differences; choose another with `--baseline`.)", ""]
        lines += ["## Final clean accuracy per seed", "", per_seed_table(runs), ""]
    bad = [r for r in runs if r.status != "finished"]
    if bad:
        lines += ["## Failed and unfinished jobs", "",
                  "Rerun the same sweep command to retry failed jobs and resume unfinished ones from their last "
                  "checkpoint (finished ones are skipped).", "", "| status | job | reached step | error |",
                  "|---|---|---|---|"]
        for r in bad:
            err = r.error.replace("|", "/")
            lines.append(f"| {r.status} | {r.folder} | {r.last_step} of {r.total_steps} | {err} |")
        lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    dirs = [r for r in roots if r.is_dir()]
    if dirs:  # the ledger: this report's input in one small file (python -m dvpo_lab.report out/runs.jsonl)
        with (out / LEDGER).open("w") as f:
            for r in runs:
                root = next((d for d in dirs if r.folder.is_relative_to(d)), dirs[0])
                f.write(json.dumps(ledger_line(r, root)) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path, help="sweep, multirun or outputs folders, or a runs.jsonl ledger")
    ap.add_argument("--out", type=Path, default=None, help="where report.md and the PNGs go (default: the first DIR)")
    ap.add_argument("--baseline", default="ppo", help="method the paired differences are taken against")
    ap.add_argument("--title", default=None)
    ap.add_argument("--restore", type=Path, default=None, metavar="SWEEP_DIR",
                    help="recreate the finished jobs of the ledger DIR (a runs.jsonl) under SWEEP_DIR, so rerunning "
                         "the study there skips them, and exit")
    args = ap.parse_args(argv)
    if args.restore is not None:
        n = restore(args.dirs[0], args.restore)
        print(f"restored {n} finished jobs under {args.restore}")
        return
    missing = [d for d in args.dirs if not d.exists()]
    if missing:
        raise SystemExit(f"no such folder: {', '.join(map(str, missing))}")
    runs = load(args.dirs)
    split_common(runs)
    if not runs:
        raise SystemExit(f"no run folder (summary.json, fingerprint.txt or failed.txt) under "
                         f"{', '.join(map(str, args.dirs))}")
    out = args.out or (args.dirs[0].parent if args.dirs[0].is_file() else args.dirs[0])
    path = write_report(args.dirs, out, args.baseline, args.title)
    print(summary_table(runs))
    bad = [r for r in runs if r.status != "finished"]
    for r in bad:
        print(f"{r.status}: {r.folder} (step {r.last_step} of {r.total_steps}) {r.error}")
    print(f"\nreport: {path}")


if __name__ == "__main__":
    main()
