"""``noise=none``: training sees the clean reward."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from dvpo_lab.noise.base import RewardNoise

if TYPE_CHECKING:
    from dvpo_lab.tasks import Problem


class NoNoise(RewardNoise):
    """Identity: R~ = R. Takes any score (a fraction too), so it is the noise for ``task.reward=gcr``."""

    needs_binary_scores = False

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
        return clean.clone(), {
            "noise/flip_rate": 0.0,
            "noise/youden_j": 1.0,
            "noise/fp_rate": 0.0,
            "noise/fn_rate": 0.0,
        }
