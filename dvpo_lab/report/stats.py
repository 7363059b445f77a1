"""Intervals over seeds: the 95% t-interval of a mean and a seeded percentile bootstrap of a mean; and the split of
a seed x method block of scores into a seed effect and a residual.

Both take a list of per-seed values (accuracies or paired differences, fractions) and return bounds in the
same unit; `paired_verdict` reads the two intervals of a paired difference together. The bootstrap is numpy's
(seeded, so a report is the same every time it is generated); scipy's `stats.bootstrap` would draw differently
and change the committed reports' intervals.
"""

from __future__ import annotations

import math
import statistics

import numpy as np


def t_interval(xs: list[float]) -> tuple[float, float, float]:
    """(mean, lower, upper) of the 95% t-interval; a single value has no interval (nan bounds)."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, math.nan, math.nan
    from scipy.stats import t  # imported here: importing the package stays light

    half = t.ppf(0.975, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, m - half, m + half


def bootstrap_interval(xs: list[float], n: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean over `n` resamples (seeded: the same report every time);
    fewer than two values have no interval (nan bounds)."""
    a = np.asarray(xs, dtype=float)
    if len(a) < 2:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n, len(a)))
    means = a[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_verdict(boot: tuple[float, float], t: tuple[float, float]) -> str:
    """The verdict on a paired difference from its bootstrap and t 95% intervals, (lower, upper) each: "ahead"
    when both lie above 0, "behind" when both lie below 0, "tied" when both contain 0, "unclear (intervals
    disagree)" otherwise (with 3 seeds the percentile bootstrap is narrow and can exclude 0 where the t-interval
    does not). "-" when either interval is missing (fewer than two seeds)."""
    if any(math.isnan(x) for x in (*boot, *t)):
        return "-"
    if boot[0] > 0 and t[0] > 0:
        return "ahead"
    if boot[1] < 0 and t[1] < 0:
        return "behind"
    if boot[0] <= 0 <= boot[1] and t[0] <= 0 <= t[1]:
        return "tied"
    return "unclear (intervals disagree)"


def seed_effect_split(x: list[list[float]]) -> tuple[float, float, float]:
    """Two-way analysis of variance without replication of scores `x[seed][method]` (at least 2 x 2):
    x = grand mean + seed effect + method effect + residual. Returns (sd over seeds of the seed effect, each seed's
    mean over the methods minus the grand mean; residual sd, sqrt(SS_res / ((seeds - 1)(methods - 1))); the seed
    effect's share of the two, SS_seed / (SS_seed + SS_res), nan when both are 0), in the unit of `x`."""
    a = np.asarray(x, dtype=float)
    n, m = a.shape
    grand = a.mean()
    seed_eff = a.mean(1) - grand
    resid = a - grand - seed_eff[:, None] - (a.mean(0) - grand)[None, :]
    ss_seed, ss_res = m * float((seed_eff**2).sum()), float((resid**2).sum())
    share = ss_seed / (ss_seed + ss_res) if ss_seed + ss_res > 0 else math.nan
    return float(seed_eff.std(ddof=1)), math.sqrt(ss_res / ((n - 1) * (m - 1))), share
