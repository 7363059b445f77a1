"""Tasks: data, prompts and clean rewards. A task is chosen by a `_target_` node (`conf/task/*.yaml`) and built by
:func:`instantiate_task`; a reward is a function of the :class:`RewardFn` signature (`task.reward`)."""

from dvpo_lab.tasks.base import RUN_KEYS, MultiTurnTask, Problem, Task, instantiate_task, task_arguments
from dvpo_lab.tasks.reward import RewardFn, per_sample

__all__ = [
    "RUN_KEYS",
    "MultiTurnTask",
    "Problem",
    "RewardFn",
    "Task",
    "instantiate_task",
    "per_sample",
    "task_arguments",
]
