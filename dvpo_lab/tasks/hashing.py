"""Counter-based hashing for generated tasks: every draw is a pure function of integers, never of Python's
salted ``hash()`` or of RNG state, so runs, ranks and machines agree."""

from __future__ import annotations

MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """One splitmix64 step (Steele et al. 2014): a cheap, well-mixed 64-bit bijection."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def hash_words(*words: int) -> int:
    """Hash a tuple of integers (negative ones included) to 64 bits, deterministically everywhere."""
    h = 0
    for w in words:
        h = splitmix64(h ^ (w & MASK64))
    return h
