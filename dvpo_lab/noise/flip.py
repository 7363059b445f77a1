"""Flips of a binary reward: ``noise=flip0.1|flip0.2|flip0.3`` (symmetric, :class:`FlipNoise`) and
``noise=asym_fp0.1_fn0.3`` (:class:`AsymmetricFlipNoise`), and the unbiased backward correction of a flipped
reward (:func:`backward_correct`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from dvpo_lab.noise.base import RewardNoise, as_binary_numpy, noise_metrics
from dvpo_lab.seeding import DOMAIN_GROUP, counter_uniform

if TYPE_CHECKING:
    from dvpo_lab.tasks import Problem

GRANULARITIES = ("sample", "group")


def _check_rate(name: str, rate: float) -> None:
    if not (isinstance(rate, (int, float)) and 0.0 <= rate <= 1.0):
        raise ValueError(f"noise.{name} must be a probability in [0, 1], got {rate!r}")


class AsymmetricFlipNoise(RewardNoise):
    """Flip a binary reward: 0 -> 1 with probability ``fp`` (rho_0), 1 -> 0 with probability ``fn`` (rho_1).

    E[R~ | R] = fp + (1 - fp - fn) R; Youden's J = 1 - fp - fn. Each sample draws one counter uniform keyed by
    (seed, step, global sample index) and flips when it falls below the rate of its clean class, so flips never
    look at the response. With ``granularity="group"`` all samples of a group share one draw (keyed by (seed,
    step, group id)), so a symmetric flip turns the whole group's rewards at once.

    Args:
        fp: false-positive rate P(R~ = 1 | R = 0), in [0, 1].
        fn: false-negative rate P(R~ = 0 | R = 1), in [0, 1].
        granularity: ``sample`` (each sample flips on its own) or ``group`` (a prompt's samples flip together).
    Raises:
        ValueError: a rate outside [0, 1] or an unknown granularity, naming ``noise.<key>``.
    """

    def __init__(self, fp: float, fn: float, granularity: str = "sample") -> None:
        _check_rate("fp", fp)
        _check_rate("fn", fn)
        if granularity not in GRANULARITIES:
            raise ValueError(f"noise.granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.fp, self.fn, self.granularity = float(fp), float(fn), granularity

    def draws(self, n: int, *, seed: int, step: int, group_index: torch.Tensor, sample_offset: int) -> np.ndarray:
        """``[n]`` uniforms for the batch, per sample or shared per group."""
        if self.granularity == "group":
            if group_index.shape != (n,):
                raise ValueError(f"group_index must be [{n}], got shape {tuple(group_index.shape)}")
            ids = group_index.detach().cpu().numpy().astype(np.int64)
            return counter_uniform(seed, step, ids, DOMAIN_GROUP)
        return counter_uniform(seed, step, np.arange(sample_offset, sample_offset + n, dtype=np.int64))

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
        c = as_binary_numpy(clean)
        u = self.draws(c.size, seed=seed, step=step, group_index=group_index, sample_offset=sample_offset)
        # one uniform per sample, compared with the rate of its clean class: flips never look at the response
        flip = u < np.where(c == 1, self.fn, self.fp)
        noisy = np.where(flip, np.float32(1) - c, c)
        out = torch.from_numpy(noisy).to(device=clean.device, dtype=clean.dtype)  # no copy for float32 CPU
        return out, noise_metrics(c, noisy, self.fp, self.fn)


class FlipNoise(AsymmetricFlipNoise):
    """Symmetric flip R~ = R XOR Bernoulli(p) (Lv et al. 2025): E[R~ | R] = p + (1 - 2p) R, J = 1 - 2p.

    Args:
        p: flip probability, in [0, 1].
        granularity: ``sample`` or ``group``, as in :class:`AsymmetricFlipNoise`.
    """

    def __init__(self, p: float, granularity: str = "sample") -> None:
        _check_rate("p", p)
        super().__init__(fp=p, fn=p, granularity=granularity)
        self.p = float(p)


def backward_correct(noisy: torch.Tensor, fp: float, fn: float) -> torch.Tensor:
    """Unbiased backward correction (Natarajan et al. 2013): R^ = (R~ - rho_0) / (1 - rho_0 - rho_1).

    E[R^ | R] = R for R~ from :class:`AsymmetricFlipNoise` with the same ``fp`` (rho_0) and ``fn`` (rho_1).

    Raises:
        ValueError: J = 1 - rho_0 - rho_1 = 0, where the noisy reward carries no signal.
    """
    j = 1.0 - fp - fn
    if math.isclose(j, 0.0, abs_tol=1e-12):
        raise ValueError("backward correction is undefined when fp + fn = 1 (Youden's J = 0)")
    return (noisy - fp) / j
