"""task=dialogue x the tiny model end to end: warm-start on dialogues, multi-turn PPO/GRPO, TCR/ACR/GCR logged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dvpo_lab.run import run
from tests.test_train import read_metrics, training_rows

DOMAINS = ("life", "transport", "health", "social", "finance")


@pytest.mark.parametrize("algo", ["dvpo", "ppo", "grpo"])
def test_dialogue_smoke_run_logs_tcr_acr_gcr(smoke_cfg, algo):
    cfg = smoke_cfg(
        f"algo={algo}",
        "task=dialogue",
        "noise=flip0.2",
        "task.n_test=10",
        "task.n_sft=32",
        *(["critic.n_quantiles=16"] if algo == "dvpo" else []),
        "rollout.eval_limit=10",
        "rollout.eval_batch_size=5",
    )
    run(cfg)
    out = Path(cfg.paths.output_dir)
    summary = json.loads((out / "summary.json").read_text())
    final = summary["history"][-1]
    assert final["step"] == cfg.total_steps and final["val/acc"] == final["val/tcr"]
    for name in ("tcr", "acr", "gcr"):
        assert 0.0 <= final[f"val/{name}"] <= 1.0
    assert any(f"val/tcr/{d}" in final for d in DOMAINS)

    rows = read_metrics(out)
    val_cols = {k for r in rows for k, v in r.items() if v != "" and k.startswith("val/")}
    assert {"val/acc", "val/tcr", "val/acr", "val/gcr"} <= val_cols
    for row in training_rows(rows).values():
        assert all(math.isfinite(v) for v in row.values()), row
        assert "actor/pg_loss" in row and "critic/score_clean/mean" in row
        assert (algo in ("ppo", "dvpo")) == ("critic/vf_loss" in row)
        assert (algo == "dvpo") == ("critic/loss_shape" in row)


def test_gcr_reward_with_flip_noise_fails_at_start(smoke_cfg):
    from dvpo_lab.config import ConfigError

    with pytest.raises(ConfigError, match="task.reward=gcr"):
        run(smoke_cfg("task=dialogue", "task.reward=gcr", "noise=flip0.2"))
