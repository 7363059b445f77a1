"""DVPO's critic-loss kernels (quantile Huber, regularisers) in C++ on torch's OpenMP threads (`_qr_native.cpp`),
compiled on first use.

`load()` compiles the source with the system C++ compiler (`$CXX`, else `c++`/`g++`) into a per-user cache
(`$DVPO_LAB_CACHE`, else `~/.cache/dvpo_lab/native`, one file per source hash, written atomically so parallel
jobs can race) and loads it with ctypes (~1 s once; nothing at install time). Where there is no compiler, the
build fails, or `DVPO_LAB_NATIVE=0`, `load()` returns None after one logged line and `_qr_kernel` keeps its
numba kernel, which gives bit-identical numbers single-threaded.

torch is imported first (here), so the library shares torch's libgomp and its worker threads; every call
passes `torch.get_num_threads()` as the thread count. Results do not depend on the count (rows and tokens are
independent).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_qr_native.cpp")
FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC", "-std=c++17"]
_P, _I, _D, _N = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
_lib: ctypes.CDLL | None = None
_tried = False


def cache_dir() -> Path:
    """`native/` under the user cache: $DVPO_LAB_CACHE, else $XDG_CACHE_HOME/dvpo_lab, else ~/.cache/dvpo_lab
    (as `paths.cache_dir` defaults; the kernels are per machine, not per run, so `paths.cache_dir=` does not move
    them)."""
    root = os.environ.get("DVPO_LAB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
        "dvpo_lab"
    return Path(root) / "native"


def _compiler() -> str | None:
    for cand in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cand and shutil.which(cand):
            return cand
    return None


def build(target: Path, cxx: str) -> None:
    """Compile SOURCE into `target` (atomically: a temporary file in the same folder, then a rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        res = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"{cxx} failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load() -> ctypes.CDLL | None:
    """The compiled library, or None (numba fallback) where it cannot be built; tried once per process."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("DVPO_LAB_NATIVE", "1") == "0":
        log.info("DVPO_LAB_NATIVE=0: quantile loss on the numba kernel")
        return None
    if sys.platform != "linux":
        log.info("native quantile kernel is built on Linux only; using the numba kernel")
        return None
    cxx = _compiler()
    if cxx is None:
        log.warning("no C++ compiler found (set CXX): the quantile loss runs on the single-threaded numba kernel")
        return None
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join([cxx, *FLAGS]).encode()).hexdigest()[:16]
    target = cache_dir() / f"qr_native_{digest}.so"
    try:
        if not target.exists():
            build(target, cxx)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        log.warning("could not build the native quantile kernel (%s); using the numba kernel", e)
        return None
    signatures = {
        "qr_rows": [_P, _I, _I, _P, _I, _P, _P, _D, _P, _P, _N],
        "reg_forward": [_P, _I, _I, _I, _P, _P, _I, _I, _I, _I, _D, _D, _P, _P, _N],
        "reg_backward": [_P, _I, _I, _I, _P, _P, _P, _I, _I, _I, _I, _D, _D, _P, _N],
    }
    for name, argtypes in signatures.items():
        for suffix in ("_f32", "_f64"):
            fn = getattr(lib, name + suffix)
            fn.argtypes, fn.restype = argtypes, None
    log.info("native quantile kernels: %s (%d threads from torch)", target, torch.get_num_threads())
    _lib = lib
    return lib


def library(native: bool | None) -> ctypes.CDLL | None:
    """What a caller's `native` switch selects: None = the library if it builds, False = none (numba), True = the
    library or a RuntimeError."""
    lib = load() if native is not False else None
    if native and lib is None:
        raise RuntimeError("the native kernels could not be built here (see the log); pass native=None")
    return lib


def quantile_huber_rows(lib: ctypes.CDLL, theta: np.ndarray, z_sorted: np.ndarray, row_token: np.ndarray,
                        taus: np.ndarray, kappa: float, loss: np.ndarray, grad: np.ndarray) -> None:
    """`_qr_kernel.quantile_huber_rows` on the compiled library (same arguments; outputs written in place)."""
    fn = _fn(lib, "qr_rows", theta.dtype)
    arrays = (theta, z_sorted, row_token, taus, loss, grad)
    if not all(a.flags.c_contiguous for a in arrays) or loss.dtype != theta.dtype or grad.dtype != theta.dtype:
        raise ValueError("native quantile kernel needs C-contiguous arrays and outputs in theta's dtype")
    if z_sorted.dtype != np.float64 or taus.dtype != np.float64 or row_token.dtype != np.int64:
        raise ValueError("native quantile kernel needs float64 targets and levels and int64 row tokens")
    R, N = theta.shape
    if row_token.shape != (R,) or (R and (row_token.min() < 0 or row_token.max() >= z_sorted.shape[0])):
        raise ValueError(f"row_token must be [{R}] indices into the {z_sorted.shape[0]} target rows")
    fn(theta.ctypes.data, R, N, z_sorted.ctypes.data, z_sorted.shape[1], row_token.ctypes.data, taus.ctypes.data,
       float(kappa), loss.ctypes.data, grad.ctypes.data, torch.get_num_threads())


def _fn(lib: ctypes.CDLL, name: str, dtype: np.dtype):
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"native kernels take float32 or float64, got {dtype}")
    return getattr(lib, f"{name}_f{64 if dtype == np.float64 else 32}")


def _check_reg(p: np.ndarray, z_sorted: np.ndarray, order: np.ndarray, *more: np.ndarray) -> None:
    n, _, N = p.shape
    if z_sorted.shape != (n, N) or order.shape != (n, N):
        raise ValueError(f"expected z_sorted and order [{n}, {N}], got {z_sorted.shape}, {order.shape}")
    if z_sorted.dtype != np.float64 or order.dtype != np.int64:
        raise ValueError("native regularisers need float64 targets and an int64 order")
    if not all(a.flags.c_contiguous for a in (p, z_sorted, order, *more)):
        raise ValueError("native regularisers need C-contiguous arrays")


def reg_forward(lib: ctypes.CDLL, p: np.ndarray, z_sorted: np.ndarray, order: np.ndarray, ka: int, kb: int, kl: int,
                ku: int, margin_low: float, margin_up: float, terms: np.ndarray, stats: np.ndarray) -> None:
    """`_qr_kernel._reg_forward` on the compiled library (outputs `terms [6, n]`, `stats [n, 7]` float64)."""
    _check_reg(p, z_sorted, order, terms, stats)
    n, H, N = p.shape
    if terms.shape != (6, n) or stats.shape != (n, 7) or terms.dtype != np.float64 or stats.dtype != np.float64:
        raise ValueError("terms must be float64 [6, n] and stats float64 [n, 7]")
    _fn(lib, "reg_forward", p.dtype)(p.ctypes.data, n, H, N, z_sorted.ctypes.data, order.ctypes.data, ka, kb, kl,
                                     ku, float(margin_low), float(margin_up), terms.ctypes.data, stats.ctypes.data,
                                     torch.get_num_threads())


def reg_backward(lib: ctypes.CDLL, p: np.ndarray, z_sorted: np.ndarray, order: np.ndarray, g: np.ndarray, ka: int,
                 kb: int, kl: int, ku: int, margin_low: float, margin_up: float, dp: np.ndarray) -> None:
    """`_qr_kernel._reg_backward` on the compiled library (`dp` in p's dtype and shape, written in place)."""
    _check_reg(p, z_sorted, order, g, dp)
    n, H, N = p.shape
    if g.shape != (6, n) or g.dtype != np.float64 or dp.shape != p.shape or dp.dtype != p.dtype:
        raise ValueError("g must be float64 [6, n] and dp like p")
    _fn(lib, "reg_backward", p.dtype)(p.ctypes.data, n, H, N, z_sorted.ctypes.data, order.ctypes.data, g.ctypes.data,
                                      ka, kb, kl, ku, float(margin_low), float(margin_up), dp.ctypes.data,
                                      torch.get_num_threads())
