"""KL-coefficient controllers for "KL in reward" mode (verl `AdaptiveKLController`, Ziegler et al. 2019).

Both controllers expose `.value` (the current beta), `.update(current_kl, n_steps)` and
`state_dict()` / `load_state_dict()`, so the trainer can store them in a checkpoint and resume beta exactly.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = ["AdaptiveKLController", "FixedKLController"]


def _as_float(x: float | torch.Tensor) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


class FixedKLController:
    """Constant beta; `update` is a no-op.

    Args:
        kl_coef: beta, the weight of the per-token KL penalty in the reward.
    """

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> None:
        """No-op: the fixed controller keeps beta constant (arguments kept for a common interface)."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller that steers the observed KL towards `target_kl` (verl `AdaptiveKLController`).

    e = clip(KL_current / KL_target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon).

    Args:
        init_kl_coef: initial beta.
        target_kl: KL (nats per token, as measured by the caller) the controller aims for; must be > 0.
        horizon: number of samples over which a 20% error changes beta by about 20%; must be > 0.
    """

    def __init__(self, init_kl_coef: float, target_kl: float, horizon: float) -> None:
        if target_kl <= 0 or horizon <= 0:
            raise ValueError(f"target_kl and horizon must be > 0, got {target_kl}, {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target_kl)
        self.horizon = float(horizon)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> None:
        """Update beta from the KL of the last batch.

        Args:
            current_kl: verl uses the batch mean of per-sequence masked-mean KL.
            n_steps: number of samples in that batch (verl: batch size).
        """
        kl = _as_float(current_kl)
        if not math.isfinite(kl):
            # A NaN KL would poison beta for the rest of training; skip the step and say so.
            log.warning("AdaptiveKLController: non-finite KL %s, beta left at %s", kl, self.value)
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])
