"""``noise=gauss0.3``: Gaussian noise added to the training score."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from dvpo_lab.noise.base import RewardNoise, noise_metrics
from dvpo_lab.seeding import counter_normal

if TYPE_CHECKING:
    from dvpo_lab.tasks import Problem

# Gaussian scores are turned into verdicts at this threshold for the FP/FN statistics (midway between 0 and 1).
VERDICT_THRESHOLD = 0.5


class GaussianNoise(RewardNoise):
    """R~ = R + N(0, sigma^2) per sample (reward dithering, ReDit arXiv 2506.18631), seeded like the flips:
    the normal draw is keyed by (seed, step, global sample index) (`dvpo_lab.seeding.counter_normal`).

    The noisy score is not binary. For the FP/FN statistics both scores become verdicts at
    ``VERDICT_THRESHOLD`` = 0.5: a clean 0 counts as a false positive when R~ >= 0.5, a clean 1 as a false
    negative when R~ < 0.5; for binary R both rates are 1 - Phi(0.5 / sigma) in expectation (J = 1 - 2 of it).
    Also logs the realised ``noise/gauss_mean`` and ``noise/gauss_sd`` of R~ - R.

    Args:
        sigma: standard deviation of the added noise, finite and >= 0 (0 leaves the scores untouched).
    Raises:
        ValueError: ``sigma`` negative or not finite.
    """

    def __init__(self, sigma: float) -> None:
        if not (isinstance(sigma, (int, float)) and sigma >= 0.0 and math.isfinite(sigma)):
            raise ValueError(f"noise.sigma must be a finite standard deviation >= 0, got {sigma!r}")
        self.sigma = float(sigma)
        # expected FP = FN rate for binary clean scores, the fallback when a class is absent from a batch
        self.verdict_flip = 0.5 * math.erfc(VERDICT_THRESHOLD / (self.sigma * math.sqrt(2))) if sigma > 0 else 0.0

    def apply(
        self,
        clean: torch.Tensor,
        *,
        seed: int,
        step: int,
        group_index: torch.Tensor,
        sample_offset: int = 0,
        responses: Sequence[str] | None = None,
        problems: Sequence[Problem] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if clean.dim() != 1:
            raise ValueError(f"clean scores must be [B], got shape {tuple(clean.shape)}")
        c = clean.detach().to("cpu", torch.float64).numpy()
        if self.sigma == 0.0:
            delta = np.zeros_like(c)
        else:
            delta = self.sigma * counter_normal(seed, step, np.arange(sample_offset, sample_offset + c.size))
        noisy = c + delta
        metrics = noise_metrics(
            (c >= VERDICT_THRESHOLD).astype(np.float32),
            (noisy >= VERDICT_THRESHOLD).astype(np.float32),
            self.verdict_flip,
            self.verdict_flip,
        )
        metrics["noise/gauss_mean"] = float(delta.mean()) if delta.size else 0.0
        metrics["noise/gauss_sd"] = float(delta.std()) if delta.size else 0.0
        return torch.from_numpy(noisy).to(device=clean.device, dtype=clean.dtype), metrics
