"""DVPO's critic-loss kernels, compiled (`dvpo_lab.algos.kernels`) against the torch path, per call.

`python benchmarks/kernels.py [--tokens 930 --heads 3 --quantiles 200] [--threads T] [--repeats R] [--build]`

Times forward + backward of the two hot parts of `dvpo_critic_loss` on one minibatch of the testbed's shape
(930 valid tokens x 3 heads x 200 quantiles, float32: 64 responses of ~14.5 tokens), each path alternated
round by round, and prints the median (and least) milliseconds and the ratio of medians:
    quantile_huber  compiled `kernels.quantile_huber` vs `quantiles.quantile_huber_sorted` on expanded targets
    regularisers    compiled `kernels.regularisers` (all six terms and the diagnostics) vs the torch terms
`--build` also times the first build in a cold cache (a fresh `DVPO_LAB_CACHE` in a child process) and a load
from the warm cache (a second child). Name the CPU beside the figures (`lscpu | grep 'Model name'`; printed).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from dvpo_lab.algos import kernels
from dvpo_lab.algos.dvpo import Tails, regularisers_torch
from dvpo_lab.algos.quantiles import quantile_huber_sorted, quantile_levels

_CHILD = (
    "import time, torch; from dvpo_lab.algos import kernels; t = time.perf_counter(); ok = kernels.load(); "
    "print(ok, round(time.perf_counter() - t, 2))"
)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def time_build() -> None:
    """First build in a cold cache, then a load from the warm one, each in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
        env["DVPO_LAB_CACHE"] = tmp
        for label in ("cold cache (first build)", "warm cache (load)"):
            out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
            ok, secs = out.stdout.split()
            print(f"{label:26s} {float(secs):6.2f} s  (built: {ok})")


def inputs(n: int, H: int, N: int, seed: int = 0):
    """Predictions and sorted targets shaped like the testbed's: returns around 0.5, heads that disagree a little."""
    gen = torch.Generator().manual_seed(seed)
    p = (0.5 + 0.3 * torch.randn(n, 1, N, generator=gen) + 0.05 * torch.randn(n, H, N, generator=gen)).float()
    z = (0.5 + 0.3 * torch.randn(n, N, generator=gen)).double().sort(-1).values
    return p, z, quantile_levels(N)


def bench(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=930)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--quantiles", type=int, default=200)
    ap.add_argument("--kappa", type=float, default=0.02)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--build", action="store_true", help="also time a cold-cache build and a warm load")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.build:
        time_build()
    n, H, N = args.tokens, args.heads, args.quantiles
    p, z, taus = inputs(n, H, N)
    if not kernels.available(p):
        sys.exit("the compiled kernels are not available here (see the log line): nothing to compare")
    t = Tails(max(1, N // 10), max(1, N // 10), max(1, (N - 2) // 10), max(1, (N - 2) // 10))
    z_rows = z.unsqueeze(1).expand(n, H, N)

    def qr(compiled: bool):
        x = p.clone().requires_grad_()
        out = (
            kernels.quantile_huber(x, z, taus, args.kappa)
            if compiled
            else quantile_huber_sorted(x, z_rows, taus, args.kappa)
        )
        out.mean().backward()

    def reg(compiled: bool):
        x = p.clone().requires_grad_()
        if compiled:
            terms, _ = kernels.regularisers(x, z, t.ka, t.kb, t.kl, t.ku, 0.0, 0.0)
        else:
            terms = torch.stack(list(regularisers_torch(x, z, kernels.REG_TERMS, t).values()))
        terms.sum().backward()

    print(
        f"shape [{n}, {H}, {N}] float32, kappa {args.kappa}; median ms of forward + backward "
        f"({args.rounds} rounds x {args.repeats} calls, paths alternated)"
    )
    for name, fn in (("quantile_huber", qr), ("regularisers", reg)):
        times = {True: [], False: []}
        for _ in range(args.rounds):
            for compiled in (False, True):
                times[compiled] += bench(lambda f=fn, c=compiled: f(c), args.repeats)
        tt, tc = statistics.median(times[False]), statistics.median(times[True])
        print(
            f"{name:15s} torch {tt:8.2f} ms (min {min(times[False]):7.2f})   compiled {tc:7.2f} ms "
            f"(min {min(times[True]):6.2f})   {tt / tc:5.1f}x"
        )


if __name__ == "__main__":
    main()
