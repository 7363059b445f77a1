"""Tasks as `_target_` nodes: every `conf/task/*.yaml` builds its class with `hydra.utils.instantiate`, its defaults
live in the constructor alone, the run's keys are not passed, and what cannot be built fails at start in one line."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from dvpo_lab.checks import check_config
from dvpo_lab.config import CONF_DIR, ConfigError
from dvpo_lab.run import make_task
from dvpo_lab.sft import warm_start_key
from dvpo_lab.tasks import RUN_KEYS, Problem, Task, instantiate_task, task_arguments
from dvpo_lab.tasks.arith import ArithTask
from dvpo_lab.tasks.dialogue import DialogueTask
from dvpo_lab.tasks.sciqa import SciQATask
from tests.conftest import compose_cfg

TASK_YAMLS = sorted((CONF_DIR / "task").glob("*.yaml"))


def _node(path: Path) -> dict[str, Any]:
    node = OmegaConf.to_container(OmegaConf.load(path))
    return node.get("task", node) if path.stem == "arith_teacher" else node  # a `_global_` preset


def _check(overrides: list[str]) -> None:
    cfg = compose_cfg(overrides)
    check_config(cfg, dict(cfg.hydra.runtime.choices), list(cfg.hydra.overrides.task))


@pytest.mark.parametrize(
    ("option", "cls"),
    [("arith", ArithTask), ("arith_teacher", ArithTask), ("sciqa", SciQATask), ("dialogue", DialogueTask)],
)
def test_each_offline_option_builds_its_class(option: str, cls: type) -> None:
    cfg = compose_cfg([f"task={option}", "task.n_test=20", "task.n_sft=4"])
    task = make_task(cfg)
    assert type(task) is cls and task.name == cls.name and len(task.test_problems()) == 20
    assert cfg.task.name == option  # the run's label: the option's name (arith_teacher builds an ArithTask)
    assert f"{cls.__module__}.{cls.__name__}" == cfg.task._target_


@pytest.mark.parametrize("path", TASK_YAMLS, ids=lambda p: p.stem)
def test_yamls_set_only_what_differs_from_the_constructor(path: Path) -> None:
    """One place for every default: a YAML value equal to the constructor's default would be a second copy
    that can drift. The reward node is the exception: it names the default so that one line swaps it, and it
    must name the constructor's own default."""
    node = _node(path)
    target = node.get("_target_") or OmegaConf.load(CONF_DIR / "task" / "arith.yaml")._target_
    module, _, name = target.rpartition(".")
    params = inspect.signature(getattr(__import__(module, fromlist=[name]), name)).parameters
    for key, value in node.items():
        if key.startswith("_") or key in RUN_KEYS:
            continue
        assert key in params, f"{path.name}: {key} is not an argument of {target}"
        default = params[key].default
        if key == "reward" and callable(default):
            assert value == {"_target_": f"{default.__module__}.{default.__qualname__}", "_partial_": True}, path
            continue
        assert value != default, f"{path.name}: {key}: {value!r} is the constructor's default; drop it from the YAML"


def test_run_keys_are_not_passed_and_tokenizer_only_where_taken() -> None:
    node = {
        "_target_": "dvpo_lab.tasks.arith.ArithTask",
        "name": "mine",
        "sft_max_steps": 3,
        "sft_batch_size": 8,
        "sft_target_acc": 0.5,
        "digits": 2,
        "n_test": 10,
        "n_sft": 5,
    }
    task = instantiate_task(node, tokenizer=object())  # ArithTask takes no tokenizer: none is passed
    assert isinstance(task, ArithTask) and (task.digits, task.n_test) == (2, 10)
    tok = object()
    seen = instantiate_task({"_target_": f"{__name__}.TokenizerTask", "name": "t", "k": 3}, tokenizer=tok)
    assert isinstance(seen, TokenizerTask) and seen.tokenizer is tok and seen.k == 3


class TokenizerTask(Task):
    """A minimal task of a user's: takes the tokenizer, answers every prompt with "#### 1"."""

    max_response_len = 8

    def __init__(self, k: int = 1, tokenizer: Any = None) -> None:
        self.k, self.tokenizer = k, tokenizer

    def train_problems(self, indices):
        return [Problem(prompt=f"{i}=", answer="1") for i in indices]

    def num_train(self):
        return None

    def test_problems(self):
        return self.train_problems(range(self.k))

    def sft_problems(self):
        return [Problem(prompt="0=", answer="1", solution="#### 1")]

    def score(self, responses, problems):
        raise NotImplementedError


@pytest.mark.parametrize(
    ("node", "match"),
    [
        ({"name": "x"}, "task has no _target_"),
        ({"_target_": "no_such_pkg.Task", "name": "x"}, r"task._target_=no_such_pkg.Task cannot be imported \(.*\)"),
        ({"_target_": "dvpo_lab.tasks.reward.strict_match", "name": "x"}, "is not a dvpo_lab.tasks.Task subclass"),
        (
            {"_target_": "dvpo_lab.tasks.arith.ArithTask", "name": "x", "teacher": "random"},
            "task.teacher=random is not a teacher",
        ),  # the constructor's own ConfigError, as it raised it
    ],
)
def test_what_cannot_be_built_is_one_config_error(node: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        instantiate_task(node)
    assert "\n" not in str(err.value)


def test_arguments_not_in_the_yaml_are_set_without_plus() -> None:
    """The task node is open: any constructor argument is a plain override, as with a typed schema before."""
    cfg = compose_cfg(["task=arith", "task.n_test=30", "task.digits=2"])
    assert (cfg.task.n_test, cfg.task.digits) == (30, 2)
    assert make_task(cfg).digits == 2


@pytest.mark.parametrize(
    ("override", "near"),
    [
        ("task.digts=4", "task.digits"),
        ("+task.digts=4", "task.digits"),
        ("task.sft_max_step=3", "task.sft_max_steps"),
        ("task.reward.windw=3", "task.reward.window"),
    ],
)
def test_misspelt_task_keys_fail_at_start_with_a_did_you_mean(override: str, near: str) -> None:
    with pytest.raises(ConfigError) as err:
        _check([override])
    msg = str(err.value)
    assert f"{override.lstrip('+')} is not a config key (did you mean {near}?)" in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["task.name=null"], "task.name is not set"),
        (
            ["task=gsm8k", "task.reward=math_verify"],
            "task.reward=math_verify is not a reward function node; .*task.reward._target_=dvpo_lab.tasks.reward."
            "math_verify_match",
        ),
        (["task.reward._partial_=false"], "is a function: it is called on each batch.*task.reward._partial_=true"),
        (["task.reward._target_=dvpo_lab.tasks.arith.ArithTask"], "is a class.*task.reward._partial_=false"),
        (["task.reward._target_=no_such_pkg.fn"], "task.reward._target_=no_such_pkg.fn cannot be imported"),
        (["task=gsm8k", "+task.reward.window=0"], "task.reward.window=0 must be null"),
    ],
)
def test_bad_reward_nodes_fail_at_start(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _check(overrides)


def test_warm_start_key_counts_defaults_not_spellings() -> None:
    """The warm-start cache key is built from every constructor argument, defaults filled in: spelling a default
    out keeps the key (and the caches made before tasks became `_target_` nodes); changing a value changes it."""
    plain = compose_cfg(["task=arith"])
    spelled = compose_cfg(
        ["task=arith", "task.digits=3", "task.n_test=500", "task.reward._target_=dvpo_lab.tasks.reward.strict_match"]
    )
    assert warm_start_key(plain) == warm_start_key(spelled)
    assert warm_start_key(plain) != warm_start_key(compose_cfg(["task=arith", "task.n_test=400"]))
    mine = compose_cfg(["task=arith", "task.reward._target_=dvpo_lab.tasks.reward.exact_match"])
    assert warm_start_key(plain) != warm_start_key(mine)  # the reward decides where the warm-start stops
    args = task_arguments(plain.task)
    assert args["digits"] == 3 and args["teacher"] == "exact" and args["name"] == "arith"
    assert "reward" not in args and "_target_" not in args and args["sft_max_steps"] is None


def test_problem_is_frozen() -> None:
    p = Problem(prompt="1+1=", answer="2")
    assert p.solution is None and p.extra_info is None
    with pytest.raises(AttributeError):
        p.answer = "3"  # type: ignore[misc]
    assert hash(Problem("a", "b", extra_info={"k": [1]})) == hash(Problem("a", "b"))  # a dict does not break hash


def test_a_value_of_the_wrong_type_is_one_config_error_chained_to_the_cause() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^task._target_=dvpo_lab.tasks.arith.ArithTask cannot be built with these "
        r"task.\* values \(TypeError: 'int' object is not iterable\)",
    ) as err:
        make_task(compose_cfg(["task.ops=5"]))
    assert isinstance(err.value.__cause__, TypeError)
