"""Aggregate a sweep into a report: `python -m dvpo_lab.report DIR [DIR ...]` (the CLI's help says what it writes).

One module per job:
- `runs`: a job's folder or ledger line read into a `Run`; the ledger (`runs.jsonl`) and `restore`.
- `stats`: 95% t-interval and seeded percentile bootstrap of a mean over seeds.
- `tables`: the markdown tables (per cell, per seed, paired against a baseline) and the order of their rows.
- `plots`: final accuracy against noise, learning curves (matplotlib PNGs).
- `cli`: `write_report` (report.md, plots, ledger) and the argparse `main`.
"""

from dvpo_lab.report.cli import main, write_report
from dvpo_lab.report.plots import plot_accuracy_vs_noise, plot_learning_curves
from dvpo_lab.report.runs import LEDGER, NOT_METHOD, Run, ledger_line, ledger_run, load, restore, split_common
from dvpo_lab.report.stats import bootstrap_interval, t_interval
from dvpo_lab.report.tables import (
    NOISE_ORDER,
    cells,
    method_order,
    natural_key,
    noise_key,
    paired_table,
    per_seed_table,
    summary_table,
)

__all__ = [
    "LEDGER",
    "NOISE_ORDER",
    "NOT_METHOD",
    "Run",
    "bootstrap_interval",
    "cells",
    "ledger_line",
    "ledger_run",
    "load",
    "main",
    "method_order",
    "natural_key",
    "noise_key",
    "paired_table",
    "per_seed_table",
    "plot_accuracy_vs_noise",
    "plot_learning_curves",
    "restore",
    "split_common",
    "summary_table",
    "t_interval",
    "write_report",
]
