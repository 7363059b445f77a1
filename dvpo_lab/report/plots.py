"""PNG plots of a sweep (matplotlib, Agg backend): the score (final accuracy, or the mean of the last k evaluations)
against noise, and learning curves.

Both plot means over seeds with 95% t-intervals, in percent, per method in the study's order (`tables`).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from dvpo_lab.report.runs import Run
from dvpo_lab.report.stats import t_interval
from dvpo_lab.report.tables import cells, method_order, noise_key, score_name


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed); imported on first plot, not with the package."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_vs_noise(runs: list[Run], path: Path, k: int = 1) -> None:
    """One panel per task: the score `Run.score(k)` (final clean accuracy for k = 1, the mean of the last k
    evaluations otherwise; mean and 95% CI over seeds) against training noise, one line per method (offset slightly
    along x so error bars do not overlap), the mean warm-start accuracy dashed."""
    plt = _pyplot()
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
                m, lo, _ = t_interval([r.score(k) for r in rs])
                xs.append(i + (j - (len(methods) - 1) / 2) * 0.06)
                ms.append(100 * m)
                errs.append(0.0 if math.isnan(lo) else 100 * (m - lo))
            ax.errorbar(xs, ms, yerr=errs, marker="o", capsize=3, label=method)
        init = [r.initial for rs in c.values() for r in rs if r.task == task and not math.isnan(r.initial)]
        if init:
            ax.axhline(100 * statistics.fmean(init), color="grey", ls="--", lw=1, label="warm-start")
        ax.set_xticks(range(len(noises)), noises)
        ax.set_xlabel("training reward noise")
        ax.set_ylabel(f"{score_name(k)} clean accuracy (%), mean and 95% CI over seeds")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_learning_curves(runs: list[Run], path: Path) -> None:
    """One panel per (task, noise), three per row: clean accuracy against RL step, mean over seeds with a shaded
    95% t-interval, one line per method."""
    plt = _pyplot()
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
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
