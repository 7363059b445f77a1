"""Aggregate finished runs: `python -m dvpo_lab.report DIR [DIR ...]` prints a markdown table.

Reads every `summary.json` under the given folders (a multirun folder, or `outputs/`), groups runs by
(task, algo, noise) and prints the clean greedy accuracy at the start and the end of RL, mean ± sd over
seeds, the gain, the mean of the last three evaluations (less noisy than the last one alone), and the
wall time of RL per run (from the start of training to the summary, evaluations included).
Incomplete runs (no summary.json) are listed, not silently dropped.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def load_runs(roots: list[Path]) -> tuple[list[dict], list[Path]]:
    """Finished runs (their summary.json) and incomplete ones (a fingerprint.txt but no summary yet)."""
    runs, incomplete = [], []
    for root in roots:
        for start in sorted(root.rglob("fingerprint.txt")):  # written when training starts
            folder = start.parent
            summ = folder / "summary.json"
            if not summ.exists():
                incomplete.append(folder)
                continue
            s = json.loads(summ.read_text())
            s["wall_s"] = summ.stat().st_mtime - start.stat().st_mtime
            s["folder"] = str(folder)
            runs.append(s)
    return runs, incomplete


def mean_sd(xs: list[float], scale: float = 100.0) -> str:
    if not xs:
        return "-"
    m = statistics.fmean(xs) * scale
    sd = statistics.stdev(xs) * scale if len(xs) > 1 else 0.0
    return f"{m:.1f} ± {sd:.1f}"


def table(runs: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["task"], r["algo"], r["noise"], r["total_steps"])].append(r)
    lines = ["| task | algo | noise | RL steps | seeds | initial acc % | final acc % | gain (points) "
             "| last-3-eval mean % | best acc % | wall per run (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (task, algo, noise, steps), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        init = [r["initial/val_acc"] for r in rs]
        final = [r["final/val_acc"] for r in rs]
        gain = [f - i for f, i in zip(final, init)]
        best = [r["best/val_acc"] for r in rs]
        last3 = [statistics.fmean(h["val/acc"] for h in r["history"][-3:]) for r in rs]
        wall = statistics.fmean(r["wall_s"] for r in rs)
        seeds = ",".join(str(r["seed"]) for r in rs)
        lines.append(f"| {task} | {algo} | {noise} | {steps} | {seeds} | {mean_sd(init)} | {mean_sd(final)} "
                     f"| {mean_sd(gain)} | {mean_sd(last3)} | {mean_sd(best)} | {wall:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path, help="multirun or outputs folders")
    args = ap.parse_args(argv)
    missing = [d for d in args.dirs if not d.exists()]
    if missing:
        raise SystemExit(f"no such folder: {', '.join(map(str, missing))}")
    runs, incomplete = load_runs(args.dirs)
    if not runs:
        raise SystemExit(f"no finished run (summary.json) under {', '.join(map(str, args.dirs))}")
    print(table(runs))
    if incomplete:
        print("\nIncomplete runs (no summary.json):")
        for f in incomplete:
            print(f"- {f}")


if __name__ == "__main__":
    main()
