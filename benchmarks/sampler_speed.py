"""Seconds per `rollout.sample` call, fast sampler against `model.generate`, alternating in one process.

    OMP_NUM_THREADS=1 python benchmarks/sampler_speed.py [--model tiny|bench] [--rows 64] [--new-tokens 32]

Every call draws exactly `--new-tokens` tokens per row (EOS forbidden before), so both samplers do the same
work; the two also draw the same tokens (tests/test_decode.py). Reports medians of wall and process CPU time
(CPU time is not inflated when other jobs share the cores) and their ratio hf / fast, per round and pooled.
`--model tiny` is model=tiny (4 layers, width 128); `--model bench` the 3.2M-parameter Llama of
benchmarks/vs_trl.py (4 layers, width 256); `--model dialogue` plays `--rows` whole dialogues of task=dialogue
(the cached warm-start of `python -m dvpo_lab task=dialogue mode=sft` when present, else the untrained
model=tiny) with the simulated user, turn by turn: rows stop at their own lengths there, identical for both.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dvpo_lab.config import ModelConfig
from dvpo_lab.models.build import build_policy, build_tokenizer
from dvpo_lab.rollout import sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["tiny", "bench", "dialogue"], default="tiny")
    ap.add_argument("--rows", type=int, default=64, help="sequences per call")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=10, help="hf, fast pairs")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model in ("tiny", "dialogue"):
        tok = build_tokenizer(ModelConfig())
        model = build_policy(ModelConfig(), tok)
        prompts = [f"{100 + 7 * i}+{300 + 13 * i}=" for i in range(args.rows)]
    else:
        from vs_trl import make_model, make_rows, make_tokenizer

        tok = make_tokenizer()
        model = make_model(tok)
        prompts = [p for p, _ in make_rows(args.rows)]
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)

    def call(sampler: str, seed: int) -> None:
        sample(model, tok, prompts, seed=seed, sampler=sampler, **kw)

    if args.model == "dialogue":
        call = dialogue_caller(args.rows)
    wall: dict[str, list[float]] = {"hf": [], "fast": []}
    cpu: dict[str, list[float]] = {"hf": [], "fast": []}
    for s in ("hf", "fast"):  # warm-up
        call(s, 0)
    for r in range(args.rounds):
        for s in ("hf", "fast"):
            t, c = time.perf_counter(), time.process_time()
            call(s, r)
            wall[s].append(time.perf_counter() - t)
            cpu[s].append(time.process_time() - c)
    print(
        f"model={args.model} rows={args.rows} new_tokens={args.new_tokens} threads={torch.get_num_threads()} "
        f"rounds={args.rounds}"
    )
    for name, d in (("wall", wall), ("cpu", cpu)):
        med = {s: statistics.median(v) for s, v in d.items()}
        per_round = [h / f for h, f in zip(d["hf"], d["fast"], strict=True)]
        print(
            f"  {name:4} hf {med['hf']:.4f} s  fast {med['fast']:.4f} s  hf/fast {med['hf'] / med['fast']:.2f} "
            f"(per round {min(per_round):.2f}-{max(per_round):.2f}); fast "
            f"{1e3 * med['fast'] / args.new_tokens:.2f} ms/token step, hf {1e3 * med['hf'] / args.new_tokens:.2f}"
        )


def dialogue_caller(rows: int):
    """sample_dialogues over `rows` dialogues (8 per goal) with the warm-started dialogue policy if cached."""
    import tempfile
    from pathlib import Path

    from dvpo_lab.config import compose_config
    from dvpo_lab.multiturn import sample_dialogues
    from dvpo_lab.run import make_task
    from dvpo_lab.sft import warm_start_key

    cfg = compose_config(["task=dialogue"], tempfile.mkdtemp())
    tok = build_tokenizer(cfg.model)
    task = make_task(cfg, tok)
    cached = Path(cfg.paths.cache_dir) / "warmstart" / warm_start_key(cfg)
    policy = build_policy(cfg.model, tok, str(cached) if cached.exists() else None)
    print(f"dialogue policy: {'warm-start ' + str(cached) if cached.exists() else 'untrained model=tiny'}")
    problems = [p for p in task.train_problems(range(rows // 8)) for _ in range(8)]

    def call(sampler: str, seed: int) -> None:
        sample_dialogues(policy, tok, task, problems, max_new_tokens=task.max_response_len, seed=seed, sampler=sampler)

    return call


if __name__ == "__main__":
    main()
