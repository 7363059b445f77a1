"""Tasks: data, prompts and clean verifiers. Importing this package registers every built-in task."""

from dvpo_lab.tasks import arith, dialogue, gsm8k, sciqa  # noqa: F401  (imported for their @register_task side effect)
from dvpo_lab.tasks.base import TASKS, MultiTurnTask, Problem, Task, build_task, register_task

__all__ = ["TASKS", "MultiTurnTask", "Problem", "Task", "build_task", "register_task"]
