"""Markdown tables of a sweep (per cell, per seed, paired against a baseline) and the order of their rows.

A cell is (task, method, noise) and holds its finished runs sorted by seed. Rows follow the study's order:
tasks by name, methods by `experiment=` preset then by name with numbers compared as numbers, noises as
`NOISE_ORDER` lists them (others after, by name). Accuracies print as percentages with one decimal.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict

from dvpo_lab.report.runs import Run
from dvpo_lab.report.stats import bootstrap_interval, t_interval

NOISE_ORDER = ["none", "flip0.1", "flip0.2", "flip0.3", "asym_fp0.1_fn0.3", "gauss0.3", "rm0.72", "majority_vote"]


def _pct(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _ci(m: float, lo: float, hi: float) -> str:
    return f"{_pct(m)} [{_pct(lo)}, {_pct(hi)}]" if not math.isnan(lo) else _pct(m)


def noise_key(noise: str) -> tuple[int, str]:
    """Sort key of a noise name: `NOISE_ORDER`'s order, unknown names after it by name."""
    return (NOISE_ORDER.index(noise) if noise in NOISE_ORDER else len(NOISE_ORDER), noise)


def cells(runs: list[Run]) -> dict[tuple[str, str, str], list[Run]]:
    """The finished runs grouped by (task, method, noise), each group sorted by seed, groups in the study's order."""
    out: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for r in runs:
        if r.status == "finished":
            out[(r.task, r.method, r.noise)].append(r)
    for rs in out.values():
        rs.sort(key=lambda r: r.seed)
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], _method_key(kv[0][1], kv[1]), noise_key(kv[0][2]))))


def natural_key(name: str) -> list:
    """Sort key with numbers compared as numbers: n_quantiles=50 < 200 < 500."""
    return [
        (0, float(p), "") if re.fullmatch(r"\d+(\.\d+)?", p) else (1, 0.0, p)
        for p in re.split(r"(\d+(?:\.\d+)?)", name)
        if p
    ]


def _method_key(method: str, runs: list[Run]) -> tuple:
    """The study's order: by `experiment=` preset (ablation rows 1..5), then by name."""
    return runs[0].preset, natural_key(method)


def method_order(c: dict[tuple[str, str, str], list[Run]], task: str | None = None) -> list[str]:
    """The methods of `cells` (of one task) in the study's order."""
    key = {m: _method_key(m, rs) for (t, m, _), rs in c.items() if task is None or t == task}
    return sorted(key, key=key.get)


def summary_table(runs: list[Run]) -> str:
    """One row per cell: seeds, RL steps, warm-start and final accuracy (95% t-interval), seed sd (points), gain
    over the warm-start (points, 95% t-interval), mean of the last three evaluations, mean wall time (s)."""
    lines = [
        "| task | method | noise | seeds | RL steps | initial % | final % [95% CI] | seed sd "
        "| gain (points) [95% CI] | last-3 mean % | wall per run (s) |",
        "|---" * 11 + "|",
    ]
    for (task, method, noise), rs in cells(runs).items():
        final = [r.final for r in rs]
        gain = [r.final - r.initial for r in rs]
        sd = statistics.stdev(final) * 100 if len(final) > 1 else math.nan
        walls = [r.wall_s for r in rs if not math.isnan(r.wall_s)]
        lines.append(
            f"| {task} | {method} | {noise} | {len(rs)} | {'/'.join(sorted({str(r.total_steps) for r in rs}))} "
            f"| {_pct(statistics.fmean(r.initial for r in rs))} | {_ci(*t_interval(final))} "
            f"| {'-' if math.isnan(sd) else f'{sd:.1f}'} | {_ci(*t_interval(gain))} "
            f"| {_pct(statistics.fmean(r.last3 for r in rs))} | {statistics.fmean(walls) if walls else math.nan:.0f} |"
        )
    return "\n".join(lines)


def per_seed_table(runs: list[Run]) -> str:
    """Final accuracy (%) per (task, noise, seed) row, one column per method; `-` where a method has no run."""
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
    """Per (task, noise, method): final accuracy minus `baseline`'s on the same seeds (points), with a bootstrap
    and a t 95% interval and the count of seeds above; None when no run has method `baseline`."""
    c = cells(runs)
    if not any(m == baseline for _, m, _ in c):
        return None
    lines = [
        f"| task | noise | method | seeds paired | mean difference vs {baseline} (points) | bootstrap 95% CI "
        f"| t 95% CI | seeds above {baseline} |",
        "|---|---|---|---|---|---|---|---|",
    ]
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
        lines.append(
            f"| {task} | {noise} | {method} | {len(diffs)} | {100 * statistics.fmean(diffs):+.1f} "
            f"| [{100 * lo:+.1f}, {100 * hi:+.1f}]{verdict} | [{100 * tlo:+.1f}, {100 * thi:+.1f}] "
            f"| {sum(d > 0 for d in diffs)} of {len(diffs)} |"
        )
    return "\n".join(lines)
