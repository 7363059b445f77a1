"""The CUDA path in one prepared run: `python benchmarks/gpu_check.py [--out DIR] [--budget-s 420]`.

For a machine with one NVIDIA GPU (what a user of `trainer=gpu` runs on). Each section is independent,
prints its figures, and appends them to `DIR/gpu_check.json`; a section that fails records its error and the
rest still run; sections stop starting once `--budget-s` seconds have passed (for GPU time that is rationed).
In order:

1. env: torch, GPU, a bf16 and an fp32 matmul peak (8192^3, mean of 10 after 3 warm-ups).
2. critic: the DVPO critic loss and its gradient on CUDA (torch path) against the CPU compiled kernel.
3. sampler: the fast sampler against `model.generate` on CUDA from one seed (fraction of identical
   rollouts; kernels may differ in the last bit, so equality is reported, not assumed) and their speed.
4. steps: per-phase step time and peak GPU memory of PPO / GRPO / DVPO on the tiny model and on a wider
   Llama (model.arch overrides), in fp32 (`trainer.precision=32-true`) and bf16-mixed.
5. accuracy: GRPO on the warm-started arith testbed, fp32 against bf16-mixed, a few seeds (final clean
   val/acc): the "bf16 within seed noise" check of docs/performance.md.

The warm-start of section 5 comes from the cache (`paths.cache_dir`) when present, else it trains one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from step_time import medians, time_steps  # noqa: E402

from dvpo_lab.config import ModelConfig, compose_config  # noqa: E402
from dvpo_lab.models.build import build_policy, build_tokenizer  # noqa: E402
from dvpo_lab.rollout import sample  # noqa: E402
from dvpo_lab.run import run  # noqa: E402

GPU = ["trainer=gpu", "trainer.precision=32-true", "+trainer.enable_progress_bar=false"]
BF16 = ["trainer=gpu", "trainer.precision=bf16-mixed", "+trainer.enable_progress_bar=false"]
WIDE = [
    "model.arch.hidden_size=1024",
    "model.arch.num_layers=12",
    "model.arch.num_heads=16",
    "model.arch.intermediate_size=4096",
]


def sec_env(out: dict) -> None:
    out["torch"] = torch.__version__
    out["gpu"] = torch.cuda.get_device_name(0)
    for dtype in (torch.bfloat16, torch.float32):
        a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
        for _ in range(3):
            a @ a
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()
        out[f"peak_tflops_{str(dtype)[6:]}"] = round(2 * 8192**3 * 10 / (time.perf_counter() - t) / 1e12, 1)


def sec_critic(out: dict) -> None:
    from dvpo_lab.algos.distributional import dvpo_critic_loss, quantile_levels

    g = torch.Generator().manual_seed(0)
    B, T, H, N = 64, 24, 3, 200
    pred = torch.randn(B, T, H, N, generator=g)
    old = pred + 0.1 * torch.randn(B, T, H, N, generator=g)
    targets = torch.randn(B, T, N, generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.2).float()
    w = dict(cvar=1.0, gain=1.0, shift=1.0, shape=0.5, curv=0.1, cons=0.5)
    res = {}
    for dev in ("cpu", "cuda"):
        p = pred.detach().clone().to(dev).requires_grad_(True)
        loss, _ = dvpo_critic_loss(
            p, old.to(dev), targets.to(dev), mask.to(dev), quantile_levels(N, device=dev), weights=w
        )
        loss.backward()
        res[dev] = (loss.item(), p.grad.cpu())
    out["loss_cpu"], out["loss_cuda"] = res["cpu"][0], res["cuda"][0]
    out["loss_abs_diff"] = abs(res["cpu"][0] - res["cuda"][0])
    out["grad_max_abs_diff"] = float((res["cpu"][1] - res["cuda"][1]).abs().max())
    torch.cuda.synchronize()
    p = pred.cuda().requires_grad_(True)
    t = time.perf_counter()
    for _ in range(5):
        loss, _ = dvpo_critic_loss(
            p, old.cuda(), targets.cuda(), mask.cuda(), quantile_levels(N, device="cuda"), weights=w
        )
        loss.backward()
    torch.cuda.synchronize()
    out["cuda_loss_fwd_bwd_ms"] = round((time.perf_counter() - t) / 5 * 1e3, 2)


def sec_sampler(out: dict) -> None:
    tok = build_tokenizer(ModelConfig())
    policy = build_policy(ModelConfig(), tok).cuda().eval()
    prompts = [f"{a}+{b}=" for a in range(8) for b in range(16)]
    same, times = 0, {"fast": [], "hf": []}
    for seed in range(4):
        ro = {}
        for sampler in ("fast", "hf"):
            torch.cuda.synchronize()
            t = time.perf_counter()
            ro[sampler] = sample(policy, tok, prompts, max_new_tokens=32, seed=seed, sampler=sampler)
            torch.cuda.synchronize()
            times[sampler].append(time.perf_counter() - t)
        same += int(torch.equal(ro["fast"].response_ids, ro["hf"].response_ids))
    out["identical_rollouts"] = f"{same}/4 (128 prompts x 32 tokens each)"
    out["fast_s"] = round(statistics.median(times["fast"][1:]), 4)
    out["hf_s"] = round(statistics.median(times["hf"][1:]), 4)


def _steps(overrides: list[str], steps: int = 5) -> dict:
    torch.cuda.reset_peak_memory_stats()
    cfg, rows = time_steps(overrides, steps, 2)
    med = medians(rows)
    n = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
    return {
        **{k: round(v, 4) for k, v in med.items()},
        "samples_per_s": round(n / med["step"], 1),
        "resp_len": round(statistics.median(float(r["response_length/mean"]) for r in rows), 1),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20),
    }


def sec_steps(out: dict, wide: bool) -> None:
    arch = WIDE if wide else []
    for algo in ("grpo", "ppo", "dvpo"):
        for name, prec in (("fp32", GPU), ("bf16", BF16)):
            key = f"{'wide' if wide else 'tiny'}/{algo}/{name}"
            out[key] = _steps([f"algo={algo}", *prec, *arch, "rollout.max_new_tokens=32", "rollout.min_new_tokens=32"])
            print(key, out[key], flush=True)


def sec_accuracy(out: dict, seeds: int, steps: int) -> None:
    for seed in range(1, seeds + 1):
        for name, prec in (("fp32", GPU), ("bf16", BF16)):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = compose_config(
                    [
                        "algo=grpo",
                        "logger=csv",
                        "callbacks=none",
                        f"seed={seed}",
                        f"total_steps={steps}",
                        f"eval_every={steps}",
                        *prec,
                    ],
                    tmp,
                )
                t = time.perf_counter()
                acc = run(cfg)
            out[f"{name}/s{seed}"] = {"val_acc": acc, "wall_s": round(time.perf_counter() - t, 1)}
            print(name, seed, out[f"{name}/s{seed}"], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/gpu_check")
    ap.add_argument("--budget-s", type=float, default=420, help="start no section after this many seconds")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per precision in the accuracy section")
    ap.add_argument("--rl-steps", type=int, default=100, help="RL steps per accuracy run")
    ap.add_argument("--only", nargs="*", default=None, help="run only these sections")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible (torch.cuda.is_available() is False); run it on a GPU machine")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / "gpu_check.json"
    results: dict = json.loads(path.read_text()) if path.exists() else {}
    sections = [
        ("env", sec_env),
        ("critic", sec_critic),
        ("sampler", sec_sampler),
        ("steps_tiny", lambda o: sec_steps(o, wide=False)),
        ("steps_wide", lambda o: sec_steps(o, wide=True)),
        ("accuracy", lambda o: sec_accuracy(o, args.seeds, args.rl_steps)),
    ]
    t0 = time.perf_counter()
    for name, fn in sections:
        if args.only and name not in args.only:
            continue
        if time.perf_counter() - t0 > args.budget_s:
            results[name] = {"skipped": f"budget of {args.budget_s:.0f} s spent"}
            continue
        out: dict = {}
        t = time.perf_counter()
        try:
            fn(out)
        except Exception as e:  # a failed section is a finding: record it and go on
            out["error"] = f"{type(e).__name__}: {e}"
            out["traceback"] = traceback.format_exc()[-3000:]
        out["section_s"] = round(time.perf_counter() - t, 1)
        results[name] = out
        print(f"== {name}: {json.dumps({k: v for k, v in out.items() if k != 'traceback'})}", flush=True)
        path.write_text(json.dumps(results, indent=1))
    print(f"total {time.perf_counter() - t0:.0f} s; results in {path}")


if __name__ == "__main__":
    main()
