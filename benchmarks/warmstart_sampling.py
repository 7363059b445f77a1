"""Does anything measurable in a warm-start predict how far RL climbs from it?

`python benchmarks/warmstart_sampling.py [--seeds 1 2 ...] [--samples 8] [--ledger L --noise N --last-k K]
[overrides ...]`

For each seed, the default testbed's warm-start (`python -m dvpo_lab mode=sft seed=S`: read from the cache,
trained there first when missing) answers the 500 test problems (`val/acc`'s) greedily and `--samples` times at
temperature 1, the rollout's sampling. Prints per seed: the greedy accuracy; the sampled accuracy (the mean over
all samples); on the problems the greedy answer gets wrong (mostly the teacher's blind spot), the sampled
accuracy and the share of problems with at least one right answer among the samples (what RL can reinforce
there). With `--ledger` (a study's `runs.jsonl`), each seed's RL score is added: the mean over that noise
column's methods of the last-K evaluation mean (`Run.score`), and the Spearman rank correlation
(`scipy.stats.spearmanr`) of each warm-start figure with it over the seeds. Sampling is seeded by the seed, so a
rerun on the same machine prints the same numbers. Name the CPU (`lscpu | grep 'Model name'`) beside them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dvpo_lab.config import compose_config  # noqa: E402
from dvpo_lab.evaluate import greedy_scores  # noqa: E402
from dvpo_lab.models.build import build_policy, build_tokenizer  # noqa: E402
from dvpo_lab.multiturn import sample_for_task  # noqa: E402
from dvpo_lab.report import load  # noqa: E402
from dvpo_lab.rollout import prompt_budget  # noqa: E402
from dvpo_lab.run import make_task  # noqa: E402
from dvpo_lab.sft import warm_start  # noqa: E402

FIGURES = ("greedy %", "sampled %", "sampled on greedy-wrong %", "any right of n on greedy-wrong %")


def warmstart_figures(seed: int, samples: int, overrides: list[str], out: Path) -> dict[str, float]:
    """The four `FIGURES` of seed `seed`'s warm-start on the task's test problems, in %."""
    cfg = compose_config([f"seed={seed}", *overrides], out / f"seed{seed}")
    task = make_task(cfg)
    folder = warm_start(cfg, task)
    tokenizer = build_tokenizer(cfg.model)
    policy = build_policy(cfg.model, tokenizer, str(folder)).eval()
    problems = task.test_problems()
    max_new_tokens = cfg.rollout.max_new_tokens or task.max_response_len
    max_prompt_len = prompt_budget(policy, max_new_tokens)
    sampled = []
    with torch.no_grad():
        g, _ = greedy_scores(policy, tokenizer, task, problems, 250, max_new_tokens, max_prompt_len)
        for i in range(0, len(problems), 250):
            rep = [p for p in problems[i : i + 250] for _ in range(samples)]
            ro = sample_for_task(
                policy,
                tokenizer,
                task,
                rep,
                max_new_tokens=max_new_tokens,
                max_prompt_len=max_prompt_len,
                do_sample=True,
                temperature=1.0,
                seed=seed + i,
            )
            sampled.append(task.score(ro.texts, rep).float().view(-1, samples))
    g, s = g.float(), torch.cat(sampled)
    wrong = s[g == 0]
    return dict(
        zip(
            FIGURES,
            (
                100 * g.mean().item(),
                100 * s.mean().item(),
                100 * wrong.mean().item(),
                100 * (wrong.max(1).values > 0).float().mean().item(),
            ),
            strict=True,
        )
    )


def rl_scores(ledger: Path, noise: str, k: int) -> dict[int, float]:
    """Per seed, the mean over the column's methods of `Run.score(k)` (%), from a study's ledger."""
    per_seed: dict[int, list[float]] = defaultdict(list)
    for r in load([ledger]):
        if r.status == "finished" and r.noise == noise:
            per_seed[r.seed].append(100 * r.score(k))
    return {s: statistics.fmean(v) for s, v in per_seed.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    ap.add_argument("--samples", type=int, default=8, help="temperature-1 samples per problem (the rollout's n)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ledger", type=Path, help="a study's runs.jsonl, for each seed's RL score")
    ap.add_argument("--noise", default="none", help="the ledger's noise column")
    ap.add_argument("--last-k", type=int, default=3)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every seed's config")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path("outputs/benchmarks/warmstart_sampling")
    scores = rl_scores(args.ledger, args.noise, args.last_k) if args.ledger else {}
    head = ["seed", *FIGURES] + ([f"RL last-{args.last_k} ({args.noise}) %"] if scores else [])
    print("| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|")
    rows = {}
    for seed in args.seeds:
        rows[seed] = warmstart_figures(seed, args.samples, args.overrides, out)
        cols = [f"{rows[seed][f]:.1f}" for f in FIGURES]
        if scores:
            cols.append(f"{scores[seed]:.1f}" if seed in scores else "-")
        print(f"| {seed} | " + " | ".join(cols) + " |", flush=True)
    both = [s for s in args.seeds if s in scores]
    if len(both) > 2:
        from scipy.stats import spearmanr

        print(f"\nSpearman rank correlation with the RL score over {len(both)} seeds:")
        for f in FIGURES:
            rho, p = spearmanr([rows[s][f] for s in both], [scores[s] for s in both])
            print(f"- {f}: rho {rho:+.2f} (p {p:.3f})")


if __name__ == "__main__":
    main()
