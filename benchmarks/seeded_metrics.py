"""Seeded metrics of short runs, to show that a change of code leaves the numbers as they were.

    python benchmarks/seeded_metrics.py --out before.json            # on the old code
    python benchmarks/seeded_metrics.py --compare before.json        # on the new code: differences per run

Runs every configuration in CASES (each algorithm, each noise model, each task, a DVPO ablation preset) as
`python -m dvpo_lab debug=smoke ...` in its own process and keeps every logged metric per RL step except wall
times (`timing_s/*`, `perf/*`). `--compare` prints, per run, the metrics that differ and the largest difference;
exit status 1 when any does. Same machine only: another CPU's floating-point path may change the last bits.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CASES: dict[str, list[str]] = {
    **{f"{a}": [f"algo={a}"] for a in ("ppo", "grpo", "dr_grpo", "rloo", "reinforce_pp", "rbppo", "dvpo")},
    "dvpo_ablation_3": ["algo=dvpo", "experiment=ablation_3_calib", "debug=smoke"],
    "dvpo_steps8": [
        "algo=dvpo",
        "total_steps=8",
        "rollout.prompts_per_step=4",
        "rollout.samples_per_prompt=4",
        "rollout.minibatch_size=8",
    ],
    "ppo_kl": ["algo=ppo", "algo.use_kl_in_reward=true", "algo.use_kl_loss=true", "algo.kl_ctrl=adaptive"],
    **{
        f"ppo_{n}": ["algo=ppo", f"noise={n}"]
        for n in ("none", "asym_fp0.1_fn0.3", "gauss0.3", "rm0.72", "majority_vote")
    },
    "grpo_flip_group": ["algo=grpo", "noise.granularity=group"],
    **{f"grpo_{t}": ["algo=grpo", f"task={t}"] for t in ("sciqa", "dialogue", "arith_teacher")},
}
SKIP_PREFIX = ("timing_s/", "perf/")


def run_case(name: str, overrides: list[str], root: Path) -> dict[str, list[float]]:
    out = root / name
    cmd = [
        sys.executable,
        "-m",
        "dvpo_lab",
        "debug=smoke",
        "logger=csv",
        "callbacks=none",
        "export.enabled=false",
        f"hydra.run.dir={out}",
        *overrides,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    if res.returncode != 0:
        raise SystemExit(f"{name}: exit {res.returncode}\n{res.stderr[-3000:]}")
    metrics: dict[str, list[float]] = {}
    with open(out / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if v not in ("", None) and not k.startswith(SKIP_PREFIX):
                    metrics.setdefault(k, []).append(float(v))
    return metrics


def compare(old: dict, new: dict) -> int:
    bad = 0
    for name in old:
        if name not in new:
            print(f"{name}: not run")
            continue
        a, b = old[name], new[name]
        diffs = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b or len(a[k]) != len(b[k]):
                diffs.append((k, math.inf))
                continue
            d = max(
                (abs(x - y) for x, y in zip(a[k], b[k], strict=True) if not (math.isnan(x) and math.isnan(y))),
                default=0.0,
            )
            if d > 0:
                diffs.append((k, d))
        bad += bool(diffs)
        print(f"{name}: " + ("identical" if not diffs else ", ".join(f"{k} {d:.3g}" for k, d in diffs)))
    return 1 if bad else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the metrics here")
    p.add_argument("--compare", type=Path, help="compare with metrics written earlier by --out")
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        got = {}
        for name in args.cases:
            got[name] = run_case(name, CASES[name], Path(tmp))
            print(f"ran {name}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(got, indent=1))
    if args.compare:
        raise SystemExit(compare(json.loads(args.compare.read_text()), got))


if __name__ == "__main__":
    main()
