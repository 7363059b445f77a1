"""The noise models' base class and what they share: the :data:`Sampler` type, binary input checks and the
``noise/*`` rate metrics.

A noise model turns a task's clean ``[B]`` scores into the scores training sees (docs/tasks_and_noise.md). It acts
during training only, after the verifier and before any advantage. Its random draws come from
`dvpo_lab.seeding` (counter-based hashes of (seed, step, index)), so they are independent of the responses and of
the policy, the same on every run and DDP rank, and need no RNG state in checkpoints.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from dvpo_lab.config import ConfigError

if TYPE_CHECKING:  # the tasks package imports torch-heavy modules; noise only needs the types
    from dvpo_lab.tasks import Problem

# sampler(prompts, n, seed, temperature) -> n responses per prompt, prompt-major (len(prompts) * n texts)
Sampler = Callable[[list[str], int, int, float], list[str]]


def as_binary_numpy(clean: torch.Tensor) -> np.ndarray:
    """``[B]`` clean scores as a float32 numpy array (a view when already float32 on CPU), checked binary.

    The noise works on numpy copies: a reward vector is small, and per-op torch overhead on a busy CPU
    thread pool costs more than the copy.

    Raises:
        ValueError: ``clean`` is not ``[B]``. ConfigError (a ValueError): a value outside ``{0, 1}`` (the
            user's reward function with a flip-type noise).
    """
    if clean.dim() != 1:
        raise ValueError(f"clean scores must be [B], got shape {tuple(clean.shape)}")
    c = clean.detach().to("cpu", torch.float32).numpy()
    if not np.isin(c, (0.0, 1.0)).all():
        bad = float(c[~np.isin(c, (0.0, 1.0))][0])
        raise ConfigError(
            f"this noise flips binary rewards but the task's reward (task.reward) gave {bad:g}, not 0 or "
            "1; use noise=none or noise=gauss0.3, or a reward whose scores are 0 or 1"
        )
    return c


def noise_metrics(clean: np.ndarray, noisy: np.ndarray, fp: float, fn: float) -> dict[str, float]:
    """Realised rates on this batch; a class absent from the batch falls back to the configured rate.

    Args:
        clean, noisy: ``[B]`` binary verdicts (0 or 1).
        fp, fn: the configured false-positive and false-negative rates (the fallbacks).
    Returns:
        ``noise/flip_rate`` = P(noisy != clean), ``noise/fp_rate`` = P(noisy = 1 | clean = 0),
        ``noise/fn_rate`` = P(noisy = 0 | clean = 1), and ``noise/youden_j`` = TPR - FPR = 1 - fn_rate - fp_rate
        (learning needs J > 0; Rad et al. 2026).
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
    """Maps clean ``[B]`` scores to the noisy scores training sees, plus metrics to log.

    A noise model is built by ``hydra.utils.instantiate`` from its config node (``conf/noise/*.yaml``: a
    ``_target_``, its constructor's arguments, and a ``name`` that labels the run and is not passed). A
    constructor argument named ``task`` receives the run's task.

    Attributes:
        needs_policy_samples: the noise builds labels from samples of the initial policy; the training loop
            then calls :meth:`prepare` with the step's problems and a :data:`Sampler` before :meth:`apply`.
        needs_binary_scores: the noise reads the clean score as a verdict in ``{0, 1}``; a task whose reward is
            a fraction (``task=dialogue task.reward=gcr``) is refused at start.
    """

    needs_policy_samples: bool = False
    needs_binary_scores: bool = True

    def prepare(self, problems: Sequence[Problem], sampler: Sampler, *, seed: int) -> None:
        """Hook run before :meth:`apply` when :attr:`needs_policy_samples` is set; nothing by default.

        Args:
            problems: the step's distinct problems.
            sampler: draws responses from the frozen initial policy.
            seed: run seed.
        """
        return None  # noise that only transforms scores needs nothing from the policy

    @abc.abstractmethod
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
        """Corrupt a batch of clean scores.

        Args:
            clean: ``[B]`` float scores in ``{0, 1}``.
            seed: run seed.
            step: training step; draws differ between steps.
            group_index: ``[B]`` integer group (prompt) id of each sample, globally unique within a step
                (e.g. the prompt's global index), used by group-granularity noise.
            sample_offset: global index of this batch's first sample (DDP rank offset): sample ``i`` on any
                rank draws the same number it would in one process.
            responses: the ``B`` decoded responses (noise that re-runs the verifier needs them).
            problems: the ``B`` problems they answer, aligned with ``responses``.

        Returns:
            ``([B] noisy scores, same dtype and device as clean; metrics)``; the metrics include at least
            ``noise/flip_rate``, ``noise/fp_rate``, ``noise/fn_rate`` and ``noise/youden_j``
            (:func:`noise_metrics`).
        """
