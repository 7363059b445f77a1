"""The compiled CPU kernels of DVPO's critic loss (`dvpo_lab.algos.kernels`) against the torch path, their
independence of the thread count, and the fallback to the torch path when they cannot be built.

Tolerances (the module docstring states them too): float64 1e-10 absolute; float32 QR loss 1e-6 relative +
1e-6 absolute; float32 regularisers 1e-5 relative + 1e-6 absolute (the torch path computes them in float32)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvpo_lab.algos import kernels
from dvpo_lab.algos.dvpo import Tails, regularisers_torch
from dvpo_lab.algos.quantiles import quantile_huber_pairs, quantile_huber_sorted, quantile_levels

TOL = {torch.float64: dict(rtol=0.0, atol=1e-10), torch.float32: dict(rtol=1e-6, atol=1e-6)}
REG_TOL = {torch.float64: dict(rtol=0.0, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-6)}


@pytest.fixture(scope="module")
def compiled():
    """Skips where the compiled kernels cannot be built (no compiler, or DVPO_LAB_NATIVE=0)."""
    if not kernels.available(torch.zeros(1)):
        pytest.skip("compiled kernels not built here (no compiler or DVPO_LAB_NATIVE=0): the torch path runs")


needs_kernels = pytest.mark.usefixtures("compiled")


def torch_qr(pred: torch.Tensor, z: torch.Tensor, taus: torch.Tensor, kappa: float) -> torch.Tensor:
    """The torch path of `kernels.quantile_huber`: [n, H, N] against [n, M] targets shared by the heads."""
    n, H, _ = pred.shape
    return quantile_huber_sorted(pred, z.unsqueeze(1).expand(n, H, z.shape[-1]), taus, kappa)


def torch_regularisers(p, z, ka, kb, kl, ku, ml, mu) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch path of `kernels.regularisers`: terms [6, n] (differentiable) and the stats [n, 7]."""
    out = regularisers_torch(p, z, kernels.REG_TERMS, Tails(ka, kb, kl, ku), ml, mu)
    terms = torch.stack([out[k] for k in kernels.REG_TERMS])
    with torch.no_grad():
        ens = p.mean(1)
        es = ens.sort(-1).values
        N = p.shape[-1]
        stats = torch.stack(
            [
                es[:, :ka].var(-1, unbiased=False),
                es[:, N - kb :].var(-1, unbiased=False),
                z[:, :ka].var(-1, unbiased=False),
                z[:, N - kb :].var(-1, unbiased=False),
                (ens[:, 1:] < ens[:, :-1]).sum(-1).to(p.dtype),
                ens.mean(-1),
                z.mean(-1),
            ],
            -1,
        )
    return terms, stats


def tails(N: int, frac: float = 0.1) -> tuple[int, int, int, int]:
    k = max(1, int(frac * N))
    kd = max(1, int(frac * (N - 2))) if N >= 3 else 1
    return k, k, kd, kd


def qr_inputs(n: int, H: int, N: int, dtype: torch.dtype, seed: int = 11):
    """Testbed-like rows with the hard cases: tied predictions, tied targets, predictions exactly on targets,
    values distinct in float64 but equal in float32 with targets between them."""
    gen = torch.Generator().manual_seed(seed)
    z = 0.5 + 0.08 * torch.randn(n, N, generator=gen, dtype=torch.float64)
    z[:20] = z[:20].round(decimals=1)  # tied targets
    z[20:40, :4] = 0.5 + 1e-9 * torch.tensor([0.5, 1.5, 0.5, 1.5], dtype=torch.float64)
    theta = 0.5 + 0.3 * torch.randn(n, H, N, generator=gen, dtype=torch.float64)
    theta[:20] = theta[:20].round(decimals=1)  # tied predictions, many exactly on a tied target
    theta[20:40] = 0.5 + 1e-9 * torch.randint(0, 3, (20, H, N), generator=gen)
    return theta.to(dtype), z.to(dtype).sort(-1).values, quantile_levels(N, dtype=dtype)


def reg_inputs(n: int, H: int, N: int, dtype: torch.dtype, seed: int = 5):
    """Random heads, tokens whose ensemble has exact ties (0-29), convex (30-44) and concave (45-59) monotone
    quantile curves: the curvature hinges active in the lower and in the upper tail."""
    gen = torch.Generator().manual_seed(seed)
    p = 0.5 + 0.3 * torch.randn(n, H, N, generator=gen, dtype=torch.float64)
    u = torch.linspace(0.0, 1.0, N, dtype=torch.float64) + 0.01 * torch.arange(H, dtype=torch.float64)[:, None]
    p[30:45], p[45:60] = u.square(), u.sqrt()
    p[:30, :, 1::4] = p[:30, :, 0::4][..., : p[:30, :, 1::4].shape[-1]]  # quantile 4j + 1 = quantile 4j: tied means
    z = (0.5 + 0.1 * torch.randn(n, N, generator=gen, dtype=torch.float64)).sort(-1).values
    return p.to(dtype), z.to(dtype)


def group_sums(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """x [n, H, N] summed over the quantiles whose head means are exactly equal (per token and head): the
    gradient of a sort-based term within a tie is a choice between valid subgradients, its sum is not."""
    ens = p.double().mean(1)  # [n, N]
    first = (ens.unsqueeze(-1) == ens.unsqueeze(-2)).double().argmax(-1)  # first quantile of each tie group
    return torch.zeros_like(x).scatter_add_(-1, first.unsqueeze(1).expand_as(x), x)


# Values and gradients: compiled == torch path --------------------------------------------------------------


@needs_kernels
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6),
    H=st.integers(1, 3),
    N=st.integers(1, 12),
    M=st.integers(1, 15),
    kappa=st.sampled_from([0.0, 0.02, 0.5]),
    seed=st.integers(0, 10_000),
)
def test_quantile_huber_equals_all_pairs(n, H, N, M, kappa, seed):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, H, N, generator=gen, dtype=torch.float64)
    z = torch.randn(n, M, generator=gen, dtype=torch.float64).sort(-1).values
    taus = quantile_levels(N, dtype=torch.float64)
    p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    fast = kernels.quantile_huber(p1, z, taus, kappa)
    ref = quantile_huber_pairs(p2, z.unsqueeze(1).expand(n, H, M), taus, kappa)
    torch.testing.assert_close(fast, ref, rtol=0.0, atol=1e-10)
    w = torch.rand(n, H, N, generator=gen, dtype=torch.float64)
    (fast * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(p1.grad, p2.grad, rtol=0.0, atol=1e-10)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kappa", [0.0, 0.02])
@pytest.mark.parametrize("H", [1, 3])
def test_quantile_huber_equals_the_torch_path(dtype, kappa, H):
    """Testbed shapes (N = M = 200) with ties of every kind; at a tie both paths take the same subgradient."""
    theta, z, taus = qr_inputs(60, H, 200, dtype)
    p1, p2 = theta.clone().requires_grad_(), theta.clone().requires_grad_()
    got, ref = kernels.quantile_huber(p1, z, taus, kappa), torch_qr(p2, z, taus, kappa)
    assert got.dtype == dtype and got.shape == theta.shape
    torch.testing.assert_close(got, ref, **TOL[dtype])
    w = torch.rand(theta.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    (got * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(p1.grad, p2.grad, **TOL[dtype])


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("H,margins", [(3, (0.0, 0.0)), (1, (0.2, 0.3)), (3, (0.0, 0.5))])
def test_regularisers_equal_the_torch_path(dtype, H, margins):
    """Terms, diagnostics and gradients at N = 200 (tails of 20 and 19), with tied ensemble quantiles."""
    p, z = reg_inputs(80, H, 200, dtype)
    ka, kb, kl, ku = 20, 20, 19, 19
    p1, p2 = p.clone().requires_grad_(), p.clone().requires_grad_()
    terms, stats = kernels.regularisers(p1, z, ka, kb, kl, ku, *margins)
    ref_terms, ref_stats = torch_regularisers(p2, z, ka, kb, kl, ku, *margins)
    assert terms.shape == (6, 80) and stats.shape == (80, 7) and terms.dtype == stats.dtype == dtype
    assert not stats.requires_grad
    assert (terms[4, 30:60] > 0).all() and bool((terms[5] > 0).all()) == (H > 1)  # curvature, consistency at work
    torch.testing.assert_close(terms, ref_terms, **REG_TOL[dtype])
    torch.testing.assert_close(stats, ref_stats, **REG_TOL[dtype])
    g = torch.randn(terms.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    (terms * g).sum().backward()
    (ref_terms * g).sum().backward()
    torch.testing.assert_close(group_sums(p1.grad, p), group_sums(p2.grad, p), **REG_TOL[dtype])
    untied = slice(30, None)  # no ties there: the gradients agree quantile by quantile
    torch.testing.assert_close(p1.grad[untied], p2.grad[untied], **REG_TOL[dtype])


@needs_kernels
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 5),
    H=st.integers(1, 4),
    N=st.integers(1, 40),
    seed=st.integers(0, 10_000),
    frac=st.sampled_from([0.1, 0.3]),
    margins=st.sampled_from([(0.0, 0.0), (0.2, 0.3)]),
)
def test_regularisers_equal_the_torch_path_at_any_size(n, H, N, seed, frac, margins):
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(n, H, N, generator=gen, dtype=torch.float64)
    z = (torch.randn(n, N, generator=gen, dtype=torch.float64) * 0.5 + 0.2).sort(-1).values
    k = tails(N, frac)
    p1, p2 = p.clone().requires_grad_(), p.clone().requires_grad_()
    terms, stats = kernels.regularisers(p1, z, *k, *margins)
    ref_terms, ref_stats = torch_regularisers(p2, z, *k, *margins)
    torch.testing.assert_close(terms, ref_terms, rtol=0.0, atol=1e-10)
    torch.testing.assert_close(stats, ref_stats, rtol=0.0, atol=1e-10)
    if n:
        g = torch.randn(6, n, generator=gen, dtype=torch.float64)
        (terms * g).sum().backward()
        (ref_terms * g).sum().backward()
        torch.testing.assert_close(p1.grad, p2.grad, rtol=0.0, atol=1e-10)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_results_do_not_depend_on_the_thread_count(dtype):
    theta, z, taus = qr_inputs(60, 3, 200, dtype)
    p, zr = reg_inputs(80, 3, 200, dtype)
    g = torch.randn(6, 80, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def run():
        x, y = theta.clone().requires_grad_(), p.clone().requires_grad_()
        loss = kernels.quantile_huber(x, z, taus, 0.02)
        loss.sum().backward()
        terms, stats = kernels.regularisers(y, zr, 20, 20, 19, 19, 0.2, 0.3)
        (terms * g.to(dtype)).sum().backward()
        return loss.detach(), x.grad, terms.detach(), stats, y.grad

    old = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(run())
    finally:
        torch.set_num_threads(old)
    for other in outs[1:]:
        for a, b in zip(outs[0], other, strict=True):
            assert torch.equal(a, b)


@needs_kernels
def test_shapes_that_do_not_fit_are_refused():
    taus = quantile_levels(4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"pred \[n, H, N\]"):
        kernels.quantile_huber(torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, 5), taus, 0.02)
    with pytest.raises(RuntimeError, match="taus"):
        kernels.quantile_huber(torch.zeros(2, 1, 4, dtype=torch.float64), torch.zeros(2, 5), taus[:3], 0.02)
    with pytest.raises(RuntimeError, match="tail sizes"):
        kernels.regularisers(torch.zeros(2, 1, 4), torch.zeros(2, 4), 5, 1, 1, 1, 0.0, 0.0)
    assert not kernels.available(torch.zeros(3, dtype=torch.float16))
    assert not kernels.available(torch.zeros(3, dtype=torch.int64))


# The fallback: one logged line, the torch path runs ---------------------------------------------------------


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A loader that has not tried yet, building into an empty cache; the real state comes back afterwards."""
    monkeypatch.setattr(kernels, "_loaded", False)
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setenv("DVPO_LAB_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.delenv("DVPO_LAB_NATIVE", raising=False)
    return tmp_path / "native"


def assert_falls_back(caplog, message: str) -> str:
    """One line from the loader saying why (returned); the kernels refuse; the critic loss's QR runs the torch
    path."""
    from dvpo_lab.algos.dvpo import qr_per_quantile

    theta, z, taus = qr_inputs(40, 3, 16, torch.float32)
    with caplog.at_level(logging.INFO, logger=kernels.__name__):
        assert not kernels.available(theta)
        assert not kernels.available(theta)  # tried once
    lines = [r for r in caplog.records if r.name == kernels.__name__]
    assert len(lines) == 1 and message in lines[0].getMessage() and "torch path" in lines[0].getMessage()
    with pytest.raises(RuntimeError, match="available"):
        kernels.quantile_huber(theta, z, taus, 0.02)
    assert torch.equal(qr_per_quantile(theta, z, taus, 0.02, "heads"), torch_qr(theta, z, taus, 0.02))
    return lines[0].getMessage()


def test_switched_off_by_the_environment(fresh, monkeypatch, caplog):
    monkeypatch.setenv("DVPO_LAB_NATIVE", "0")
    assert_falls_back(caplog, "DVPO_LAB_NATIVE=0")


def test_without_a_compiler_the_torch_path_runs(fresh, monkeypatch, caplog):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert_falls_back(caplog, "no C++ compiler")
    assert not fresh.exists()  # nothing attempted


def test_a_source_that_does_not_compile_falls_back_with_the_compiler_error(fresh, monkeypatch, caplog, tmp_path):
    if kernels._compiler() is None or kernels._ninja_path() is None:
        pytest.skip("no C++ compiler or ninja here")
    bad = tmp_path / "broken.cpp"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(kernels, "SOURCE", bad)
    line = assert_falls_back(caplog, "could not build")
    assert "error" in line and str(fresh) in line  # the compiler's first error and where to rebuild by hand
    assert not list(fresh.glob("*/*.so")) and not list(fresh.glob("*/lock"))  # no library, no stale lock


def test_a_cache_that_cannot_be_written_falls_back(fresh, monkeypatch, caplog, tmp_path):
    if kernels._compiler() is None or kernels._ninja_path() is None:
        pytest.skip("no C++ compiler or ninja here")
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("DVPO_LAB_CACHE", str(blocker))  # native/ cannot be made under a file
    assert_falls_back(caplog, "could not build")


def test_the_build_folder_follows_the_user_cache_or_torch_extensions_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("DVPO_LAB_CACHE", str(tmp_path / "c"))
    assert kernels.build_dir().parent == tmp_path / "c" / "native"
    monkeypatch.delenv("DVPO_LAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert kernels.build_dir().parent == tmp_path / "x" / "dvpo_lab" / "native"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "t"))
    assert kernels.build_dir().parent == tmp_path / "t"
    assert kernels.build_dir().name.startswith("dvpo_lab_kernels_")


@needs_kernels
def test_a_cold_cache_builds_once_and_later_processes_only_load(tmp_path):
    """Two fresh processes on an empty cache: the first compiles (~7 s here), the second loads the same file.
    (In one process a second library of the same operators cannot be loaded, hence the subprocesses.)"""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_EXTENSIONS_DIR", "DVPO_LAB_NATIVE")}
    env["DVPO_LAB_CACHE"] = str(tmp_path)
    code = (
        "import torch; from dvpo_lab.algos import kernels; torch.manual_seed(0); "
        "x = torch.rand(4, 2, 8, dtype=torch.float64); "
        "z = torch.rand(4, 8, dtype=torch.float64).sort(-1).values; "
        "assert kernels.available(x); print(kernels.build_dir()); "
        "print(kernels.quantile_huber(x, z, torch.rand(8), 0.02).sum().item())"
    )
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    folder = first.stdout.split()[0]
    libs = list((tmp_path / "native").glob("*/*.so"))
    assert len(libs) == 1 and str(libs[0].parent) == folder
    built = libs[0].stat().st_mtime_ns
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout == first.stdout and libs[0].stat().st_mtime_ns == built
