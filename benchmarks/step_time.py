"""Per-phase RL step time for any algo/model/batch: `python benchmarks/step_time.py [--steps N] [overrides]`.

`--compare algo=ppo algo=dvpo` times several configurations side by side instead, alternating A B A B for
`--pairs` rounds on the same machine in one process, and prints each phase's median per configuration and
the ratio of step times against the first one (the DVPO-overhead figure of the docs). Add
`algo.actor_lr=0` to freeze the policy: then every configuration samples the identical rollouts (same seed,
same weights) and only the critic and update work differs, which is what "equal batch" means there.

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


def time_steps(overrides: list[str], steps: int, warmup: int):
    """Run `steps + warmup` RL steps of the real loop; returns (cfg, per-step metric rows after warmup)."""
    total = steps + warmup
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(
            [
                "model.warm_start=false",
                "logger=csv",
                "callbacks=none",
                f"total_steps={total}",
                f"eval_every={total + 1}",
                "rollout.eval_limit=1",
                *overrides,
            ],
            tmp,
        )
        run(cfg)
        with (Path(tmp) / "csv" / "metrics.csv").open() as f:
            rows = [r for r in csv.DictReader(f) if r.get("training/step")]
    return cfg, [r for r in rows if int(float(r["training/step"])) >= warmup]


def medians(rows) -> dict[str, float]:
    return {p: statistics.median(float(r[f"timing_s/{p}"]) for r in rows) for p in PHASES}


def compare(configs: list[str], common: list[str], pairs: int, steps: int, warmup: int) -> None:
    """Alternate the configurations round by round; print phase medians and step-time ratios vs the first.

    Medians pool every timed step of every round (pairs x steps samples per configuration): this machine's
    speed drifts by +-20 % between rounds, so a ratio of pooled medians is steadier than any single round.
    """
    rounds: dict[str, list[dict[str, float]]] = {c: [] for c in configs}
    pooled: dict[str, dict[str, list[float]]] = {c: {p: [] for p in PHASES} for c in configs}
    for _ in range(pairs):
        for c in configs:
            _, rows = time_steps([*common, *c.split()], steps, warmup)
            rounds[c].append(medians(rows))
            for p in PHASES:
                pooled[c][p] += [float(r[f"timing_s/{p}"]) for r in rows]
    med = {c: {p: statistics.median(v) for p, v in ph.items()} for c, ph in pooled.items()}
    print(
        f"\n{pairs} rounds x {steps} timed steps, alternating; common overrides: {' '.join(common) or '-'}; "
        f"threads={torch.get_num_threads()}"
    )
    print(f"  {'config':<28}" + "".join(f"{p:>14}" for p in PHASES))
    for c in configs:
        print(f"  {c:<28}" + "".join(f"{med[c][p]:14.3f}" for p in PHASES))
    base = configs[0]
    # With a frozen policy (algo.actor_lr=0) every configuration generates the identical rollouts, so their
    # generation times differ by machine noise only (+-20 % here): the second ratio times every
    # configuration's own post-generation work (step - gen, per step) on top of one shared generation median.
    gen = statistics.median(g for c in configs for g in pooled[c]["gen"])
    rest = {
        c: statistics.median(s - g for s, g in zip(pooled[c]["step"], pooled[c]["gen"], strict=True)) for c in configs
    }
    for c in configs[1:]:
        per_round = [r["step"] / b["step"] for r, b in zip(rounds[c], rounds[base], strict=True)]
        print(
            f"  step-time ratio {c} / {base}: {med[c]['step'] / med[base]['step']:.3f} (pooled medians; "
            f"update phase {med[c]['update'] / med[base]['update']:.3f}, scoring pass "
            f"{med[c]['old_log_prob'] / med[base]['old_log_prob']:.3f}); per round "
            f"{', '.join(f'{x:.3f}' for x in per_round)}"
        )
        print(
            f"    with the generation phase shared ({gen:.3f} s; same rollouts only if the policy is frozen): "
            f"{(gen + rest[c]) / (gen + rest[base]):.3f} (after generation: {rest[c]:.3f} vs {rest[base]:.3f} s)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="RL steps to time (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1, help="first steps excluded from the medians")
    ap.add_argument(
        "--compare",
        nargs="+",
        default=None,
        help='configurations to alternate, each one quoted string of overrides, e.g. "algo=ppo"',
    )
    ap.add_argument("--pairs", type=int, default=3, help="rounds of the --compare alternation")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (common to all configurations)")
    args = ap.parse_args()
    if args.compare:
        compare(args.compare, args.overrides, args.pairs, args.steps, args.warmup)
        return
    cfg, rows = time_steps(args.overrides, args.steps, args.warmup)
    med = medians(rows)
    tok = statistics.median(float(r["perf/tokens_per_s"]) for r in rows)
    length = statistics.median(float(r["response_length/mean"]) for r in rows)
    n = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
    print(
        f"\nalgo={cfg.algo.name} model={cfg.model.name} batch={n} responses "
        f"({cfg.rollout.prompts_per_step} prompts x {cfg.rollout.samples_per_prompt}) "
        f"max_new_tokens={cfg.rollout.max_new_tokens or 'task'} threads={torch.get_num_threads()} "
        f"steps timed={len(rows)}"
    )
    for p in PHASES:
        print(f"  {p:<14}{med[p]:8.3f} s")
    print(f"  {'resp. length':<14}{length:8.1f} tokens\n  {'tokens/s':<14}{tok:8.0f} (response tokens / step time)")
    print(f"  {'samples/s':<14}{n / med['step']:8.1f}")


if __name__ == "__main__":
    main()
