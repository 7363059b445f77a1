"""The warm-start's learning-rate schedule (`sft.lr_schedule`): the constant one is the old warmup-then-flat
factor step for step, the cosine one decays to `sft.min_lr_ratio`, the wsd one is flat until its loss trigger
(or `max_steps - decay_steps`) and then decays over `sft.decay_steps` and stops, and only a non-default schedule
changes the warm-start cache key (caches made before the key existed stay valid), as does a non-zero
`sft.weight_decay`, which reaches AdamW."""

from __future__ import annotations

import json
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


@pytest.mark.parametrize("decay_start", [None, 300])
def test_wsd_schedule_is_flat_then_a_cosine_over_decay_steps(decay_start):
    sft = OmegaConf.create({"warmup_steps": 50, "lr_schedule": "wsd", "min_lr_ratio": 0.0, "decay_steps": 200})
    f = [lr_factor(s, sft=sft, max_steps=1000, decay_start=decay_start) for s in range(1000)]
    start = 800 if decay_start is None else decay_start  # no trigger: the last decay_steps of max_steps
    assert f[0] == pytest.approx(1 / 50) and all(x == 1.0 for x in f[49:start])
    assert f[start] < 1.0 and f[start + 99] == pytest.approx(0.5) and f[start + 199] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(f[start:], f[start + 1 :]))
    assert all(x == 0.0 for x in f[start + 199 :])  # the floor after the decay


def test_only_a_non_default_schedule_changes_the_cache_key():
    default = warm_start_key(compose_cfg(["task=arith"]))  # the schema's sft defaults
    same = ["task=arith", "sft.lr_schedule=constant", "sft.min_lr_ratio=0.0", "sft.weight_decay=0.0"]
    assert warm_start_key(compose_cfg(same)) == default
    assert warm_start_key(compose_cfg(["task=arith", "sft.lr_schedule=cosine"])) != default
    assert warm_start_key(compose_cfg(["task=arith", "sft.weight_decay=0.1"])) != default
    # the decay phase's keys act only under wsd
    assert warm_start_key(compose_cfg(["task=arith", "sft.decay_steps=7", "sft.decay_below_loss=0.1"])) == default
    wsd = warm_start_key(compose_cfg(["task=arith", "sft.lr_schedule=wsd"]))
    assert warm_start_key(compose_cfg(["task=arith", "sft.lr_schedule=wsd", "sft.decay_below_loss=0.1"])) != wsd


def test_wsd_warm_start_stops_decay_steps_after_its_loss_trigger(smoke_cfg, caplog):
    """A real smoke warm-start: a trigger the first smoothed loss is below fires at the end of the warmup and the
    run stops `decay_steps` later at the floor of its learning rate; a trigger no loss reaches never fires, the
    run decays over its last `decay_steps` and warns, naming the key."""
    from dvpo_lab.run import make_task
    from dvpo_lab.sft import warm_start

    common = ["task=arith_teacher", "model.warm_start=true", "sft.lr_schedule=wsd", "sft.warmup_steps=2"]
    fired = smoke_cfg(*common, "sft.decay_below_loss=100", "sft.decay_steps=3", "sft.max_steps=20")
    info = json.loads((warm_start(fired, make_task(fired)) / "warmstart.json").read_text())
    assert info["decay_start"] == 2 and info["steps"] == 5 and info["curve"][-1][0] == 5, info
    never = smoke_cfg(*common, "sft.decay_below_loss=1e-9", "sft.decay_steps=3", "sft.max_steps=6")
    with caplog.at_level("WARNING", logger="dvpo_lab.sft"):
        info = json.loads((warm_start(never, make_task(never)) / "warmstart.json").read_text())
    assert info["decay_start"] is None and info["steps"] == 6 and info["loss_ema"] > 1e-9, info
    assert any("sft.decay_below_loss=1e-09" in r.getMessage() for r in caplog.records), caplog.text


def test_wsd_trigger_fires_once_on_the_smoothed_loss_in_the_stable_phase():
    """The trigger watches the loss EMA (LOSS_EMA), not the raw loss: one loss below the trigger does not fire it;
    a loss that stays at 0 fires it at the first step where LOSS_EMA**k < trigger, once, and the stop step is
    `decay_steps` later; inside the last `decay_steps` of `max_steps` it no longer fires."""
    from dvpo_lab.models.build import build_policy, build_tokenizer
    from dvpo_lab.run import make_task
    from dvpo_lab.sft import LOSS_EMA, SFTModule

    cfg = compose_cfg(["debug=smoke", "sft.lr_schedule=wsd", "sft.warmup_steps=0", "sft.decay_below_loss=0.5"])
    cfg.sft.decay_steps = 10
    policy, task = build_policy(cfg.model, build_tokenizer(cfg.model)), make_task(cfg)

    module = SFTModule(policy, None, task, cfg, max_steps=100)
    assert module._wsd_stop_at(1.0, 1) == 100 and module._wsd_stop_at(0.0, 2) == 100  # EMA 0.95: not below 0.5
    assert module.decay_start is None and module.loss_ema == pytest.approx(LOSS_EMA)
    k = math.ceil(math.log(0.5) / math.log(LOSS_EMA))  # EMA after k zero losses from 1: LOSS_EMA**k
    stops = [module._wsd_stop_at(0.0, step) for step in range(3, 3 + k + 20)]
    assert module.decay_start == 1 + k and set(stops[k - 2 :]) == {1 + k + 10}, (module.decay_start, stops)
    assert set(stops[: k - 2]) == {100}  # steps 3 .. k: EMA LOSS_EMA**2 .. LOSS_EMA**(k-1) >= 0.5

    late = SFTModule(policy, None, task, cfg, max_steps=100)
    assert [late._wsd_stop_at(0.0, step) for step in (90, 95, 99)] == [100] * 3 and late.decay_start is None


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
    assert len(warned) == 2 and "sft.max_steps=4" in warned[0], warned
    assert f"sft.seed={cfg.sft.seed + 1}" in warned[0], warned  # another warm-start to try
    level = task.teacher_accuracy(task.test_problems()[: cfg.sft.eval_limit])  # the same problems as the check
    assert 0.2 < level < 1.0
    assert _warn_if_short_of_teacher(cfg, task, level - 0.05) is False  # within 0.1 of the teacher's plateau
    assert _warn_if_short_of_teacher(cfg, task, level - 0.2) is True
    exact = smoke_cfg("task=arith")
    assert _warn_if_short_of_teacher(exact, make_task(exact), 0.0) is False  # an exact teacher: 100 %, no plateau
    threshold = smoke_cfg("task=arith_teacher", "sft.target_acc=0.3")
    assert _warn_if_short_of_teacher(threshold, make_task(threshold), 0.0) is False
