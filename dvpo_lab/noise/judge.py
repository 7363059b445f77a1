"""``noise=rm0.72``: an imperfect judge (reward model) of set accuracy."""

from __future__ import annotations

from typing import Any

import torch

from dvpo_lab.noise.flip import AsymmetricFlipNoise


class JudgeNoise(AsymmetricFlipNoise):
    """An imperfect judge (reward model) of set accuracy: each sample's clean binary verdict is reported
    correctly with probability ``acc`` and inverted otherwise, independently per sample (the DVPO paper's
    dialogue regime, about 72%). Equivalent to a symmetric per-sample flip with p = 1 - acc; J = 2 acc - 1.

    Logs ``noise/judge_acc``, the realised fraction of verdicts reported correctly.

    Args:
        acc: the judge's accuracy P(reported verdict = clean verdict), in [0, 1].
    Raises:
        ValueError: ``acc`` outside [0, 1].
    """

    def __init__(self, acc: float) -> None:
        if not (isinstance(acc, (int, float)) and 0.0 <= acc <= 1.0):
            raise ValueError(f"noise.acc must be a judge accuracy in [0, 1], got {acc!r}")
        super().__init__(fp=1.0 - acc, fn=1.0 - acc, granularity="sample")
        self.acc = float(acc)

    def apply(self, clean: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, dict[str, float]]:
        noisy, metrics = super().apply(clean, **kwargs)
        metrics["noise/judge_acc"] = 1.0 - metrics["noise/flip_rate"]
        return noisy, metrics
