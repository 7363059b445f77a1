"""The compiled-on-first-use kernels: where they cannot be built, the numba kernels run and say why."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from dvpo_lab.algos import _qr_kernel, _qr_native


@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    """A loader that has not tried yet, building into an empty cache; the real state comes back afterwards."""
    monkeypatch.setattr(_qr_native, "_lib", None)
    monkeypatch.setattr(_qr_native, "_tried", False)
    monkeypatch.setenv("DVPO_LAB_CACHE", str(tmp_path))
    return tmp_path / "native"  # the kernels' folder under the user cache


def rows(seed: int = 0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(6, 8)).astype(np.float32)
    z = np.sort(rng.normal(size=(2, 8)), axis=1)
    return theta, z, np.repeat(np.arange(2), 3), (2 * np.arange(1, 9) - 1) / 16.0


def test_without_a_compiler_the_numba_kernel_runs_and_the_log_says_so(fresh_loader, monkeypatch, caplog):
    monkeypatch.setattr(_qr_native, "_compiler", lambda: None)
    with caplog.at_level(logging.WARNING, logger=_qr_native.__name__):
        assert _qr_native.load() is None
    assert "no C++ compiler" in caplog.text
    theta, z, tok, taus = rows()
    got = _qr_kernel.quantile_huber_rows(theta, z, tok, taus, 0.02)
    ref = _qr_kernel.quantile_huber_rows(theta, z, tok, taus, 0.02, native=False)
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])
    with pytest.raises(RuntimeError, match="could not be built"):
        _qr_kernel.quantile_huber_rows(theta, z, tok, taus, 0.02, native=True)


def test_a_failed_build_falls_back_with_the_compiler_error_and_leaves_no_files(fresh_loader, monkeypatch, caplog,
                                                                            tmp_path_factory):
    if _qr_native._compiler() is None:
        pytest.skip("no C++ compiler here")
    bad = tmp_path_factory.mktemp("src") / "broken.cpp"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(_qr_native, "SOURCE", bad)
    with caplog.at_level(logging.WARNING, logger=_qr_native.__name__):
        assert _qr_native.load() is None
    assert "could not build" in caplog.text and "failed" in caplog.text
    assert list(fresh_loader.iterdir()) == []  # no half-written library, no temporary file


def test_switched_off_by_the_environment(fresh_loader, monkeypatch):
    monkeypatch.setenv("DVPO_LAB_NATIVE", "0")
    assert _qr_native.load() is None


def test_a_fresh_cache_builds_once_and_loads(fresh_loader):
    if _qr_native._compiler() is None:
        pytest.skip("no C++ compiler here")
    lib = _qr_native.load()
    assert lib is not None and _qr_native.load() is lib  # tried once per process
    built = list(fresh_loader.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"
    theta, z, tok, taus = rows(1)
    got = _qr_kernel.quantile_huber_rows(theta, z, tok, taus, 0.5, native=True)
    ref = _qr_kernel.quantile_huber_rows(theta, z, tok, taus, 0.5, native=False)
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])
