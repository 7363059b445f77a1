"""The task registry: names select classes, unknown names fail with the list of known ones."""

from __future__ import annotations

import pytest

from dvpo_lab.config import ConfigError
from dvpo_lab.tasks import TASKS, Problem, Task, build_task, register_task
from dvpo_lab.tasks.arith import ArithTask


def test_builtin_tasks_registered() -> None:
    assert {"arith", "gsm8k", "sciqa"} <= set(TASKS)
    assert TASKS["arith"] is ArithTask and ArithTask.name == "arith"


def test_build_task_passes_kwargs() -> None:
    task = build_task("arith", digits=2, n_test=10, n_sft=5)
    assert isinstance(task, ArithTask) and task.digits == 2


def test_unknown_task_lists_registered_names() -> None:
    with pytest.raises(ConfigError, match="task.name='nope' is not a registered task; choose one of .*arith.*gsm8k"):
        build_task("nope")


def test_duplicate_registration_rejected() -> None:
    class Other(Task):  # minimal concrete subclass; never instantiated
        train_problems = num_train = test_problems = sft_problems = score = None  # type: ignore[assignment]

    with pytest.raises(ValueError, match="already registered"):
        register_task("arith")(Other)


def test_problem_is_frozen() -> None:
    p = Problem(prompt="1+1=", answer="2")
    assert p.solution is None
    with pytest.raises(AttributeError):
        p.answer = "3"  # type: ignore[misc]
