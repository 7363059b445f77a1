"""Step time and peak memory against response length and batch, and memory over a long run.

    python benchmarks/scaling.py lengths [--values 16 32 64 128 256] [overrides]
    python benchmarks/scaling.py batches [--values 16 32 64 128 256] [overrides]
    python benchmarks/scaling.py memory --steps 500 [overrides]

`lengths`: every response has exactly L tokens (`rollout.max_new_tokens=L rollout.min_new_tokens=L`), batch
fixed by the overrides. `batches`: B responses per step (B/8 prompts x 8 samples, minibatch min(B, 64)).
Each point runs in its own process (`benchmarks/step_time.py`'s loop: warm-up step excluded, medians), so
its peak resident memory (ru_maxrss) is its own. `memory`: one run of N steps; resident memory (from
/proc/self/statm) is sampled every 0.5 s and printed at 10 %, 50 % and 100 % of the run: a leak shows as
growth after the first steps. Defaults: algo=grpo, model=tiny at random init
(`model.warm_start=false`), so the numbers measure the machinery, not the answers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def point(overrides: list[str], steps: int) -> dict:
    """One configuration in a fresh process: phase medians (s), tokens per response, peak RSS (MiB)."""
    code = (
        f"import json, resource, sys; sys.path.insert(0, {str(HERE)!r}); "
        "from step_time import time_steps, medians; "
        f"cfg, rows = time_steps({overrides!r}, {steps}, 1); m = medians(rows); "
        "m['resp_len'] = sum(float(r['response_length/mean']) for r in rows) / len(rows); "
        "m['peak_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; "
        "print('RESULT', json.dumps(m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"configuration {overrides} failed:\n{out.stderr[-3000:]}")


def sweep(kind: str, values: list[int], common: list[str], steps: int) -> None:
    print(f"{kind}: {' '.join(common) or '-'}; threads={os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(
        f"  {'value':>6} {'resp len':>9} {'gen s':>8} {'score s':>8} {'update s':>9} {'step s':>8} "
        f"{'step / value (ms)':>18} {'peak MiB':>9}"
    )
    for v in values:
        if kind == "lengths":
            ov = [f"rollout.max_new_tokens={v}", f"rollout.min_new_tokens={v}"]
        else:
            ov = [
                f"rollout.prompts_per_step={max(1, v // 8)}",
                "rollout.samples_per_prompt=8",
                f"rollout.minibatch_size={min(v, 64)}",
            ]
        m = point([*common, *ov], steps)
        print(
            f"  {v:>6} {m['resp_len']:>9.1f} {m['gen']:>8.3f} {m['old_log_prob']:>8.3f} {m['update']:>9.3f} "
            f"{m['step']:>8.3f} {1e3 * m['step'] / v:>18.2f} {m['peak_mib']:>9.0f}",
            flush=True,
        )


def memory(common: list[str], steps: int) -> None:
    import threading
    import time

    sys.path.insert(0, str(HERE))
    from step_time import time_steps

    page = os.sysconf("SC_PAGE_SIZE")
    rss: list[float] = []
    done = threading.Event()

    def sample() -> None:  # resident memory every 0.5 s while the run lasts
        while not done.is_set():
            with open("/proc/self/statm") as f:
                rss.append(int(f.read().split()[1]) * page / 2**20)
            time.sleep(0.5)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    time_steps(common, steps, 0)
    done.set()
    t.join()
    marks = sorted({max(1, len(rss) // 10), len(rss) // 2, len(rss)})
    print(
        f"memory over {steps} RL steps, {time.perf_counter() - t0:.0f} s ({' '.join(common) or '-'}): resident "
        "MiB at "
        + ", ".join(f"{100 * k // len(rss)}% of the run {rss[k - 1]:.0f}" for k in marks)
        + f"; max {max(rss):.0f}; from 10% to the end {rss[-1] - rss[marks[0] - 1]:+.0f} MiB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["lengths", "batches", "memory"])
    ap.add_argument("--values", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--steps", type=int, default=4, help="timed steps per point (memory: steps of the run)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides common to every point")
    args = ap.parse_intermixed_args()
    common = ["algo=grpo", "model.warm_start=false", *args.overrides]
    if args.mode == "memory":
        memory(common, args.steps)
    else:
        sweep(args.mode, args.values, common, args.steps)


if __name__ == "__main__":
    main()
