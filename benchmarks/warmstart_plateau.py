"""Is the `task=arith_teacher` warm-start on a plateau, the same on any machine, and is RL the way up?

`python benchmarks/warmstart_plateau.py [--out DIR] [--jobs N] [--part grid|vs|step|all] [overrides ...]`

Three measurements, each a set of ordinary `python -m dvpo_lab` runs in folders under `--out` (a run whose
result is already there is read back, not rerun, so an interrupted benchmark resumes):

1. `grid`: the warm-start (`mode=sft`, its own `paths.cache_dir` each) for every sft seed x thread count x
   floating-point path. Paths: `native` (the default), `torch` (`DVPO_LAB_NATIVE=0`: DVPO's critic loss on
   the torch path instead of the compiled kernels; the warm-start never calls them, so it must match `native`
   bit for bit) and `aten_default` (`ATEN_CPU_CAPABILITY=default`: torch's CPU kernels without AVX2/AVX-512,
   another floating-point path on the same CPU). Prints the greedy accuracy on the 500 test problems (`val/acc`'s)
   per run, its spread, the step it first reached the plateau, the step its wsd decay began and the wall time.
2. `vs`: from the first sft seed's warm-start, `--rl-steps` RL steps with the clean reward for each
   `--rl-seeds`, against the same warm-start's SFT continued in process for the longest RL run's wall time
   (same recipe and demonstrations, a fresh optimizer with its warmup, a new data order). Prints both end
   points, RL's last-3-evaluation mean minus SFT per seed and the mean difference with a 95 % t-interval.

3. `step`: the warm-start's own step, timed in process for each `--threads` (no run folder): forward alone, and
   forward + backward + gradient clip + AdamW, on batches of the recipe's demonstrations; prints the model's
   parameters, tokens per step, ms per step, the matmul rate it implies (6 x parameters x tokens per step, in
   GFLOP/s) and the training time of 1000 warm-start steps (a `task=arith_teacher` warm-start takes 1300-2000).
   Where that rate is near the CPU's fp32 matmul peak, only fewer demonstrations seen make the warm-start shorter.

Run it on a quiet machine and name the CPU (`lscpu | grep 'Model name'`) beside the times. Extra arguments are
Hydra overrides for every run (e.g. `task.teacher_error_rate=0.9`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PATHS = {"native": {}, "torch": {"DVPO_LAB_NATIVE": "0"}, "aten_default": {"ATEN_CPU_CAPABILITY": "default"}}
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _run(cmd: list[str], env_extra: dict[str, str], log: Path) -> float:
    """Run one `python -m dvpo_lab` job; returns its wall seconds. Raises on a non-zero exit (log kept)."""
    env = {**os.environ, **env_extra}
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.call(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}; see {log}")
    return time.perf_counter() - t0


def _warmstart_info(cache: Path) -> dict | None:
    found = sorted(cache.glob("warmstart/*/warmstart.json"))
    return json.loads(found[0].read_text()) if found else None


def warm_start(out: Path, name: str, overrides: list[str], env: dict[str, str]) -> dict:
    """The warm-start of `overrides` in its own cache under `out/cache/<name>` (trained unless there)."""
    cache = out / "cache" / name
    if (info := _warmstart_info(cache)) is None:
        cmd = [
            sys.executable,
            "-m",
            "dvpo_lab",
            "mode=sft",
            "task=arith_teacher",
            *overrides,
            f"paths.cache_dir={cache}",
            f"hydra.run.dir={out / 'runs' / ('sft_' + name)}",
        ]
        _run(cmd, env, out / "logs" / f"sft_{name}.log")
        info = _warmstart_info(cache)
    return info


def plateau_step(curve: list[list[float]], tol: float = 0.01) -> int | None:
    """First SFT step from which every later check stays within `tol` of the final accuracy."""
    final = curve[-1][1]
    step = None
    for s, acc in reversed(curve):
        if abs(acc - final) > tol:
            break
        step = int(s)
    return step


def grid(args, extra: list[str]) -> None:
    rows = []
    jobs = [
        (s, t, p)
        for s in args.seeds
        for t in args.threads
        for p in args.paths
        if (t, p) == (args.threads[0], args.paths[0]) or s == args.seeds[0]
    ]
    with ThreadPoolExecutor(args.jobs) as pool:
        futs = {
            job: pool.submit(
                warm_start,
                args.out,
                f"s{job[0]}_t{job[1]}_{job[2]}",
                [f"sft.seed={job[0]}", f"threads={job[1]}", *extra],
                PATHS[job[2]],
            )
            for job in jobs
        }
        for (s, t, p), fut in futs.items():
            info = fut.result()
            rows.append((s, t, p, info))
    print(
        "\n| sft seed | threads | float path | acc % (sft.eval_limit) | plateau from step | decay from step | steps "
        "| wall s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for s, t, p, info in rows:
        print(
            f"| {s} | {t} | {p} | {100 * info['acc']:.1f} | {plateau_step(info['curve'])} "
            f"| {info.get('decay_start', '-')} | {info['steps']} "
            f"| {info['seconds']:.0f} |"
        )
    accs = [100 * info["acc"] for *_, info in rows]
    print(
        f"\nspread (max - min): {max(accs) - min(accs):.1f} points over {len(accs)} warm-starts; "
        f"mean {statistics.mean(accs):.1f} %, sd {statistics.stdev(accs) if len(accs) > 1 else 0.0:.1f}"
    )


def demo_batches(cfg, task, tokenizer, seed: int):
    """An endless iterator of the warm-start's batches (`sft.batch_size` demonstrations drawn with replacement, the
    order seeded by `seed`), collated as `dvpo_lab.sft` does."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from dvpo_lab.sft import _collate, _encode_demos

    demos = [p for p in task.sft_problems() if p.solution]
    gen = torch.Generator().manual_seed(seed)
    return iter(
        DataLoader(
            _encode_demos(tokenizer, task, demos),
            batch_size=cfg.sft.batch_size,
            sampler=RandomSampler(range(len(demos)), replacement=True, num_samples=10**8, generator=gen),
            collate_fn=_collate(tokenizer.pad_token_id),
        )
    )


def continue_sft(overrides: list[str], cache: Path, seconds: float, threads: int, every: int = 25) -> dict:
    """More SFT from the cached warm-start of `overrides` for `seconds` of wall time, the warm-start's recipe
    (AdamW at `sft.lr` after a fresh `sft.warmup_steps` warmup, its batch size, gradient clip 1), on the same
    demonstrations in a new order; greedy accuracy on the 500 test problems every `every` steps and at the end.

    Returns {"acc": final accuracy, "steps": SFT steps done, "seconds": wall, "curve": [[step, acc], ...]}."""
    import tempfile

    import torch

    from dvpo_lab.config import compose_config
    from dvpo_lab.evaluate import greedy_scores
    from dvpo_lab.models.build import build_policy, build_tokenizer
    from dvpo_lab.run import make_task
    from dvpo_lab.sft import warm_start

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(["task=arith_teacher", *overrides, f"paths.cache_dir={cache}"], tmp)
    task = make_task(cfg)
    folder = warm_start(cfg, task)  # cached: only read back
    tokenizer = build_tokenizer(cfg.model)
    policy = build_policy(cfg.model, tokenizer, path=str(folder))
    loader = demo_batches(cfg, task, tokenizer, seed=cfg.sft.seed + 1000)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.sft.lr, weight_decay=0.0)
    warmup = max(1, cfg.sft.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))

    def acc() -> float:
        policy.eval()
        scores, _ = greedy_scores(
            policy, tokenizer, task, task.test_problems(), batch_size=256, max_new_tokens=task.max_response_len
        )
        policy.train()
        return float(scores.mean())

    curve, step, t0 = [[0, acc()]], 0, time.perf_counter()
    policy.train()
    while time.perf_counter() - t0 < seconds:
        loss = policy(**next(loader)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        step += 1
        if step % every == 0:
            curve.append([step, acc()])
    if curve[-1][0] != step:
        curve.append([step, acc()])
    return {"acc": curve[-1][1], "steps": step, "seconds": time.perf_counter() - t0, "curve": curve}


def rl_vs_sft(args, extra: list[str]) -> None:
    s0, t0 = args.seeds[0], args.threads[0]
    sft_overrides = [f"sft.seed={s0}", f"threads={t0}", *extra]
    base = warm_start(args.out, f"s{s0}_t{t0}_native", sft_overrides, {})
    cache = args.out / "cache" / f"s{s0}_t{t0}_native"
    rl = {}

    def one_rl(seed: int) -> tuple[float, dict]:
        folder = args.out / "runs" / f"rl_{args.algo}_{args.noise}_s{seed}"
        timing = folder / "wall_s.txt"
        if not (folder / "summary.json").exists():
            cmd = [
                sys.executable,
                "-m",
                "dvpo_lab",
                "task=arith_teacher",
                f"algo={args.algo}",
                f"noise={args.noise}",
                f"total_steps={args.rl_steps}",
                f"seed={seed}",
                *sft_overrides,
                f"paths.cache_dir={cache}",
                f"hydra.run.dir={folder}",
            ]
            wall = _run(cmd, {}, args.out / "logs" / f"rl_{args.algo}_{args.noise}_s{seed}.log")
            timing.write_text(f"{wall:.1f}\n")
        return float(timing.read_text()), json.loads((folder / "summary.json").read_text())

    with ThreadPoolExecutor(args.jobs) as pool:
        for seed, res in zip(args.rl_seeds, pool.map(one_rl, args.rl_seeds), strict=True):
            rl[seed] = res
    wall = max(w for w, _ in rl.values())
    cont_file = args.out / "runs" / f"sft_continued_{wall:.0f}s.json"
    if not cont_file.exists():
        cont_file.write_text(json.dumps(continue_sft(sft_overrides, cache, wall, t0), indent=1))
    cont = json.loads(cont_file.read_text())
    sft_acc = 100 * cont["acc"]
    print(
        f"\nwarm-start (sft seed {s0}): {100 * base['acc']:.1f} % (its own check) after {base['steps']} steps; "
        f"SFT continued for the longest RL wall time ({wall:.0f} s): {cont['steps']} more steps -> "
        f"{sft_acc:.1f} % (curve {[(s, round(100 * a, 1)) for s, a in cont['curve']]})"
    )
    print(
        f"\n| seed | {args.algo} {args.noise} initial % | final % | last-3 mean % | RL wall s | SFT continued % "
        f"| RL last-3 - SFT |"
    )
    print("|---|---|---|---|---|---|---|")
    diffs = []
    for seed, (w, summ) in rl.items():
        hist = [100 * h["val/acc"] for h in summ["history"]]
        last3 = statistics.mean(hist[-3:])
        diffs.append(last3 - sft_acc)
        print(
            f"| {seed} | {100 * summ['initial/val_acc']:.1f} | {100 * summ['final/val_acc']:.1f} | {last3:.1f} "
            f"| {w:.0f} | {sft_acc:.1f} | {diffs[-1]:+.1f} |"
        )
    if len(diffs) > 1:
        half = T95.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / len(diffs) ** 0.5
        print(
            f"\nRL - SFT continuation (last-3 mean): {statistics.mean(diffs):+.1f} points, 95 % t-interval "
            f"[{statistics.mean(diffs) - half:+.1f}, {statistics.mean(diffs) + half:+.1f}] over {len(diffs)} seeds"
        )


def step_time(args, extra: list[str], steps: int = 40) -> None:
    import tempfile

    import torch

    from dvpo_lab.config import compose_config
    from dvpo_lab.models.build import build_policy, build_tokenizer
    from dvpo_lab.run import make_task

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(["task=arith_teacher", *extra], tmp)
    task = make_task(cfg)
    tokenizer = build_tokenizer(cfg.model)
    policy = build_policy(cfg.model, tokenizer)  # the random init: the step's cost does not depend on the weights
    params = sum(p.numel() for p in policy.parameters())
    batches = demo_batches(cfg, task, tokenizer, seed=cfg.sft.seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.sft.lr)

    def train_step(batch) -> None:
        policy(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    def forward(batch) -> None:
        with torch.no_grad():
            policy(**batch)

    print(f"\nmodel: {params:,} parameters; sft.batch_size {cfg.sft.batch_size}")
    print("\n| threads | tokens per step | forward ms | train step ms | GFLOP/s (6 N T / step) | s per 1000 steps |")
    print("|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        timed = {}
        for name, fn in (("forward", forward), ("train", train_step)):
            for _ in range(5):  # warm-up
                fn(next(batches))
            work = [next(batches) for _ in range(steps)]
            t0 = time.perf_counter()
            for batch in work:
                fn(batch)
            timed[name] = (time.perf_counter() - t0) / steps
        tokens = statistics.mean(int(b["input_ids"].numel()) for b in work)
        rate = 6 * params * tokens / timed["train"] / 1e9
        print(
            f"| {threads} | {tokens:.0f} | {1000 * timed['forward']:.1f} | {1000 * timed['train']:.1f} | {rate:.0f} "
            f"| {1000 * timed['train']:.0f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("outputs/warmstart_plateau"))
    p.add_argument("--part", choices=["grid", "vs", "step", "all"], default="all")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sft seeds of the grid")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--paths", nargs="+", choices=sorted(PATHS), default=["native", "torch", "aten_default"])
    p.add_argument("--rl-seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--rl-steps", type=int, default=200)
    p.add_argument("--algo", default="grpo")
    p.add_argument("--noise", default="none")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side (use threads=1 runs for 2)")
    args, extra = p.parse_known_args()
    args.out = args.out.resolve()
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    if args.part in ("grid", "all"):
        grid(args, extra)
    if args.part in ("vs", "all"):
        rl_vs_sft(args, extra)
    if args.part in ("step", "all"):
        step_time(args, extra)


if __name__ == "__main__":
    main()
