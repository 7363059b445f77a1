"""`dvpo_lab.seeding`, the one place seeds are mixed: the numbers equal those recorded from the three schemes it
replaces (noise's vectorised splitmix64 streams, the tasks' `hash_words`, the module's per-step seed), so seeded
runs stay bit-identical."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dvpo_lab.seeding import (
    DOMAIN_GROUP,
    DOMAIN_SAMPLE,
    MASK64,
    counter_hash,
    counter_normal,
    counter_uniform,
    hash_words,
    prompt_seed,
    splitmix64,
    splitmix64_array,
    step_seed,
)

N = 100_000
WORDS = [0, 1, MASK64, 12345]
# recorded from dvpo_lab/tasks/hashing.py (scalar) and dvpo_lab/noise.py (numpy) before the move
SPLITMIX = [16294208416658607535, 10451216379200822465, 16490336266968443936, 2454886589211414944]
INDEX = np.array([0, 1, 2, 1000, -5, 2**62])


def _old_counter_uniform(seed: int, step: int, index: np.ndarray, domain: int) -> np.ndarray:
    """The former `dvpo_lab.noise.counter_uniform`: three vectorised rounds from the domain word."""
    with np.errstate(over="ignore"):
        h = np.full(np.shape(index), domain & MASK64, dtype=np.uint64)
        for word in (seed, step):
            h = splitmix64_array(h ^ np.uint64(word & MASK64))
        h = splitmix64_array(h ^ np.asarray(index, dtype=np.int64).astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def test_splitmix64_scalar_and_array_equal_the_recorded_values() -> None:
    assert [splitmix64(x) for x in WORDS] == SPLITMIX
    assert splitmix64_array(np.array(WORDS, dtype=np.uint64)).tolist() == SPLITMIX
    xs = np.random.default_rng(0).integers(0, 2**63, size=200, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    assert splitmix64_array(xs).tolist() == [splitmix64(int(x)) for x in xs]


def test_hash_words_equals_the_recorded_values() -> None:
    # the generated tasks' draws (arith, sciqa, dialogue): hash_words(stream, seed, index, attempt)
    assert hash_words(1, 2, 3) == 15020427595393229491
    assert hash_words(-1, 7) == 1869568459174662326  # negative words wrap to 64 bits
    assert hash_words() == 0
    assert hash_words(3, 4) != hash_words(4, 3)


def test_counter_streams_equal_the_recorded_values() -> None:
    assert counter_uniform(1, 0, INDEX).tolist() == [
        0.9393244435872926,
        0.8672618521245092,
        0.7777938359130587,
        0.2549817987957247,
        0.38979811856988467,
        0.9286791171150409,
    ]
    assert counter_uniform(-3, 7, INDEX, DOMAIN_GROUP).tolist() == [
        0.7653768873321792,
        0.9863046172574438,
        0.5143649795265993,
        0.5906823639092774,
        0.36386766851291696,
        0.6261151342849822,
    ]
    # the uniforms are exact (integer hashes scaled by 2**-53); the normals pass them through numpy's log1p and cos,
    # whose SIMD paths can differ in the last bit between CPUs (seen between two AVX2 AMD EPYCs): to 1e-12
    assert counter_normal(2, 5, INDEX).tolist() == pytest.approx(
        [
            1.6630878733335221,
            1.7647769075756665,
            -0.4045146656328505,
            1.1779654048297123,
            -0.35334441685760876,
            0.07503503369334419,
        ],
        rel=1e-12,
    )


@pytest.mark.parametrize("seed, step, domain", [(5, 9, DOMAIN_SAMPLE), (5, 9, DOMAIN_GROUP), (-1, 2**40, 0)])
def test_counter_uniform_equals_the_former_three_round_stream(seed: int, step: int, domain: int) -> None:
    index = np.concatenate([np.arange(-1000, N), [2**62, -(2**63)]])
    assert np.array_equal(counter_uniform(seed, step, index, domain), _old_counter_uniform(seed, step, index, domain))


def test_counter_hash_is_hash_words_of_its_words() -> None:
    h = counter_hash(7, 3, INDEX, DOMAIN_GROUP)
    assert h.tolist() == [hash_words(7, 3, int(i), start=DOMAIN_GROUP) for i in INDEX]


def test_step_seed_is_the_training_modules_formula() -> None:
    # the former RLModule.step_seed: ((seed * 1_000_003 + step) * 4099 + rank) * 7 + salt
    assert step_seed(1, 0, 0) == 28_693_086_079
    assert step_seed(3, 17, 1, salt=1) == ((3 * 1_000_003 + 17) * 4099 + 1) * 7 + 1
    seeds = {step_seed(s, t, r, k) for s in range(3) for t in range(50) for r in range(4) for k in range(2)}
    assert len(seeds) == 3 * 50 * 4 * 2


def test_prompt_seed_equals_the_recorded_values() -> None:
    assert prompt_seed(3, "What is 2+2?") == 7715777234429327787
    assert prompt_seed(0, "") == 3797230976420062948
    assert prompt_seed(12345678901, "é") == 3293618390890374802
    assert 0 <= prompt_seed(2**70, "x") < 2**63


def test_draws_are_uniform_and_fast() -> None:
    t0 = time.perf_counter()
    u = counter_uniform(3, 4, np.arange(N))
    assert time.perf_counter() - t0 < 0.5  # milliseconds in practice; loose for a shared machine
    assert u.min() >= 0.0 and u.max() < 1.0
    assert np.histogram(u, bins=10, range=(0, 1))[0].min() > N / 10 * 0.95
    assert np.array_equal(u, counter_uniform(3, 4, np.arange(N)))
    assert np.isfinite(counter_uniform(-1, -2, np.array([-5, 2**62]))).all()
    z = counter_normal(3, 4, np.arange(N))
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
