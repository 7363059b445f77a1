"""Do two runs of a study agree within seed noise? Cell by cell, unpaired.

`python benchmarks/compare_studies.py A B [--last-k K]`: A and B are sweep folders or ledgers (`runs.jsonl`), e.g.
the committed study and the same study (or some of its cells) re-run on another machine, thread count, float path
or warm-start. For every (task, method, noise) cell that both hold, prints the seeds, the mean score of each
(`Run.score(K)`: the mean of the last K evaluations during RL, as `python -m dvpo_lab.report --last-k K`), and
B minus A with Welch's 95 % t-interval (scipy.stats.ttest_ind, unequal variances): "within seed noise" when the
interval contains 0. Unpaired because a seed's trajectory differs between machines and warm-starts (the same seed
is not the same run there); the interval is over the two sets of seeds.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from scipy import stats

from dvpo_lab.report.runs import load
from dvpo_lab.report.tables import cells


def compare(a: Path, b: Path, k: int) -> list[str]:
    """The markdown table of B minus A per cell both hold (percentage points)."""
    ca, cb = cells(load([a])), cells(load([b]))
    lines = [
        "| task | method | noise | seeds A | seeds B | A % | B % | B - A (points) [Welch 95 %] | within seed noise |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in [c for c in ca if c in cb]:
        xa = [100 * r.score(k) for r in ca[key]]
        xb = [100 * r.score(k) for r in cb[key]]
        diff = statistics.fmean(xb) - statistics.fmean(xa)
        if len(xa) > 1 and len(xb) > 1:
            lo, hi = stats.ttest_ind(xb, xa, equal_var=False).confidence_interval(0.95)
            ci, same = f"[{lo:+.1f}, {hi:+.1f}]", "yes" if lo <= 0 <= hi else "no"
        else:
            ci, same = "(one seed)", "-"
        lines.append(
            f"| {' | '.join(key)} | {len(xa)} | {len(xb)} | {statistics.fmean(xa):.1f} | {statistics.fmean(xb):.1f} "
            f"| {diff:+.1f} {ci} | {same} |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path, help="sweep folder or runs.jsonl (the reference)")
    p.add_argument("b", type=Path, help="sweep folder or runs.jsonl (the re-run)")
    p.add_argument("--last-k", type=int, default=3)
    args = p.parse_args()
    for path in (args.a, args.b):
        if not path.exists():
            raise SystemExit(f"no such folder or ledger: {path}")
    print(f"A = {args.a}\nB = {args.b}\nscore: mean of the last {args.last_k} evaluations\n")
    print("\n".join(compare(args.a, args.b, args.last_k)))


if __name__ == "__main__":
    main()
