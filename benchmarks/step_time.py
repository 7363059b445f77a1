"""Per-phase RL step time for any algo/model/batch: `python benchmarks/step_time.py [--steps N] [overrides]`.

Runs the real training loop (Lightning, the same code path as `python -m dvpo_lab`) for a few steps and
prints the median seconds of each phase (generate, reward, scoring pass, update) and tokens/s, from the
`timing_s/*` metrics the loop logs. Overrides are Hydra overrides, e.g.
`python benchmarks/step_time.py algo=grpo rollout.prompts_per_step=8 rollout.samples_per_prompt=8`.
The warm-start is skipped by default (`model.warm_start=false`): speed does not depend on accuracy much,
except through response length, which the table reports.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
from pathlib import Path

import torch

from dvpo_lab.config import compose_config
from dvpo_lab.run import run

PHASES = ["gen", "reward", "old_log_prob", "update", "step"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="RL steps to time (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1, help="first steps excluded from the medians")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides")
    args = ap.parse_args()
    total = args.steps + args.warmup
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config([
            "model.warm_start=false", "logger=csv", "callbacks=none", f"total_steps={total}",
            f"eval_every={total + 1}", "rollout.eval_limit=1", *args.overrides], tmp)
        run(cfg)
        with (Path(tmp) / "csv" / "metrics.csv").open() as f:
            rows = [r for r in csv.DictReader(f) if r.get("training/step")]
    rows = [r for r in rows if int(float(r["training/step"])) >= args.warmup]
    med = {p: statistics.median(float(r[f"timing_s/{p}"]) for r in rows) for p in PHASES}
    tok = statistics.median(float(r["perf/tokens_per_s"]) for r in rows)
    length = statistics.median(float(r["response_length/mean"]) for r in rows)
    n = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
    print(f"\nalgo={cfg.algo.name} model={cfg.model.name} batch={n} responses "
          f"({cfg.rollout.prompts_per_step} prompts x {cfg.rollout.samples_per_prompt}) "
          f"max_new_tokens={cfg.rollout.max_new_tokens or 'task'} threads={torch.get_num_threads()} "
          f"steps timed={len(rows)}")
    for p in PHASES:
        print(f"  {p:<14}{med[p]:8.3f} s")
    print(f"  {'resp. length':<14}{length:8.1f} tokens\n  {'tokens/s':<14}{tok:8.0f} (response tokens / step time)")
    print(f"  {'samples/s':<14}{n / med['step']:8.1f}")


if __name__ == "__main__":
    main()
