"""Where seeds are mixed: every seeded number of a run is a pure function of integers (and, for majority-vote
labels, of a prompt's text), never of Python's salted ``hash()`` or of RNG state carried between steps. Runs,
DDP ranks, resumed runs and machines therefore agree, and checkpoints need no RNG state for these draws.

- :func:`splitmix64` / :func:`splitmix64_array`: the 64-bit mixer (Steele, Lea and Flood 2014, "Fast splittable
  pseudorandom number generators", the finaliser of ``SplitMix64``), on one int or a ``uint64`` array.
- :func:`hash_words`: a tuple of integers -> 64 bits, by folding :func:`splitmix64` over the words; generated
  tasks (`dvpo_lab.tasks`) draw every problem, distractor and label-noise spot from it.
- :func:`counter_uniform` / :func:`counter_normal`: ``[N]`` draws keyed by (domain, seed, step, index), the reward
  noise's streams (`dvpo_lab.noise`); the same numbers as :func:`hash_words` of those words, vectorised.
- :func:`step_seed`: the training module's per-step seed (rollout sampling, minibatch order).
- :func:`prompt_seed`: the sampling seed of one prompt's majority-vote samples.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: splitmix64's increment
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64's two multipliers

# Domain words of the noise streams: a per-sample draw, a per-group draw and the two Gaussian uniforms with the
# same (seed, step, index) must not coincide.
DOMAIN_SAMPLE, DOMAIN_GROUP, DOMAIN_GAUSS_R, DOMAIN_GAUSS_THETA = 0x5A3F1E, 0x6B4C2D, 0x7C5D3E, 0x8D6E4F

# step_seed's strides: changing them changes every seeded run
_SEED_STRIDE, _STEP_STRIDE, _RANK_STRIDE = 1_000_003, 4099, 7


def splitmix64(x: int) -> int:
    """One splitmix64 step on a Python int: a cheap, well-mixed bijection of 64-bit words.

    Args:
        x: any int in [0, 2^64) (callers mask wider or negative values with :data:`MASK64`).
    Returns:
        An int in [0, 2^64).
    """
    x = (x + _GOLDEN) & MASK64
    x = ((x ^ (x >> 30)) * _M1) & MASK64
    x = ((x ^ (x >> 27)) * _M2) & MASK64
    return x ^ (x >> 31)


def splitmix64_array(x: np.ndarray) -> np.ndarray:
    """:func:`splitmix64` element-wise on a ``uint64`` array of any shape (the same numbers; numpy's wrapping
    ``uint64`` arithmetic is the ``& MASK64``)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(_GOLDEN)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(_M1)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(_M2)
    return x ^ (x >> np.uint64(31))


def hash_words(*words: int, start: int = 0) -> int:
    """Hash a tuple of integers (negative ones included: each is taken modulo 2^64) to 64 bits.

    ``h = start; for w in words: h = splitmix64(h ^ w)``. Deterministic on every machine and Python version.

    Args:
        words: the integers to mix, in order (order matters).
        start: the initial state; the noise streams start at their domain word.
    Returns:
        An int in [0, 2^64).
    """
    h = start & MASK64
    for w in words:
        h = splitmix64(h ^ (w & MASK64))
    return h


def counter_hash(seed: int, step: int, index: np.ndarray, domain: int = DOMAIN_SAMPLE) -> np.ndarray:
    """``hash_words(seed, step, i, start=domain)`` for every ``i`` of ``index``, vectorised.

    Args:
        seed, step: run seed and training step (any Python ints; negatives wrap to 64 bits).
        index: integer array (any shape) of global indices; negatives wrap to 64 bits.
        domain: the stream's domain word (``DOMAIN_*``).
    Returns:
        ``uint64`` array of ``index``'s shape.
    """
    prefix = np.uint64(hash_words(seed, step, start=domain))  # the words shared by the whole batch, mixed once
    return splitmix64_array(prefix ^ np.asarray(index, dtype=np.int64).astype(np.uint64))


def counter_uniform(seed: int, step: int, index: np.ndarray, domain: int = DOMAIN_SAMPLE) -> np.ndarray:
    """Uniform draws in [0, 1) that depend only on (domain, seed, step, index).

    Args:
        seed, step: run seed and training step (any Python ints; negatives wrap to 64 bits).
        index: ``[N]`` integer array of global indices (e.g. a sample's index in the step's global batch).
        domain: the stream's domain word (``DOMAIN_*``).
    Returns:
        ``[N]`` float64 array; the top 53 bits of :func:`counter_hash` over 2^53, so each of the 2^53 values is
        equally likely. 10^5 draws take about a millisecond.
    """
    return (counter_hash(seed, step, index, domain) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def counter_normal(seed: int, step: int, index: np.ndarray) -> np.ndarray:
    """Standard normal draws ``[N]`` keyed by (seed, step, index): Box-Muller on two counter uniforms
    (domains ``DOMAIN_GAUSS_R`` and ``DOMAIN_GAUSS_THETA``)."""
    u_r = counter_uniform(seed, step, index, DOMAIN_GAUSS_R)
    u_theta = counter_uniform(seed, step, index, DOMAIN_GAUSS_THETA)
    return np.sqrt(-2.0 * np.log1p(-u_r)) * np.cos(2.0 * math.pi * u_theta)  # 1 - u_r in (0, 1]: log is finite


def step_seed(seed: int, step: int, rank: int, salt: int = 0) -> int:
    """The training module's seed for one RL step on one DDP rank: ``((seed * 1000003 + step) * 4099 + rank) * 7
    + salt``.

    Distinct for every (seed, step, rank, salt) with ``rank < 4099``, ``step < 1000003`` and ``salt < 7``.

    Args:
        seed: run seed (``cfg.seed``).
        step: RL step (the module's ``rl_step``).
        rank: DDP global rank.
        salt: which use within the step: 0 = rollout sampling, 1 = the PPO minibatch order.
    Returns:
        A non-negative int for ``torch.Generator.manual_seed`` (for non-negative arguments).
    """
    return ((seed * _SEED_STRIDE + step) * _STEP_STRIDE + rank) * _RANK_STRIDE + salt


def prompt_seed(seed: int, prompt: str) -> int:
    """A sampling seed that depends only on (run seed, prompt text), not on the batch the prompt came in.

    The prompt's 8-byte BLAKE2b digest (little-endian) XOR ``seed * 0x9E3779B97F4A7C15``, kept to 63 bits.

    Returns:
        An int in [0, 2^63).
    """
    digest = hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "little") ^ (seed * _GOLDEN)) & ((1 << 63) - 1)
