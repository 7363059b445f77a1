"""Which way to run a study on this machine: `python benchmarks/launchers.py [--steps 30] [--rounds 1]`.

Runs the same small grid of the noise_robustness study (algo {ppo, dvpo} x seed {1, 2}, flip0.2, the
testbed warm-start) twice per round, alternating: (a) Hydra's basic launcher, one job at a time with
`threads=2`; (b) the study's joblib launcher, two single-threaded jobs side by side. Prints the wall time
of each grid and the jobs per hour it implies. Each variant writes to a fresh temporary sweep folder
(`resume` never skips anything here). The faster one is the study's default (`sweeps/*.yaml`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "basic, 1 job x 2 threads": ["hydra/launcher=basic", "threads=2"],
    "joblib, 2 jobs x 1 thread": ["hydra.launcher.n_jobs=2", "threads=1"],
}


def grid(extra: list[str], steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "dvpo_lab",
            "sweep=noise_robustness",
            "algo=ppo,dvpo",
            "seed=1,2",
            "noise=flip0.2",
            f"total_steps={steps}",
            f"eval_every={steps}",
            f"ckpt_every={steps}",
            f"hydra.sweep.dir={tmp}/sweep",
            *extra,
            "-m",
        ]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0 or len(list(Path(tmp).rglob("summary.json"))) != 4:
            raise SystemExit(f"grid failed ({' '.join(extra)}):\n{proc.stderr[-3000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="RL steps per job (4 jobs per grid)")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    walls: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for r in range(args.rounds):
        for name, extra in VARIANTS.items():
            walls[name].append(grid(extra, args.steps))
            print(f"round {r + 1}: {name}: {walls[name][-1]:.1f} s for 4 jobs of {args.steps} RL steps", flush=True)
    print()
    for name, ws in walls.items():
        best = min(ws)
        print(f"{name:<28} best {best:7.1f} s  ({4 / best * 3600:5.0f} jobs/hour at this size)")
    a, b = (min(ws) for ws in walls.values())
    print(f"joblib / basic wall time: {b / a:.2f}")


if __name__ == "__main__":
    main()
