"""CPU kernel for the all-pairs quantile Huber loss: value and gradient in one pass (numba, one thread).

Each predicted quantile needs three counts against its token's sorted targets (#{z < theta - kappa},
#{z < theta}, #{z <= theta + kappa}); with those and prefix sums of z and z^2 its loss and gradient are closed
forms. Binary searches for the counts are latency-bound (~50 ns each here: mispredicted branches), so the
predictions of a row are argsorted (numpy's vectorised sort) and merged against the targets in one
branch-free pass that runs the three merges interleaved. Rows go through in chunks that stay in cache (and
below malloc's mmap threshold: fresh multi-MB arrays cost a page fault per 4 KiB here). Measured on the
testbed's minibatch (930 tokens x 3 heads x 200 quantiles): ~4x faster than binary searches, and the whole
DVPO critic loss went from ~80 to ~25 ms (`benchmarks/step_time.py --compare`, docs/algorithms.md).
`distributional.quantile_huber_sorted` (torch) stays the reference and the GPU path. Where a C++ compiler is
present, `quantile_huber_rows` runs the same algorithm compiled (`_qr_native.cpp`, bit-identical) over torch's
OpenMP threads, ~1.6x faster inside a 2-thread training step; this numba kernel is the fallback.
"""

from __future__ import annotations

import numpy as np

from dvpo_lab.algos import _qr_native

try:  # numba is a declared dependency; the torch path still works without it
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

AVAILABLE = numba is not None


def _kernel(theta, perm, z, row_token, taus, kappa, loss, grad):  # pragma: no cover - compiled
    # theta/loss/grad may be float32 (the model's dtype) or float64; all arithmetic is float64 (the prefix
    # sums cancel)
    R, N = theta.shape
    M = z.shape[1]
    inv_m = 1.0 / M
    inv_k = 1.0 / kappa if kappa > 0.0 else 0.0
    half_inv_k = 0.5 * inv_k
    cnt_a = np.empty(N + 1, np.int64)
    cnt_b = np.empty(N + 1, np.int64)
    cnt_c = np.empty(N + 1, np.int64)
    t = np.empty(N + 1)  # this row's predictions, ascending, + inf sentinel
    zr = np.empty(M + 1)  # this token's targets + inf sentinel
    q1 = np.zeros(M + 1)  # prefix sums of z and z^2
    q2 = np.zeros(M + 1)
    t[N] = np.inf
    zr[M] = np.inf
    last = -1
    for r in range(R):
        tok = row_token[r]
        if tok != last:  # rows of one token are consecutive: targets and prefix sums once per token
            last = tok
            for j in range(M):
                zj = z[tok, j]
                zr[j] = zj
                q1[j + 1] = q1[j] + zj
                q2[j + 1] = q2[j] + zj * zj
        for k in range(N):
            t[k] = np.float64(theta[r, perm[r, k]])
        # Three merges of the ascending predictions against the ascending targets, interleaved (independent
        # dependency chains) and branch-free: each iteration either advances the target pointer j (z_j below
        # the threshold) or records j as the count for prediction i and moves to i + 1. N + M iterations
        # finish all three; the +inf sentinels t[N] and z[M] keep the finished ones in place.
        ia = ib = ic = 0
        ja = jb = jc = 0
        for _ in range(N + M):
            la = zr[ja] < t[ia] - kappa
            lb = zr[jb] < t[ib]
            lc = zr[jc] <= t[ic] + kappa
            cnt_a[ia] = ja
            cnt_b[ib] = jb
            cnt_c[ic] = jc
            ja += la
            jb += lb
            jc += lc
            ia += 1 - la
            ib += 1 - lb
            ic += 1 - lc
        for k in range(N):
            i = perm[r, k]
            th = t[k]
            tau = np.float64(taus[i])
            a, b, c = cnt_a[k], cnt_b[k], cnt_c[k]  # #{z < th - kappa}, #{z < th}, #{z <= th + kappa}
            if kappa == 0.0:
                s_lo = q1[b]
                s_hi = q1[M] - s_lo
                loss[r, i] = ((1.0 - tau) * (th * b - s_lo) + tau * (s_hi - th * (M - b))) * inv_m
                grad[r, i] = (b - tau * M) * inv_m
                continue
            n1, n2, n3, n4 = a, b - a, c - b, M - c
            s1_1 = q1[a]
            s1_2 = q1[b] - q1[a]
            s1_3 = q1[c] - q1[b]
            s1_4 = q1[M] - q1[c]
            s2_2 = q2[b] - q2[a]
            s2_3 = q2[c] - q2[b]
            quad2 = s2_2 - 2.0 * th * s1_2 + th * th * n2
            quad3 = s2_3 - 2.0 * th * s1_3 + th * th * n3
            loss[r, i] = ((1.0 - tau) * ((th - 0.5 * kappa) * n1 - s1_1 + quad2 * half_inv_k)
                          + tau * (quad3 * half_inv_k + s1_4 - (th + 0.5 * kappa) * n4)) * inv_m
            grad[r, i] = ((1.0 - tau) * (n1 + (th * n2 - s1_2) * inv_k)
                          + tau * ((th * n3 - s1_3) * inv_k - n4)) * inv_m


if AVAILABLE:
    # serial: splitting rows over two threads gained nothing inside a training step (torch's OpenMP workers
    # hold the second core), measured
    _kernel = numba.njit(cache=True, nogil=True)(_kernel)


_CHUNK = 256  # rows per argsort + merge


def quantile_huber_rows(theta: np.ndarray, z_sorted: np.ndarray, row_token: np.ndarray, taus: np.ndarray,
                        kappa: float, loss: np.ndarray | None = None, grad: np.ndarray | None = None,
                        native: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Loss and d loss / d theta per predicted quantile.

    Runs the compiled C++ kernel on torch's threads when it can be built (`_qr_native`; native=None: if
    available, True: required, False: never), else this module's numba kernel in one thread; both give the
    same numbers bit for bit.

    Args:
        theta: [R, N] float32 or float64 predictions, z_sorted: [n, M] float64 ascending targets,
        row_token: [R] int64 row -> target row, taus: [N] float64; loss, grad: optional [R, N] outputs
        (theta's dtype), e.g. numpy views of torch tensors, so no copy follows.
    Returns:
        (loss [R, N], grad [R, N]) in theta's dtype: mean over the M targets of the quantile Huber loss, and
        its derivative with respect to each theta.
    """
    loss = np.empty_like(theta) if loss is None else loss
    grad = np.empty_like(theta) if grad is None else grad
    lib = _qr_native.library(native)
    if lib is not None:
        _qr_native.quantile_huber_rows(lib, np.ascontiguousarray(theta), np.ascontiguousarray(z_sorted),
                                       np.ascontiguousarray(row_token, dtype=np.int64), np.ascontiguousarray(taus),
                                       kappa, loss, grad)
        return loss, grad
    for lo in range(0, theta.shape[0], _CHUNK):
        th = theta[lo:lo + _CHUNK]
        _kernel(th, np.argsort(th, axis=1), z_sorted, row_token[lo:lo + _CHUNK], taus, float(kappa),
                loss[lo:lo + _CHUNK], grad[lo:lo + _CHUNK])
    return loss, grad


# The DVPO regularisers (DVPO paper Eqs. 5-10) fused: value and gradient per token in two passes -------------

REG_TERMS = ("cvar", "gain", "shift", "shape", "curv", "cons")
REG_STATS = ("var_lo_p", "var_up_p", "var_lo_z", "var_up_z", "crossed", "mean_p", "mean_z")


def _mean_var(x, lo, hi):  # pragma: no cover - compiled
    k = hi - lo
    m = 0.0
    for j in range(lo, hi):
        m += x[j]
    m /= k
    v = 0.0
    for j in range(lo, hi):
        d = x[j] - m
        v += d * d
    return m, v / k


def _ensemble(p, t, order, ens, es):  # pragma: no cover - compiled
    H, N = p.shape[1], p.shape[2]
    for i in range(N):
        s = 0.0
        for h in range(H):
            s += p[t, h, i]
        ens[i] = s / H
    for j in range(N):
        es[j] = ens[order[t, j]]


def _token_stats(p, z, t, order, ens, es, ka, kb, kl, ku):  # pragma: no cover - compiled
    """Token t: fills ens (head mean, quantile order) and es (ascending); returns the tail and overall means
    and variances of es and z[t], and the sums of es's second differences over the lower (kl) and upper (ku)
    tails (0 when N < 3) — what both passes of the regularisers need."""
    N = p.shape[2]
    _ensemble(p, t, order, ens, es)
    zt = z[t]
    m_lo_p, v_lo_p = _mean_var(es, 0, ka)
    m_up_p, v_up_p = _mean_var(es, N - kb, N)
    m_lo_z, v_lo_z = _mean_var(zt, 0, ka)
    m_up_z, v_up_z = _mean_var(zt, N - kb, N)
    m_p, _ = _mean_var(es, 0, N)
    m_z, _ = _mean_var(zt, 0, N)
    lo = 0.0
    up = 0.0
    if N >= 3:
        for j in range(kl):
            lo += es[j + 2] - 2.0 * es[j + 1] + es[j]
        for j in range(N - 2 - ku, N - 2):
            up += es[j + 2] - 2.0 * es[j + 1] + es[j]
    return m_lo_p, v_lo_p, m_up_p, v_up_p, m_lo_z, v_lo_z, m_up_z, v_up_z, m_p, m_z, lo, up


def _reg_forward(p, z, order, ka, kb, kl, ku, ml, mu, terms, stats):  # pragma: no cover - compiled
    n, H, N = p.shape
    ens = np.empty(N)
    es = np.empty(N)
    n_pairs = H * (H - 1) // 2
    for t in range(n):
        (m_lo_p, v_lo_p, m_up_p, v_up_p, m_lo_z, v_lo_z, m_up_z, v_up_z, m_p, m_z, lo, up) = _token_stats(
            p, z, t, order, ens, es, ka, kb, kl, ku)
        terms[0, t] = (m_lo_p - m_lo_z) ** 2
        terms[1, t] = (m_up_p - m_up_z) ** 2
        terms[2, t] = max(0.0, m_z - m_p)
        terms[3, t] = max(0.0, v_lo_p - (1.0 - ml) * v_lo_z) + max(0.0, (1.0 + mu) * v_up_z - v_up_p)
        terms[4, t] = max(0.0, lo / kl) + max(0.0, -up / ku) if N >= 3 else 0.0
        cons = 0.0
        if H > 1:
            for i in range(N):
                s = 0.0
                s2 = 0.0
                for h in range(H):
                    x = np.float64(p[t, h, i])
                    s += x
                    s2 += x * x
                cons += H * s2 - s * s  # = sum over head pairs of (p_h - p_g)^2
            cons /= n_pairs * N
        terms[5, t] = cons
        crossed = 0
        for i in range(N - 1):
            crossed += ens[i + 1] < ens[i]
        stats[t, 0], stats[t, 1], stats[t, 2], stats[t, 3] = v_lo_p, v_up_p, v_lo_z, v_up_z
        stats[t, 4], stats[t, 5], stats[t, 6] = crossed, m_p, m_z


def _reg_backward(p, z, order, g, ka, kb, kl, ku, ml, mu, dp):  # pragma: no cover - compiled
    n, H, N = p.shape
    ens = np.empty(N)
    es = np.empty(N)
    des = np.empty(N)
    n_pairs = H * (H - 1) // 2
    for t in range(n):
        (m_lo_p, v_lo_p, m_up_p, v_up_p, m_lo_z, v_lo_z, m_up_z, v_up_z, m_p, m_z, lo, up) = _token_stats(
            p, z, t, order, ens, es, ka, kb, kl, ku)
        for j in range(N):
            des[j] = 0.0
        c = g[0, t] * 2.0 * (m_lo_p - m_lo_z) / ka  # cvar
        for j in range(ka):
            des[j] += c
        c = g[1, t] * 2.0 * (m_up_p - m_up_z) / kb  # gain
        for j in range(N - kb, N):
            des[j] += c
        if m_z - m_p > 0.0:  # shift (a ReLU's gradient is 0 at 0, as torch's)
            c = -g[2, t] / N
            for j in range(N):
                des[j] += c
        if v_lo_p - (1.0 - ml) * v_lo_z > 0.0:  # shape, lower tail
            c = g[3, t] * 2.0 / ka
            for j in range(ka):
                des[j] += c * (es[j] - m_lo_p)
        if (1.0 + mu) * v_up_z - v_up_p > 0.0:  # shape, upper tail
            c = -g[3, t] * 2.0 / kb
            for j in range(N - kb, N):
                des[j] += c * (es[j] - m_up_p)
        if N >= 3:  # curvature
            if lo > 0.0:
                c = g[4, t] / kl
                for j in range(kl):
                    des[j] += c
                    des[j + 1] -= 2.0 * c
                    des[j + 2] += c
            if -up > 0.0:
                c = -g[4, t] / ku
                for j in range(N - 2 - ku, N - 2):
                    des[j] += c
                    des[j + 1] -= 2.0 * c
                    des[j + 2] += c
        for j in range(N):
            ens[order[t, j]] = des[j] / H  # d/d ens, back in the original quantile order, then per head
        c = g[5, t] * 2.0 / (n_pairs * N) if H > 1 else 0.0
        for i in range(N):
            s = 0.0
            for h in range(H):
                s += p[t, h, i]
            for h in range(H):
                dp[t, h, i] = ens[i] + c * (H * p[t, h, i] - s)


if AVAILABLE:
    _mean_var = numba.njit(cache=True, nogil=True, inline="always")(_mean_var)
    _ensemble = numba.njit(cache=True, nogil=True, inline="always")(_ensemble)
    _token_stats = numba.njit(cache=True, nogil=True, inline="always")(_token_stats)
    _reg_forward = numba.njit(cache=True, nogil=True)(_reg_forward)
    _reg_backward = numba.njit(cache=True, nogil=True)(_reg_backward)


def regularisers(p: np.ndarray, z_sorted: np.ndarray, ka: int, kb: int, kl: int, ku: int, margin_low: float,
                 margin_up: float, native: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-token values of REG_TERMS `[6, n]`, diagnostics REG_STATS `[n, 7]` and the ensemble's argsort.

    Args:
        p: [n, H, N] predicted quantiles per head, z_sorted: [n, N] float64 ascending targets; ka/kb: tail
        sizes over N quantiles, kl/ku over the N - 2 second differences; margins as in the loss; native:
        as in `quantile_huber_rows` (None: compiled if it builds, False: numba); the same numbers either way.
    """
    n, H, N = p.shape
    order = np.argsort(p.mean(axis=1), axis=1)  # numpy's order (ties included) on both paths: same numbers
    terms = np.zeros((len(REG_TERMS), n))
    stats = np.zeros((n, len(REG_STATS)))
    lib = _qr_native.library(native)
    if lib is not None:
        _qr_native.reg_forward(lib, np.ascontiguousarray(p), np.ascontiguousarray(z_sorted), order, ka, kb, kl, ku,
                               margin_low, margin_up, terms, stats)
    else:
        _reg_forward(p, z_sorted, order, ka, kb, kl, ku, float(margin_low), float(margin_up), terms, stats)
    return terms, stats, order


def regularisers_grad(p: np.ndarray, z_sorted: np.ndarray, order: np.ndarray, g: np.ndarray, ka: int, kb: int,
                      kl: int, ku: int, margin_low: float, margin_up: float, dp: np.ndarray,
                      native: bool | None = None) -> None:
    """dp[t, h, i] = sum_k g[k, t] d terms[k, t] / d p[t, h, i] (written into `dp`)."""
    lib = _qr_native.library(native)
    if lib is not None:
        _qr_native.reg_backward(lib, np.ascontiguousarray(p), np.ascontiguousarray(z_sorted), order,
                                np.ascontiguousarray(g, dtype=np.float64), ka, kb, kl, ku, margin_low, margin_up, dp)
        return
    _reg_backward(p, z_sorted, order, np.ascontiguousarray(g, dtype=np.float64), ka, kb, kl, ku,
                  float(margin_low), float(margin_up), dp)
