"""Aggregate a sweep: `python -m dvpo_lab.report DIR [DIR ...] [--out OUT] [--baseline ppo] [--last-k K]`.

Reads every run folder under the given folders (a `-m sweep=NAME` folder, a multirun folder, or `outputs/`)
and writes `report.md` plus PNG plots into `--out` (default: the first DIR), and prints the summary table.
Works on partial sweeps: finished runs (`summary.json`) are aggregated, failed jobs (`failed.txt`, written
by a multirun job that raised) and unfinished ones (started, no summary yet: interrupted or still running)
are listed with how far they got.

A run's *score* is its clean greedy accuracy at the final evaluation (`--last-k 1`, the default) or the mean of
its last K evaluations during RL (`--last-k K`: less seed noise than the last alone; the warm-start evaluation at
step 0 never counts, and a run with fewer than K evaluations is scored on those it has, which the report says).
Every table and the accuracy-against-noise plot use the score. Section "Scoring: last k evaluations" gives the
evidence for K: per k = 1..5 (those every finished run has), the median seed sd over cells and the number of
cells whose seed sd is at most 2 points.

A *method* is the algorithm's name plus whatever else the job's overrides set besides noise and seed
(`critic.n_quantiles=50`, an Optuna point, ...), so a study over any knob groups correctly. Per (task,
method, noise) cell: the score, mean and 95% t-interval over seeds, the seed sd, the gain over the warm-start
with its interval, and the mean of the last three evaluations. Paired differences against `--baseline` (same
task, noise and seed: same warm-start and same step-0 samples) come with a seeded bootstrap and a t 95%
interval over seeds, the t half-width, the count of seeds above and a verdict: "ahead" / "behind" when both
intervals lie above / below 0, "tied" when both contain 0, "unclear (intervals disagree)" otherwise. Section
"Verdict per noise level" lists, per (task, noise), each method's mean difference, t-interval and verdict, and
flags as "close" the comparisons with |mean difference| < 2 t half-widths (those that need more seeds).
Plots: the score against noise per method (mean and 95% CI), learning curves per noise setting.

Beside report.md goes `runs.jsonl`, one line per job (status, config, evaluation history, wall time): small
enough to commit with the report, and itself an input (`python -m dvpo_lab.report DIR/runs.jsonl`, any
`--last-k`). On a new machine, `python -m dvpo_lab.report LEDGER --restore SWEEP_DIR` recreates the finished jobs'
folders so that rerunning the study's command there skips them and runs only what is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from dvpo_lab.report.plots import plot_accuracy_vs_noise, plot_learning_curves
from dvpo_lab.report.runs import LEDGER, Run, job_name, ledger_line, load, restore, split_common
from dvpo_lab.report.tables import (
    choice_of_k_table,
    paired_table,
    per_seed_table,
    score_name,
    seed_spread_table,
    summary_table,
    verdict_table,
)


def _bad_last_k(k: int) -> str | None:
    """The one-line error for a `--last-k` below 1, None when `k` is valid."""
    if k >= 1:
        return None
    return f"--last-k {k}: the number of final evaluations a run's score averages must be >= 1 (1: the final one)"


def _command(roots: list[Path], out: Path, baseline: str, title: str | None, last_k: int = 1) -> str:
    """The command line that regenerates this report."""
    cmd = ["python -m dvpo_lab.report", *map(str, roots), "--out", str(out)]
    if baseline != "ppo":
        cmd += ["--baseline", f"'{baseline}'" if " " in baseline else baseline]
    if last_k != 1:
        cmd += ["--last-k", str(last_k)]
    if title:
        cmd += ["--title", f"'{title}'"]
    return " ".join(cmd)


def _scoring(runs: list[Run], k: int) -> list[str]:
    """Section "Scoring: last k evaluations": what the score is, the runs short of k evaluations, the choice of k."""
    finished = [r for r in runs if r.status == "finished"]
    lines = [
        "## Scoring: last k evaluations",
        "",
        "A run's score is "
        + (
            "its final clean accuracy (the last evaluation; `--last-k K` averages the last K instead)."
            if k == 1
            else f"the mean clean accuracy of its last {k} evaluations during RL (`--last-k {k}`)."
        )
        + " The warm-start evaluation (step 0) never counts. Per k: the median over cells of the seed sd of the "
        "score, and how many cells (of those with two seeds or more) have a seed sd of at most 2 points.",
        "",
    ]
    short = [len(r.evaluations) for r in finished if len(r.evaluations) < k]
    if short:
        lines += [
            f"{len(short)} of {len(finished)} finished runs have fewer than {k} evaluations after the warm-start "
            f"(fewest: {min(short)}): their score is the mean of those they have.",
            "",
        ]
    table = choice_of_k_table(runs, chosen=k)
    lines += [table or "(No cell has two seeds, or no run evaluated after step 0: no seed sd to compare.)", ""]
    return lines


def write_report(
    roots: list[Path], out: Path, baseline: str = "ppo", title: str | None = None, last_k: int = 1
) -> Path:
    """Write `out/report.md` (and the two PNGs when a run finished) for the runs under `roots` (folders or ledger
    files), scoring each run on the mean of its last `last_k` evaluations during RL (`Run.score`), with paired
    differences against method `baseline`; when a root is a folder, also `out/runs.jsonl` (the ledger). Returns
    the path of report.md. Raises ValueError when `last_k` < 1."""
    if (bad := _bad_last_k(last_k)) is not None:
        raise ValueError(bad)
    k, name = last_k, score_name(last_k)
    runs = load(roots)
    dirs = [r for r in roots if r.is_dir()]
    common = split_common(runs)
    out.mkdir(parents=True, exist_ok=True)
    finished = [r for r in runs if r.status == "finished"]
    lines = [
        f"# {title or 'Sweep report'}",
        "",
        f"Source: {', '.join(str(r) for r in roots)}. Generated by `{_command(roots, out, baseline, title, k)}`.",
        "",
        f"Runs: {len(finished)} finished, {sum(r.status == 'failed' for r in runs)} failed, "
        f"{sum(r.status == 'unfinished' for r in runs)} unfinished.",
    ]
    if common:
        lines.append(f"Overrides every run shares (left out of the method names): `{' '.join(common)}`.")
    walls = [r.wall_s for r in finished if not math.isnan(r.wall_s)]
    if walls:
        lines.append(
            f"Run time (start of RL to summary, evaluations included): {sum(walls) / 3600:.2f} h summed over "
            f"runs, {statistics.fmean(walls):.0f} s per run on average."
        )
    if finished:
        plot_accuracy_vs_noise(runs, out / "accuracy_vs_noise.png", k)
        plot_learning_curves(runs, out / "learning_curves.png")
        score = "final clean accuracy" if k == 1 else f"clean accuracy, {name}"
        lines += [
            "",
            *_scoring(runs, k),
            "## Final clean accuracy per cell" if k == 1 else f"## Clean accuracy per cell ({name})",
            "",
            "Mean over seeds with its 95% t-interval; the gain is "
            + ("final" if k == 1 else f"the {name}")
            + " minus warm-start accuracy (a cell whose gain interval excludes 0 has separated from the warm-start).",
            "",
            summary_table(runs, k),
            "",
            f"![{score} against noise](accuracy_vs_noise.png)",
            "",
            "![learning curves](learning_curves.png)",
            "",
        ]
        spread = seed_spread_table(runs, k)
        if spread:
            lines += [
                "## Where the seed spread comes from",
                "",
                f"Per noise level, the seeds every method ran ({score}): a seed moves every method alike (its "
                "warm-start, when each seed has its own) or each method on its own (the residual). A cell's seed "
                "sd holds both; a comparison paired on seeds cancels the first. Points, except the share.",
                "",
                spread,
                "",
            ]
        paired = paired_table(runs, baseline, k)
        if paired:
            lines += [
                f"## Paired differences against {baseline}",
                "",
                f"Same task, noise and seed (same warm-start, same step-0 samples); {score}. Verdict: 'ahead' when "
                "both the bootstrap and the t 95% intervals lie above 0, 'behind' when both lie below 0, 'tied' "
                "when both contain 0, 'unclear (intervals disagree)' otherwise: with few seeds the percentile "
                "bootstrap is too narrow (3 seeds have only 10 distinct resamples) and can exclude 0 where the "
                "t-interval does not. CI half-width (t) in points.",
                "",
                paired,
                "",
                "## Verdict per noise level",
                "",
                f"Each method against {baseline} on the same seeds ({score}), from the table above; the verdict "
                "claims nothing beyond the two intervals. 'close': yes when |mean difference| < 2 x the t half-width "
                "(not clear of 0 by a margin): those comparisons need more seeds.",
                "",
                verdict_table(runs, baseline, k),
                "",
            ]
        else:
            lines += [f"(No `{baseline}` runs: no paired differences; choose another with `--baseline`.)", ""]
        heading = "## Final clean accuracy per seed" if k == 1 else f"## Clean accuracy per seed ({name})"
        lines += [heading, "", per_seed_table(runs, k), ""]
    bad = [r for r in runs if r.status != "finished"]
    if bad:
        lines += [
            "## Failed and unfinished jobs",
            "",
            "Rerun the same sweep command to retry failed jobs and resume unfinished ones from their last "
            "checkpoint (finished ones are skipped).",
            "",
            "| status | job | reached step | error |",
            "|---|---|---|---|",
        ]
        for r in bad:  # the job as the ledger names it, so that a report regenerated from the ledger is the same
            err = r.error.replace("|", "/")
            job = job_name(r.folder, _root(r, dirs)) if dirs else r.folder  # a ledger's runs already are
            lines.append(f"| {r.status} | {job} | {r.last_step} of {r.total_steps} | {err} |")
        lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    if dirs:  # the ledger: this report's input in one small file (python -m dvpo_lab.report out/runs.jsonl)
        with (out / LEDGER).open("w") as f:
            for r in runs:
                f.write(json.dumps(ledger_line(r, _root(r, dirs))) + "\n")
    return path


def _root(r: Run, dirs: list[Path]) -> Path:
    """The report's input folder that holds `r` (the first one when none does)."""
    return next((d for d in dirs if r.folder.is_relative_to(d)), dirs[0])


def main(argv: list[str] | None = None) -> None:
    """`python -m dvpo_lab.report` (arguments: `--help`); prints the summary table, the jobs that did not finish
    and where the report went. Raises SystemExit naming the folder when a DIR is missing or holds no run."""
    ap = argparse.ArgumentParser(
        prog="python -m dvpo_lab.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("dirs", nargs="+", type=Path, help="sweep, multirun or outputs folders, or a runs.jsonl ledger")
    ap.add_argument("--out", type=Path, default=None, help="where report.md and the PNGs go (default: the first DIR)")
    ap.add_argument("--baseline", default="ppo", help="method the paired differences are taken against")
    ap.add_argument("--title", default=None)
    ap.add_argument(
        "--last-k",
        type=int,
        default=1,
        metavar="K",
        help="score each run on the mean of its last K evaluations during RL (default 1: the final one)",
    )
    ap.add_argument(
        "--restore",
        type=Path,
        default=None,
        metavar="SWEEP_DIR",
        help="recreate the finished jobs of the ledger DIR (a runs.jsonl) under SWEEP_DIR, so rerunning "
        "the study there skips them, and exit",
    )
    args = ap.parse_args(argv)
    if (bad := _bad_last_k(args.last_k)) is not None:
        raise SystemExit(bad)
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
        raise SystemExit(
            f"no run folder (summary.json, fingerprint.txt or failed.txt) under {', '.join(map(str, args.dirs))}"
        )
    out = args.out or (args.dirs[0].parent if args.dirs[0].is_file() else args.dirs[0])
    path = write_report(args.dirs, out, args.baseline, args.title, args.last_k)
    print(summary_table(runs, args.last_k))
    bad = [r for r in runs if r.status != "finished"]
    for r in bad:
        print(f"{r.status}: {r.folder} (step {r.last_step} of {r.total_steps}) {r.error}")
    print(f"\nreport: {path}")
