"""How much of the warm-starts' spread is the size of the test set?

`python benchmarks/warmstart_eval_size.py [--seeds 1 2 ...] [--sizes 500 2000 4000] [overrides ...]`

For each seed, the default testbed's warm-start (`python -m dvpo_lab mode=sft seed=S`: read from the cache,
trained there first when missing) is evaluated greedily on the first N held-out problems of `task=arith_teacher`
for each N (the test split is a stream: its first 500 are the 500 that `val/acc` uses). Prints the accuracy per
seed and N, and per N the mean, the sd and the range across seeds. If the warm-starts differ only on a few
near-tie problems that land right or wrong at random, the sd shrinks as 1/sqrt(N); if they differ in what they
learned, it does not. Name the CPU (`lscpu | grep 'Model name'`) beside the figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dvpo_lab.config import compose_config  # noqa: E402
from dvpo_lab.evaluate import greedy_scores  # noqa: E402
from dvpo_lab.models.build import build_policy, build_tokenizer  # noqa: E402
from dvpo_lab.rollout import prompt_budget  # noqa: E402
from dvpo_lab.run import make_task  # noqa: E402
from dvpo_lab.sft import warm_start  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 4000])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every seed's config")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path("outputs/benchmarks/warmstart_eval_size")
    acc: dict[int, dict[int, float]] = {}
    for seed in args.seeds:
        cfg = compose_config([f"seed={seed}", *args.overrides], out / f"seed{seed}")
        folder = warm_start(cfg, make_task(cfg))  # the run's own warm-start (its task: the first 500 problems)
        tokenizer = build_tokenizer(cfg.model)
        policy = build_policy(cfg.model, tokenizer, str(folder)).eval()
        big = compose_config([f"seed={seed}", f"task.n_test={max(args.sizes)}", *args.overrides], out / "eval")
        task = make_task(big)
        problems = task.test_problems()
        max_new_tokens = cfg.rollout.max_new_tokens or task.max_response_len
        with torch.no_grad():
            scores, _ = greedy_scores(
                policy,
                tokenizer,
                task,
                problems,
                batch_size=256,
                max_new_tokens=max_new_tokens,
                max_prompt_len=prompt_budget(policy, max_new_tokens),
            )
        acc[seed] = {n: 100 * float(scores[:n].mean()) for n in args.sizes}
        print(f"seed {seed}: " + ", ".join(f"{acc[seed][n]:.1f} % on {n}" for n in args.sizes), flush=True)
    print("\n| test problems | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | sd | range |")
    print("|---" * (len(args.seeds) + 4) + "|")
    for n in args.sizes:
        v = [acc[s][n] for s in args.seeds]
        sd = statistics.stdev(v) if len(v) > 1 else float("nan")
        cells = " | ".join(f"{x:.1f}" for x in v)
        print(f"| {n} | {cells} | {statistics.mean(v):.1f} | {sd:.2f} | {max(v) - min(v):.1f} |")


if __name__ == "__main__":
    main()
