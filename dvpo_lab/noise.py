"""Reward-noise models: turn a task's clean score into the score training sees (spec section 5, oracles 44-45).

Noise acts during training only and is applied after the verifier, before any advantage. Every random draw is
a counter-based hash of (seed, step, index), so it is independent of the responses and of the policy, is the
same on every run and DDP rank, and needs no RNG state in checkpoints. Ranks pass ``sample_offset`` (the global
index of their first sample) so that sample ``i`` on any rank draws the same number it would in one process.
"""

from __future__ import annotations

import abc
import logging
import math
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1
# Domain words: a per-sample draw and a per-group draw with the same number must not coincide.
_DOMAIN_SAMPLE, _DOMAIN_GROUP = 0x5A3F1E, 0x6B4C2D
GRANULARITIES = ("sample", "group")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised splitmix64 finaliser on uint64 arrays (wrapping arithmetic is intended)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def counter_uniform(seed: int, step: int, index: np.ndarray, domain: int = _DOMAIN_SAMPLE) -> np.ndarray:
    """Uniform draws in [0, 1) that depend only on (domain, seed, step, index).

    Args:
        seed, step: run seed and training step (any Python ints; negatives wrap to 64 bits).
        index: ``[N]`` integer array of global indices.

    Returns:
        ``[N]`` float64 array; 10^5 draws take about a millisecond.
    """
    with np.errstate(over="ignore"):
        h = np.full(np.shape(index), domain & _MASK64, dtype=np.uint64)
        for word in (seed, step):
            h = _splitmix64(h ^ np.uint64(word & _MASK64))
        h = _splitmix64(h ^ np.asarray(index, dtype=np.int64).astype(np.uint64))
    # top 53 bits -> a double in [0, 1), each value equally likely
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _as_binary_numpy(clean: torch.Tensor) -> np.ndarray:
    """``[B]`` clean scores as a float32 numpy array (a view when already float32 on CPU), checked binary.

    The noise works on numpy copies: a reward vector is small, and per-op torch overhead on a busy CPU
    thread pool costs more than the copy.
    """
    if clean.dim() != 1:
        raise ValueError(f"clean scores must be [B], got shape {tuple(clean.shape)}")
    c = clean.detach().to("cpu", torch.float32).numpy()
    if not np.isin(c, (0.0, 1.0)).all():
        raise ValueError("flip noise needs binary clean scores in {0, 1}")
    return c


def noise_metrics(clean: np.ndarray, noisy: np.ndarray, fp: float, fn: float) -> dict[str, float]:
    """Realised rates on this batch; a class absent from the batch falls back to the configured rate.

    ``noise/fp_rate`` = P(noisy = 1 | clean = 0), ``noise/fn_rate`` = P(noisy = 0 | clean = 1), and
    ``noise/youden_j`` = TPR - FPR = 1 - fn_rate - fp_rate (learning needs J > 0; Rad et al. 2026).
    """
    neg, pos = clean == 0, clean == 1
    flipped = noisy != clean
    fp_rate = float(flipped[neg].mean()) if neg.any() else fp
    fn_rate = float(flipped[pos].mean()) if pos.any() else fn
    flip_rate = float(flipped.mean()) if flipped.size else 0.0
    return {
        "noise/flip_rate": flip_rate,
        "noise/youden_j": 1.0 - fp_rate - fn_rate,
        "noise/fp_rate": fp_rate,
        "noise/fn_rate": fn_rate,
    }


class RewardNoise(abc.ABC):
    """Maps clean ``[B]`` scores to the noisy scores training sees, plus metrics to log."""

    @abc.abstractmethod
    def apply(
        self,
        clean: torch.Tensor,
        *,
        seed: int,
        step: int,
        group_index: torch.Tensor,
        sample_offset: int = 0,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Corrupt a batch of clean scores.

        Args:
            clean: ``[B]`` float scores in ``{0, 1}``.
            seed: run seed.
            step: training step; draws differ between steps.
            group_index: ``[B]`` integer group (prompt) id of each sample, globally unique within a step
                (e.g. the prompt's global index), used by group-granularity noise.
            sample_offset: global index of this batch's first sample (DDP rank offset).

        Returns:
            ``([B] noisy scores, same dtype and device as clean; metrics)``.
        """


class NoNoise(RewardNoise):
    """Identity: training sees the clean reward."""

    def apply(
        self,
        clean: torch.Tensor,
        *,
        seed: int,
        step: int,
        group_index: torch.Tensor,
        sample_offset: int = 0,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return clean.clone(), {
            "noise/flip_rate": 0.0,
            "noise/youden_j": 1.0,
            "noise/fp_rate": 0.0,
            "noise/fn_rate": 0.0,
        }


class AsymmetricFlipNoise(RewardNoise):
    """Flip a binary reward: 0 -> 1 with probability ``fp`` (rho_0), 1 -> 0 with probability ``fn`` (rho_1).

    E[R~ | R] = fp + (1 - fp - fn) R. With ``granularity="group"`` all samples of a group share one uniform
    draw (keyed by (seed, step, group id)), so a symmetric flip turns the whole group's rewards at once.
    """

    def __init__(self, fp: float, fn: float, granularity: str = "sample") -> None:
        for name, rate in (("fp", fp), ("fn", fn)):
            if not (isinstance(rate, (int, float)) and 0.0 <= rate <= 1.0):
                raise ValueError(f"noise.{name} must be a probability in [0, 1], got {rate!r}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"noise.granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.fp, self.fn, self.granularity = float(fp), float(fn), granularity

    def draws(
        self, n: int, *, seed: int, step: int, group_index: torch.Tensor, sample_offset: int
    ) -> np.ndarray:
        """``[n]`` uniforms for the batch, per sample or shared per group."""
        if self.granularity == "group":
            if group_index.shape != (n,):
                raise ValueError(f"group_index must be [{n}], got shape {tuple(group_index.shape)}")
            ids = group_index.detach().cpu().numpy().astype(np.int64)
            return counter_uniform(seed, step, ids, _DOMAIN_GROUP)
        return counter_uniform(seed, step, np.arange(sample_offset, sample_offset + n, dtype=np.int64))

    def apply(
        self,
        clean: torch.Tensor,
        *,
        seed: int,
        step: int,
        group_index: torch.Tensor,
        sample_offset: int = 0,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        c = _as_binary_numpy(clean)
        u = self.draws(c.size, seed=seed, step=step, group_index=group_index, sample_offset=sample_offset)
        # one uniform per sample, compared with the rate of its clean class: flips never look at the response
        flip = u < np.where(c == 1, self.fn, self.fp)
        noisy = np.where(flip, np.float32(1) - c, c)
        out = torch.from_numpy(noisy).to(device=clean.device, dtype=clean.dtype)  # no copy for float32 CPU
        return out, noise_metrics(c, noisy, self.fp, self.fn)


class FlipNoise(AsymmetricFlipNoise):
    """Symmetric flip R~ = R XOR Bernoulli(p) (Lv et al. 2025): E[R~ | R] = p + (1 - 2p) R, J = 1 - 2p."""

    def __init__(self, p: float, granularity: str = "sample") -> None:
        if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
            raise ValueError(f"noise.p must be a probability in [0, 1], got {p!r}")
        super().__init__(fp=p, fn=p, granularity=granularity)
        self.p = float(p)


def backward_correct(noisy: torch.Tensor, fp: float, fn: float) -> torch.Tensor:
    """Unbiased backward correction (Natarajan et al. 2013): R^ = (R~ - rho_0) / (1 - rho_0 - rho_1).

    E[R^ | R] = R. Undefined at J = 1 - rho_0 - rho_1 = 0, where the noisy reward carries no signal.
    """
    j = 1.0 - fp - fn
    if math.isclose(j, 0.0, abs_tol=1e-12):
        raise ValueError("backward correction is undefined when fp + fn = 1 (Youden's J = 0)")
    return (noisy - fp) / j


NOISES: dict[str, type[RewardNoise]] = {"none": NoNoise, "flip": FlipNoise, "asym_flip": AsymmetricFlipNoise}


def build_noise(kind: str, **kwargs: Any) -> RewardNoise:
    """Build a noise model by kind: ``none``, ``flip`` (``p``, ``granularity``), ``asym_flip`` (``fp``, ``fn``,
    ``granularity``)."""
    if kind not in NOISES:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {sorted(NOISES)}")
    return NOISES[kind](**kwargs)
