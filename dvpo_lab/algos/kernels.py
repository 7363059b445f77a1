"""DVPO's critic-loss kernels on CPU: the all-pairs quantile Huber loss and the fused regularisers, compiled.

Two hot parts of `dvpo_critic_loss` have one compiled CPU path each, C++ operators on torch tensors
(`kernels.cpp`, registered as `torch.ops.dvpo_lab.*`); the torch code stays the reference, the GPU path and the
fallback:
    quantile_huber   the per-quantile QR loss (DVPO paper Eq. 3) with its gradient: rows sorted and merged
                     against the sorted targets, closed forms over prefix sums, float64 inside
    regularisers     cvar, gain, shift, shape, curv, cons (Eqs. 5-10) per token, value, gradient, diagnostics

Build: on the first call in a process, `torch.utils.cpp_extension.load` compiles `kernels.cpp` with the system
C++ compiler (`$CXX`, else `c++`) and ninja into `$TORCH_EXTENSIONS_DIR/<name>` if that is set, else `native/`
under the user cache (`$DVPO_LAB_CACHE`, else `$XDG_CACHE_HOME/dvpo_lab`, else `~/.cache/dvpo_lab`); `<name>`
hashes the source, the flags, the compiler name and the torch and Python versions, so each combination builds
once and later processes only load it (ninja finds nothing to do). Parallel first calls wait on torch's lock
file. First build: 6.9 s on a 2-core AMD EPYC (cold cache, `benchmarks/kernels.py --build`; 13 s with both cores
busy); a load from the cache 0.04-0.08 s. Without a compiler or ninja, when the build fails, or with
`DVPO_LAB_NATIVE=0`, one line is logged and `available()` is False: the caller runs the torch path.

Speed (`python benchmarks/kernels.py`: the testbed's minibatch, 930 tokens x 3 heads x 200 quantiles, float32,
forward + backward, median per call, 2 threads, 2-core AMD EPYC): quantile Huber 6.7 ms compiled vs 59 ms torch
(8.9x); regularisers 2.0 ms vs 4.5 ms (2.2x). The same C++ was ~1.7x faster than a numba version of the same
algorithms (QR 6.3 vs 10.9 ms, regularisers 1.9 vs 3.4 ms), which is why numba is not used.

Numbers: the compiled and torch paths are not bit-identical (float64 inside the kernels; the torch path does the
QR loss in float64 and the regularisers in the input's dtype, with other summation orders). Tests
(`tests/algos/test_kernels.py`) hold them, values and gradients, to: float64 inputs 1e-10 absolute; float32 inputs
1e-6 relative + 1e-6 absolute for the QR loss, 1e-5 relative + 1e-6 absolute for the regularisers. The compiled
results do not depend on the thread count (bit for bit): rows and tokens are independent. Where the ensemble has
exactly tied quantiles, the gradient of a sort-based term is one valid subgradient: the compiled path orders ties
by quantile index, the torch path as its sort does (their sums over each tie agree).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

log = logging.getLogger(__name__)

__all__ = ["REG_STATS", "REG_TERMS", "available", "build_dir", "cache_dir", "load", "quantile_huber", "regularisers"]

REG_TERMS = ("cvar", "gain", "shift", "shape", "curv", "cons")
REG_STATS = ("var_lo_p", "var_up_p", "var_lo_z", "var_up_z", "crossed", "mean_p", "mean_z")

SOURCE = Path(__file__).with_name("kernels.cpp")
# -ffp-contract=off: no fused multiply-adds, so the numbers do not depend on the compiler's target
CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]
LDFLAGS = ["-fopenmp"]  # libgomp.so.1 resolves to the copy torch has loaded: torch's own threads
_STALE_LOCK_S = 600.0  # a lock file this old was left by a killed build (a build takes seconds)

_loaded = False
_tried = False


def cache_dir() -> Path:
    """`native/` under the user cache: $DVPO_LAB_CACHE, else $XDG_CACHE_HOME/dvpo_lab, else ~/.cache/dvpo_lab
    (as `paths.cache_dir` defaults; the kernels are per machine, not per run, so `paths.cache_dir=` does not move
    them)."""
    root = (
        os.environ.get("DVPO_LAB_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dvpo_lab"
    )
    return Path(root) / "native"


def _name(source: Path) -> str:
    key = b"\0".join(
        [
            source.read_bytes(),
            " ".join(CFLAGS + LDFLAGS).encode(),
            torch.__version__.encode(),
            sys.version.encode(),
            os.environ.get("CXX", "c++").encode(),
        ]
    )
    return f"dvpo_lab_kernels_{hashlib.sha256(key).hexdigest()[:16]}"


def build_dir(source: Path | None = None) -> Path:
    """Where the library is built and cached: `$TORCH_EXTENSIONS_DIR/<name>` if set, else `cache_dir()/<name>`."""
    name = _name(source or SOURCE)
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    return (Path(root) if root else cache_dir()) / name


def _compiler() -> str | None:
    """The compiler torch's build uses ($CXX, else c++), if it is on PATH."""
    cxx = shlex.split(os.environ.get("CXX") or "c++")
    return cxx[0] if cxx and shutil.which(cxx[0]) else None


def _ninja_path() -> str | None:
    """PATH with a ninja on it (the `ninja` package's, when the environment's bin folder is not on PATH)."""
    path = os.environ.get("PATH", "")
    if shutil.which("ninja"):
        return path
    try:
        import ninja
    except ImportError:
        return None
    return os.pathsep.join([ninja.BIN_DIR, path])


def _first_error(message: str) -> str:
    """The first compiler diagnostic (`file:line:col: error: ...`) of a failed build's output, else its last
    line: one line for the log."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for ln in lines:
        if "error:" in ln:
            return ln[-300:]
    return lines[-1][-300:] if lines else "no output"


def load() -> bool:
    """Build (or find) and load the compiled operators; tried once per process. True if they are loaded.

    Logs one line: where the library is (INFO), or why the torch path runs instead (WARNING: no compiler, no
    ninja, a failed build with its first compiler error; INFO: `DVPO_LAB_NATIVE=0`).
    """
    global _loaded, _tried
    if _tried:
        return _loaded
    _tried = True
    if os.environ.get("DVPO_LAB_NATIVE", "1") == "0":
        log.info("DVPO_LAB_NATIVE=0: DVPO's critic loss runs on the torch path")
        return False
    if _compiler() is None:
        log.warning(
            "no C++ compiler found (%s; set CXX): DVPO's critic loss runs on the torch path",
            os.environ.get("CXX") or "c++",
        )
        return False
    path = _ninja_path()
    if path is None:
        log.warning("ninja not found (pip install ninja): DVPO's critic loss runs on the torch path")
        return False
    from torch.utils import cpp_extension

    directory = cache_dir()
    old_path = os.environ.get("PATH")
    t0 = time.perf_counter()
    try:
        directory = build_dir(SOURCE)
        directory.mkdir(parents=True, exist_ok=True)
        lock = directory / "lock"
        if lock.exists() and time.time() - lock.stat().st_mtime > _STALE_LOCK_S:
            lock.unlink(missing_ok=True)  # left by a killed build; torch would wait on it forever
        os.environ["PATH"] = path
        # copies: torch appends its own flags to the lists it is given
        so = cpp_extension.load(
            directory.name,
            [str(SOURCE)],
            extra_cflags=list(CFLAGS),
            extra_ldflags=list(LDFLAGS),
            build_directory=str(directory),
            is_python_module=False,
            verbose=False,
        )
    except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as e:
        log.warning(
            "could not build DVPO's critic-loss kernels in %s (%s): the torch path runs",
            directory,
            _first_error(str(e)),
        )
        return False
    finally:
        if old_path is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = old_path
    log.info(
        "DVPO critic-loss kernels: %s (%.1f s to build or load; %d threads from torch)",
        so,
        time.perf_counter() - t0,
        torch.get_num_threads(),
    )
    _loaded = True
    return True


def available(x: torch.Tensor) -> bool:
    """Whether the compiled path serves `x`: a float32 or float64 CPU tensor, and the library loads (built on
    the first call)."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and load()


def _require(x: torch.Tensor) -> None:
    if not available(x):
        raise RuntimeError(
            f"the compiled DVPO kernels do not serve this tensor ({x.device}, {x.dtype}, library "
            f"loaded: {_loaded}); check kernels.available(x) and use the torch path"
        )


class _QuantileHuber(torch.autograd.Function):
    """Value from `qr_rows`, whose gradient is computed in the same pass and saved for backward."""

    @staticmethod
    def forward(ctx, pred: torch.Tensor, z_sorted: torch.Tensor, taus: torch.Tensor, kappa: float) -> torch.Tensor:
        n, H, N = pred.shape
        theta = pred.detach().reshape(n * H, N).contiguous()
        loss, grad = torch.ops.dvpo_lab.qr_rows(
            theta, z_sorted.detach().double().contiguous(), taus.detach().double().contiguous(), H, float(kappa)
        )
        ctx.save_for_backward(grad.view(n, H, N))
        return loss.view(n, H, N)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad_out * grad, None, None, None


def quantile_huber(pred: torch.Tensor, z_sorted: torch.Tensor, taus: torch.Tensor, kappa: float) -> torch.Tensor:
    """All-pairs quantile Huber loss per predicted quantile (DVPO paper Eq. 3), each head against its token's
    targets; differentiable with respect to `pred` (once).

    rho^kappa_tau(u) = |tau - 1[u < 0]| L_kappa(u) / kappa with u = z_j - theta_i, averaged over the M targets;
    kappa = 0 is the pinball loss. The same function as the torch path's `quantile_huber_sorted` on
    `z_sorted[:, None].expand(n, H, M)` (tolerances: module docstring).

    Args:
        pred: [n, H, N] float32 or float64 CPU predictions (n tokens, H heads, N quantiles).
        z_sorted: [n, M] targets, ascending along M (any float dtype; used in float64; no gradient).
        taus: [N] quantile levels. kappa: Huber threshold >= 0.
    Returns:
        [n, H, N] in pred's dtype.
    Raises:
        RuntimeError: when `available(pred)` is False, or on shapes that do not fit.
    """
    _require(pred)
    if pred.dim() != 3 or z_sorted.dim() != 2 or z_sorted.shape[0] != pred.shape[0]:
        raise RuntimeError(
            f"expected pred [n, H, N] and z_sorted [n, M], got {tuple(pred.shape)}, {tuple(z_sorted.shape)}"
        )
    return _QuantileHuber.apply(pred, z_sorted, taus, kappa)


class _Regularisers(torch.autograd.Function):
    """Both passes compiled: ~20 small torch ops and their backward become one loop over tokens each."""

    @staticmethod
    def forward(
        ctx,
        p: torch.Tensor,
        z_sorted: torch.Tensor,
        ka: int,
        kb: int,
        kl: int,
        ku: int,
        margin_low: float,
        margin_up: float,
    ):
        pc, zc = p.detach().contiguous(), z_sorted.detach().double().contiguous()
        args = (int(ka), int(kb), int(kl), int(ku), float(margin_low), float(margin_up))
        terms, stats, order = torch.ops.dvpo_lab.reg_forward(pc, zc, *args)
        ctx.save_for_backward(pc, zc, order)
        ctx.args = args
        stats = stats.to(p.dtype)
        ctx.mark_non_differentiable(stats)
        return terms.to(p.dtype), stats

    @staticmethod
    @once_differentiable
    def backward(ctx, g_terms: torch.Tensor, _g_stats: torch.Tensor):
        pc, zc, order = ctx.saved_tensors
        dp = torch.ops.dvpo_lab.reg_backward(pc, zc, order, g_terms.double().contiguous(), *ctx.args)
        return dp, None, None, None, None, None, None, None


def regularisers(
    p: torch.Tensor, z_sorted: torch.Tensor, ka: int, kb: int, kl: int, ku: int, margin_low: float, margin_up: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DVPO regularisers per token (DVPO paper Eqs. 5-10) and their diagnostics, in one compiled pass.

    With ens = the head mean of p sorted ascending (ties by quantile index), tails of k_a / k_b quantiles and
    k_l / k_u second differences, REG_TERMS are: cvar (mean of ens's lowest k_a - same of z)^2, gain (same for
    the highest k_b), shift ReLU(mean z - mean ens), shape ReLU(var_lo(ens) - (1 - margin_low) var_lo(z)) +
    ReLU((1 + margin_up) var_up(z) - var_up(ens)) (population variances), curv ReLU(mean lower-tail second
    difference) + ReLU(-mean upper-tail one) (0 if N < 3), cons the mean over head pairs of their mean squared
    difference (0 if H = 1): what the torch path's `_regularisers_torch` gives (tolerances: module docstring).

    Args:
        p: [n, H, N] float32 or float64 CPU predicted quantiles per head. z_sorted: [n, N] targets, ascending
        (any float dtype; used in float64; no gradient). ka, kb: tail sizes in [1, N]; kl, ku: in [1, N - 2]
        (any value >= 1 if N < 3). margin_low, margin_up: the shape margins.
    Returns:
        terms [6, n] in REG_TERMS order, differentiable with respect to p (once); stats [n, 7] in REG_STATS
        order (tail variances of ens and z, the number of crossed adjacent quantiles of the unsorted head mean,
        mean of ens and of z), not differentiable. Both in p's dtype.
    Raises:
        RuntimeError: when `available(p)` is False, or on shapes or tail sizes that do not fit.
    """
    _require(p)
    return _Regularisers.apply(p, z_sorted, ka, kb, kl, ku, margin_low, margin_up)
