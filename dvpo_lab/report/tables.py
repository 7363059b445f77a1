"""Markdown tables of a sweep (per cell, per seed, the choice of k, where the seed spread comes from, paired
against a baseline, the verdict per noise level) and the order of their rows.

A cell is (task, method, noise) and holds its finished runs sorted by seed. A run's score is `Run.score(k)`: its
final evaluation (k = 1) or the mean of its last k evaluations during RL. Rows follow the study's order:
tasks by name, methods by `experiment=` preset then by name with numbers compared as numbers, noises as
`NOISE_ORDER` lists them (others after, by name). Accuracies print as percentages with one decimal.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass

from dvpo_lab.report.runs import Run
from dvpo_lab.report.stats import bootstrap_interval, paired_verdict, seed_effect_split, t_interval

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


def score_name(k: int) -> str:
    """How the report names a run's score: "final" (the last evaluation) for k = 1, "last-k mean" otherwise."""
    return "final" if k == 1 else f"last-{k} mean"


def summary_table(runs: list[Run], k: int = 1) -> str:
    """One row per cell: seeds, RL steps, warm-start accuracy, the score (`Run.score(k)`: the final evaluation for
    k = 1, the mean of the last k otherwise) with its 95% t-interval, seed sd of the score (points), gain of the
    score over the warm-start (points, 95% t-interval), mean of the last three evaluations, mean wall time (s)."""
    score_col = "final %" if k == 1 else f"score ({score_name(k)}) %"
    lines = [
        f"| task | method | noise | seeds | RL steps | initial % | {score_col} [95% CI] | seed sd "
        "| gain (points) [95% CI] | last-3 mean % | wall per run (s) |",
        "|---" * 11 + "|",
    ]
    for (task, method, noise), rs in cells(runs).items():
        score = [r.score(k) for r in rs]
        gain = [r.score(k) - r.initial for r in rs]
        sd = statistics.stdev(score) * 100 if len(score) > 1 else math.nan
        walls = [r.wall_s for r in rs if not math.isnan(r.wall_s)]
        lines.append(
            f"| {task} | {method} | {noise} | {len(rs)} | {'/'.join(sorted({str(r.total_steps) for r in rs}))} "
            f"| {_pct(statistics.fmean(r.initial for r in rs))} | {_ci(*t_interval(score))} "
            f"| {'-' if math.isnan(sd) else f'{sd:.1f}'} | {_ci(*t_interval(gain))} "
            f"| {_pct(statistics.fmean(r.last3 for r in rs))} | {statistics.fmean(walls) if walls else math.nan:.0f} |"
        )
    return "\n".join(lines)


def per_seed_table(runs: list[Run], k: int = 1) -> str:
    """Score (%, `Run.score(k)`) per (task, noise, seed) row, one column per method; `-` where a method has no run."""
    c = cells(runs)
    methods = method_order(c)
    rows: dict[tuple[str, str, int], dict[str, float]] = defaultdict(dict)
    for (task, method, noise), rs in c.items():
        for r in rs:
            rows[(task, noise, r.seed)][method] = r.score(k)
    lines = ["| task | noise | seed | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
    for (task, noise, seed), vals in sorted(rows.items(), key=lambda kv: (kv[0][0], noise_key(kv[0][1]), kv[0][2])):
        accs = " | ".join(_pct(vals.get(m, math.nan)) for m in methods)
        lines.append(f"| {task} | {noise} | {seed} | {accs} |")
    return "\n".join(lines)


def cell_sds(runs: list[Run], k: int) -> list[float]:
    """Seed sd (points) of the score `Run.score(k)` of every cell with at least two seeds, in `cells` order."""
    return [100 * statistics.stdev(r.score(k) for r in rs) for rs in cells(runs).values() if len(rs) > 1]


def choice_of_k_table(runs: list[Run], ks: tuple[int, ...] = (1, 2, 3, 4, 5), chosen: int = 1) -> str | None:
    """The evidence for the number k of final evaluations a score averages: per k of `ks` (plus `chosen`) that every
    finished run has (so each row is a true last-k mean), the median over cells of the seed sd (points) and the
    number of cells whose seed sd is at most 2 points, out of the cells with at least two seeds. The chosen k's row
    is marked. None when no finished run evaluated after step 0 or no cell has two seeds."""
    finished = [r for r in runs if r.status == "finished"]
    most = min((len(r.evaluations) for r in finished), default=0)
    rows = [k for k in sorted({*ks, chosen}) if k <= most]
    if not rows or not cell_sds(runs, 1):
        return None
    lines = ["| k | median seed sd across cells (points) | cells with seed sd <= 2 points |", "|---|---|---|"]
    for k in rows:
        sds = cell_sds(runs, k)
        mark = " (this report)" if k == chosen else ""
        lines.append(f"| {k}{mark} | {statistics.median(sds):.1f} | {sum(sd <= 2 for sd in sds)} of {len(sds)} |")
    return "\n".join(lines)


def seed_spread_table(runs: list[Run], k: int = 1) -> str | None:
    """Where a cell's seed sd comes from, per (task, noise) with at least two methods and two seeds that every one
    of those methods ran (a complete seed x method block; other seeds are left out here). The scores `Run.score(k)`
    are fit as grand mean + seed effect + method effect + residual (two-way analysis of variance without
    replication). Columns, in points: the median seed sd of the column's cells (on the block's seeds); the sd over
    seeds of the seed effect (each seed's score averaged over the methods): what that seed's warm-start and draws
    do to every method alike; the residual sd, sqrt(SS_res / ((seeds - 1)(methods - 1))): the spread a cell would
    keep if every seed shared one seed effect, the part a comparison paired on seeds sees; and the seed effect's
    share of the column's variance, SS_seed / (SS_seed + SS_res), %. None when no (task, noise) has such a block."""
    by_col: dict[tuple[str, str], dict[str, dict[int, float]]] = defaultdict(dict)
    for (task, method, noise), rs in cells(runs).items():
        by_col[(task, noise)][method] = {r.seed: r.score(k) for r in rs}
    lines = [
        "| task | noise | seeds x methods | median cell seed sd | seed effect sd | residual sd | seed share of "
        "variance % |",
        "|---" * 7 + "|",
    ]
    for (task, noise), per_method in sorted(by_col.items(), key=lambda kv: (kv[0][0], noise_key(kv[0][1]))):
        seeds = sorted(set.intersection(*(set(v) for v in per_method.values())))
        methods = list(per_method)
        n, m = len(seeds), len(methods)
        if n < 2 or m < 2:
            continue
        x = [[per_method[j][i] for j in methods] for i in seeds]  # [seed][method]
        seed_sd, resid_sd, share = seed_effect_split(x)
        cell_sd = statistics.median(statistics.stdev(x[i][j] for i in range(n)) for j in range(m))
        lines.append(
            f"| {task} | {noise} | {n} x {m} | {100 * cell_sd:.1f} | {100 * seed_sd:.1f} | {100 * resid_sd:.1f} "
            f"| {100 * share:.0f} |"
        )
    return "\n".join(lines) if len(lines) > 2 else None


@dataclass
class Paired:
    """One method against the baseline in one (task, noise): per-seed score differences (fractions, method minus
    baseline on the same seed), their mean, bootstrap and t 95% intervals (lower, upper), the t half-width and
    the verdict (`paired_verdict`)."""

    task: str
    noise: str
    method: str
    diffs: list[float]
    mean: float
    boot: tuple[float, float]
    t: tuple[float, float]
    half: float  # half-width of the t-interval, nan with one seed
    verdict: str

    @property
    def close(self) -> bool:
        """True when the difference is not clear of 0 by a margin: |mean| < 2 t half-widths (or one seed only), so
        more seeds are what it needs."""
        return math.isnan(self.half) or abs(self.mean) < 2 * self.half


def paired(runs: list[Run], baseline: str, k: int = 1) -> list[Paired] | None:
    """Every non-baseline (task, method, noise) cell paired seed by seed with `baseline`'s cell of the same task and
    noise, on the score `Run.score(k)`, in `cells` order; None when no run has method `baseline`."""
    c = cells(runs)
    if not any(m == baseline for _, m, _ in c):
        return None
    out = []
    for (task, method, noise), rs in c.items():
        base = {r.seed: r.score(k) for r in c.get((task, baseline, noise), [])}
        if method == baseline or not base:
            continue
        diffs = [r.score(k) - base[r.seed] for r in rs if r.seed in base]
        if not diffs:
            continue
        boot = bootstrap_interval(diffs)
        m, tlo, thi = t_interval(diffs)
        out.append(Paired(task, noise, method, diffs, m, boot, (tlo, thi), thi - m, paired_verdict(boot, (tlo, thi))))
    return out


def _signed(lo: float, hi: float) -> str:
    return "-" if math.isnan(lo) else f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"


def paired_table(runs: list[Run], baseline: str, k: int = 1) -> str | None:
    """Per (task, noise, method): score minus `baseline`'s on the same seeds (points), with a bootstrap and a t 95%
    interval, the t half-width, the verdict (`paired_verdict`) and the count of seeds above; None when no run has
    method `baseline`."""
    rows = paired(runs, baseline, k)
    if rows is None:
        return None
    lines = [
        f"| task | noise | method | seeds paired | mean difference vs {baseline} (points) | bootstrap 95% CI "
        f"| t 95% CI | CI half-width (t) | verdict | seeds above {baseline} |",
        "|---" * 10 + "|",
    ]
    for p in rows:
        half = "-" if math.isnan(p.half) else f"{100 * p.half:.1f}"
        lines.append(
            f"| {p.task} | {p.noise} | {p.method} | {len(p.diffs)} | {100 * p.mean:+.1f} | {_signed(*p.boot)} "
            f"| {_signed(*p.t)} | {half} | {p.verdict} | {sum(d > 0 for d in p.diffs)} of {len(p.diffs)} |"
        )
    return "\n".join(lines)


def verdict_table(runs: list[Run], baseline: str, k: int = 1) -> str | None:
    """One row per (task, noise, non-baseline method), noises in the study's order: mean paired difference (points),
    t 95% interval, verdict (`paired_verdict`) and "close" (yes when |mean| < 2 t half-widths: more seeds needed);
    None when no run has method `baseline`."""
    rows = paired(runs, baseline, k)
    if rows is None:
        return None
    lines = [
        f"| task | noise | method | mean difference vs {baseline} (points) | t 95% CI | verdict | close |",
        "|---" * 7 + "|",
    ]
    for p in sorted(rows, key=lambda p: (p.task, noise_key(p.noise))):  # stable: methods stay in the study's order
        lines.append(
            f"| {p.task} | {p.noise} | {p.method} | {100 * p.mean:+.1f} | {_signed(*p.t)} | {p.verdict} "
            f"| {'yes' if p.close else 'no'} |"
        )
    return "\n".join(lines)
