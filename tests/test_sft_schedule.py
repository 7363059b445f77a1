"""The warm-start's learning-rate schedule (`sft.lr_schedule`): the constant one is the old warmup-then-flat
factor step for step, the cosine one decays to `sft.min_lr_ratio`, and only a non-default schedule changes the
warm-start cache key (caches made before the key existed stay valid), as does a non-zero `sft.weight_decay`,
which reaches AdamW."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from dvpo_lab.sft import lr_factor, warm_start_key
from tests.conftest import compose_cfg


def test_constant_schedule_is_the_warmup_then_flat_factor():
    sft = OmegaConf.create({"warmup_steps": 50, "lr_schedule": "constant", "min_lr_ratio": 0.0})
    for step in range(0, 400, 7):
        assert lr_factor(step, sft=sft, max_steps=400) == min(1.0, (step + 1) / 50)


@pytest.mark.parametrize("floor", [0.0, 0.1])
def test_cosine_schedule_decays_from_one_to_the_floor(floor):
    sft = OmegaConf.create({"warmup_steps": 50, "lr_schedule": "cosine", "min_lr_ratio": floor})
    f = [lr_factor(s, sft=sft, max_steps=1000) for s in range(1000)]
    assert f[0] == pytest.approx(1 / 50) and f[49] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(floor)
    mid = 49 + (1000 - 50) // 2  # halfway through the decay
    assert f[mid] == pytest.approx(floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 0.5)), abs=2e-3)
    assert all(a >= b for a, b in zip(f[49:], f[50:]))  # never rises after the warmup


def test_only_a_non_default_schedule_changes_the_cache_key():
    default = warm_start_key(compose_cfg(["task=arith"]))  # the schema's sft defaults
    same = ["task=arith", "sft.lr_schedule=constant", "sft.min_lr_ratio=0.0", "sft.weight_decay=0.0"]
    assert warm_start_key(compose_cfg(same)) == default
    assert warm_start_key(compose_cfg(["task=arith", "sft.lr_schedule=cosine"])) != default
    assert warm_start_key(compose_cfg(["task=arith", "sft.weight_decay=0.1"])) != default


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_weight_decay_reaches_adamw(wd):
    from dvpo_lab.models.build import build_policy, build_tokenizer
    from dvpo_lab.run import make_task
    from dvpo_lab.sft import SFTModule

    cfg = compose_cfg(["debug=smoke", f"sft.weight_decay={wd}"])
    module = SFTModule(build_policy(cfg.model, build_tokenizer(cfg.model)), None, make_task(cfg), cfg, max_steps=4)
    opt = module.configure_optimizers()["optimizer"]
    assert [g["weight_decay"] for g in opt.param_groups] == [wd]


def test_a_warm_start_short_of_its_teacher_warns(smoke_cfg, caplog):
    """A fixed-budget warm-start that ends far below its teacher's plateau (4 smoke steps: ~0 %; the teacher's
    accuracy on the same test problems is ~50 %) says so, in the run and again when the cache is reused; exact
    demonstrations (teacher accuracy 1) and a threshold-stopped warm-start do not."""
    from dvpo_lab.run import make_task
    from dvpo_lab.sft import _warn_if_short_of_teacher, warm_start

    cfg = smoke_cfg("task=arith_teacher", "model.warm_start=true")
    task = make_task(cfg)
    with caplog.at_level("WARNING", logger="dvpo_lab.sft"):
        warm_start(cfg, task)
        warm_start(cfg, task)  # from the cache
    warned = [r.getMessage() for r in caplog.records if "far below" in r.getMessage()]
    assert len(warned) == 2 and "sft.max_steps=4" in warned[0] and "sft.seed=1" in warned[0], warned
    level = task.teacher_accuracy(task.test_problems()[: cfg.sft.eval_limit])  # the same problems as the check
    assert 0.2 < level < 1.0
    assert _warn_if_short_of_teacher(cfg, task, level - 0.05) is False  # within 0.1 of the teacher's plateau
    assert _warn_if_short_of_teacher(cfg, task, level - 0.2) is True
    exact = smoke_cfg("task=arith")
    assert _warn_if_short_of_teacher(exact, make_task(exact), 0.0) is False  # an exact teacher: 100 %, no plateau
    threshold = smoke_cfg("task=arith_teacher", "sft.target_acc=0.3")
    assert _warn_if_short_of_teacher(threshold, make_task(threshold), 0.0) is False
