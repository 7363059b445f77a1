"""The task contract: problems, splits and the clean reward, and how a config node builds a task.

A task owns its data and its verifier and nothing else: noise (`dvpo_lab.noise`) wraps the clean score it
returns, and the training loop decides what to do with either. A task is chosen by a `_target_` node
(`conf/task/*.yaml`): the class and its constructor's arguments, plus the run's own keys (:data:`RUN_KEYS`);
:func:`instantiate_task` builds it with `hydra.utils.instantiate`.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import json
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from dvpo_lab.config import ConfigError


@dataclass(frozen=True)
class Problem:
    """One prompt and what a verifier needs to judge responses to it.

    Attributes:
        prompt: the text the policy sees, already templated.
        answer: the reference final answer as a normalised string (e.g. ``"579"``); responses are compared
            against it after extraction.
        solution: a full response text for supervised warm-start, a worked solution that ends in
            ``"#### <answer>"``; ``None`` where the task has none.
        extra_info: what else a reward may read about the problem (veRL's ``extra_info``): ``task=jsonl``
            keeps the row's other columns here, ``task=sciqa`` the letters its choices use; ``None`` if nothing.
            Not part of the hash (a dict is not hashable).
    """

    prompt: str
    answer: str
    solution: str | None = None
    extra_info: Mapping[str, Any] | None = dataclasses.field(default=None, hash=False)


class Task(abc.ABC):
    """A source of problems with a clean verifier.

    Attributes:
        name: a short name for logs and errors (the run itself is labelled by the config's ``task.name``).
        max_response_len: tokens a response may take, EOS included (characters for the char tokenizer).
        multi_turn: ``True`` for a :class:`MultiTurnTask`, whose responses are sampled turn by turn.
    """

    name: str = "base"
    max_response_len: int
    multi_turn: bool = False

    @abc.abstractmethod
    def train_problems(self, indices: Sequence[int]) -> list[Problem]:
        """Training problems by index, a pure function of the task's seed and the index.

        Generated tasks accept any non-negative index; file-backed tasks wrap with ``index % num_train()``.
        """

    @abc.abstractmethod
    def num_train(self) -> int | None:
        """Size of the training split, or ``None`` when it is unbounded (generated tasks)."""

    @abc.abstractmethod
    def test_problems(self) -> list[Problem]:
        """The clean held-out split, fixed for the task's configuration."""

    @abc.abstractmethod
    def sft_problems(self) -> list[Problem]:
        """Demonstrations for the supervised warm-start; every one has a ``solution``."""

    @abc.abstractmethod
    def score(self, responses: list[str], problems: list[Problem]) -> torch.Tensor:
        """Clean reward of each response against its problem.

        Args:
            responses: ``B`` decoded responses (special tokens removed).
            problems: the ``B`` problems they answer, aligned with ``responses``.

        Returns:
            ``[B]`` float32 tensor with values in ``[0, 1]`` (``{0, 1}`` for a binary verdict). Answer-checking
            tasks return ``score_with(self.reward, responses, problems)`` (:mod:`dvpo_lab.tasks.reward`), so the
            function ``task.reward`` names scores the rollouts and ``val/acc`` alike.
        """

    def metrics(self, responses: list[str], problems: list[Problem]) -> dict[str, torch.Tensor]:
        """Evaluation metrics beyond the score, logged as ``val/<name>`` (mean over the held-out split).

        Returns:
            name -> ``[B]`` float32 per-response values, NaN where a metric does not apply to a response (e.g.
            a per-domain rate for a response of another domain); the mean skips NaN. Default: none.
        """
        return {}

    def extract_answer(self, text: str) -> str | None:
        """The final answer a response commits to, normalised like :attr:`Problem.answer` (``None``: none).

        Majority-vote pseudo-labels (``noise=majority_vote``) vote over these strings. Must never raise.
        """
        raise NotImplementedError(
            f"task {self.name!r} does not implement extract_answer(), which noise=majority_vote needs to vote "
            "over sampled answers; implement it or pick another noise"
        )

    def score_against(
        self, responses: list[str], problems: list[Problem], answers: Sequence[str | None]
    ) -> torch.Tensor:
        """The clean verifier run against substitute reference answers (e.g. majority-vote pseudo-labels).

        Args:
            responses: ``B`` decoded responses.
            problems: the ``B`` problems they answer (prompt and everything but the answer are kept).
            answers: ``B`` substitute answers; ``None`` (no label could be formed) scores 0.

        Returns:
            ``[B]`` float32 tensor with values in ``{0, 1}``.
        """
        check_aligned(responses, problems)
        if len(answers) != len(problems):
            raise ValueError(f"score_against() got {len(answers)} answers for {len(problems)} problems")
        keep = [i for i, a in enumerate(answers) if a is not None]
        out = torch.zeros(len(responses), dtype=torch.float32)
        if keep:
            relabelled = [dataclasses.replace(problems[i], answer=answers[i]) for i in keep]
            out[keep] = self.score([responses[i] for i in keep], relabelled).to(torch.float32)
        return out


class MultiTurnTask(Task):
    """A task whose response is a dialogue: assistant turns (trained on) interleaved with the replies of a
    simulated user (context only, masked out of the losses); see :mod:`dvpo_lab.multiturn`.

    Attributes:
        max_turns: assistant turns per episode at most.
        max_turn_tokens: tokens one assistant turn may take, its end-of-turn token included.
        turn_end: the text that ends every turn (assistant and user alike).
    """

    multi_turn = True
    max_turns: int
    max_turn_tokens: int
    turn_end: str = "\n"

    @abc.abstractmethod
    def user_reply(self, problem: Problem, assistant_turn: str) -> str | None:
        """The simulated user's reply (without ``turn_end``) to one assistant turn, a pure function of the
        problem and the turn's text (``turn_end`` removed); ``None`` when the turn ends the episode."""

    @abc.abstractmethod
    def demo_turns(self, problem: Problem) -> list[tuple[str, bool]]:
        """The demonstration dialogue of a problem as ``(text, is_assistant)`` turns, each ending with
        ``turn_end``; the warm-start's loss covers the assistant turns only."""


# Keys of a task node that the run reads and the task's constructor does not take, with their defaults:
# `name` labels the run (tags, run folders, report rows: `${task.name}`); the `sft_*` keys override `sft.*` for
# this task's warm-start (null = keep `sft.*`): a task whose chance level is high (multiple choice) needs a
# warm-start target well above it, a task with long demonstrations a smaller batch.
RUN_KEYS: dict[str, Any] = {"name": None, "sft_max_steps": None, "sft_batch_size": None, "sft_target_acc": None}


def _target_of(node: Mapping[str, Any]) -> Any:
    """The class (or function) a node's `_target_` names."""
    import hydra

    target = node.get("_target_")
    if not target:
        raise ConfigError(
            "task has no _target_ (the task class, e.g. dvpo_lab.tasks.arith.ArithTask); add one "
            "to the task's YAML or pick a shipped option (task=arith)"
        )
    try:
        return hydra.utils.get_object(str(target))
    except Exception as err:  # noqa: BLE001 - an import error of any kind is the user's to fix
        raise ConfigError(
            f"task._target_={target} cannot be imported ({' '.join(str(err).split())[:200]}); check "
            "the dotted path and that its module is on PYTHONPATH (or in extra_modules)"
        ) from None


def _constructor_args(node: Mapping[str, Any]) -> dict[str, Any]:
    """The node as plain data, without the run's keys."""
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    return {k: v for k, v in spec.items() if k not in RUN_KEYS}


def instantiate_task(node: Mapping[str, Any], tokenizer: Any = None) -> Task:
    """Build the task a config node names: ``hydra.utils.instantiate`` of its `_target_` with its arguments.

    The run's keys (:data:`RUN_KEYS`) are left out; a constructor that takes ``tokenizer`` (chat templates) gets
    ``tokenizer``. Nested `_target_` nodes are built too: ``task.reward`` (``_partial_: true``) becomes the
    reward function with its extra keyword arguments bound.

    Args:
        node: the ``task`` node (a DictConfig or a dict), e.g. ``{"_target_": "dvpo_lab.tasks.arith.ArithTask",
            "name": "arith", "digits": 4}``.
        tokenizer: the model's tokenizer.
    Raises:
        ConfigError: no or an unimportable `_target_`, a target that is not a :class:`Task`, the constructor's
            own ConfigError as it is (bad data, bad values), any other exception of the constructor as one line
            (``task.ops=5``: a value of the wrong type), chained to it (``HYDRA_FULL_ERROR=1`` shows it).
    """
    import hydra
    from hydra.errors import InstantiationException

    spec = _constructor_args(node)
    target = _target_of(spec)
    if not (inspect.isclass(target) and issubclass(target, Task)):
        raise ConfigError(
            f"task._target_={spec['_target_']} is not a dvpo_lab.tasks.Task subclass; name your "
            "task class (subclass Task and implement its methods, docs/tasks_and_noise.md)"
        )
    extra = {"tokenizer": tokenizer} if "tokenizer" in inspect.signature(target).parameters else {}
    try:
        return hydra.utils.instantiate(spec, _convert_="all", **extra)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ConfigError):  # the constructor's own message: key, value, fix
            raise cause from None
        what = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)  # None: Hydra's own failure
        raise ConfigError(
            f"task._target_={spec['_target_']} cannot be built with these task.* values "
            f"({' '.join(what.split())[:300]}); check them against the class's arguments"
        ) from (cause or err)


def task_arguments(node: Mapping[str, Any]) -> dict[str, Any]:
    """What a task node builds, as plain data: the run's keys and every constructor argument, the constructor's
    default filled in where the node sets none (``tokenizer`` left out; ``reward`` left out where it is the
    constructor's default). The warm-start cache is keyed by it (`dvpo_lab.sft.warm_start_key`), so a key does
    not depend on whether a YAML spells a default out, and a default changed in code is a new key. A
    `_target_` outside the package is part of it; the package's own are named by ``name``.
    """
    spec = _constructor_args(node)
    target = _target_of(spec)
    out: dict[str, Any] = {k: node.get(k, default) for k, default in RUN_KEYS.items()}
    name = str(spec.pop("_target_"))
    if not name.startswith("dvpo_lab.tasks."):
        out["_target_"] = name
    for param in inspect.signature(target).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or param.name == "tokenizer":
            continue
        if param.name in spec:
            value = spec.pop(param.name)
            if param.name == "reward" and _is_default_reward(value, param.default):
                continue
            out[param.name] = value
        elif param.default is not param.empty and not callable(param.default):
            out[param.name] = param.default
    out.update(spec)  # what a **kwargs constructor takes
    return json.loads(json.dumps(out, default=str))  # tuples -> lists, paths -> str: what the YAML would give


def _is_default_reward(value: Any, default: Any) -> bool:
    """A reward node that builds the constructor's own default reward (``{_target_: <it>, _partial_: true}``)."""
    if not (isinstance(value, dict) and callable(default)):
        return False
    qualified = f"{default.__module__}.{default.__qualname__}"
    return value.get("_target_") == qualified and value.get("_partial_") is True and len(value) == 2


K = TypeVar("K", bound=Hashable)


def draw_outside(draw: Callable[[int], K], excluded: set | frozenset) -> K:
    """``draw(attempt)`` for attempt 0, 1, ... until the key is not in ``excluded`` (generated tasks keep
    their training stream off the test problems this way)."""
    attempt = 0
    key = draw(attempt)
    while key in excluded:
        attempt += 1
        key = draw(attempt)
    return key


class BadRow(ValueError):
    """A data file's line (or a hub row) that cannot be read; the message starts with ``path:lineno:``.

    Loaders turn it into a :class:`dvpo_lab.config.ConfigError` that also names the config key and the fix:
    ``fix`` when the row gives its own (a setting rather than the data is what to change), else the loader's.
    """

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix


def iter_jsonl(path: Path, limit: int | None = None) -> Iterator[tuple[dict[str, Any], str]]:
    """``(row, "path:lineno")`` for each JSON object line of ``path`` (blank lines skipped), at most ``limit``.

    Raises:
        BadRow: naming ``path:lineno`` for a line that is not UTF-8, not valid JSON or not a JSON object.
    """
    count = 0
    with path.open("rb") as fh:  # bytes, so an undecodable line is reported with its own line number
        for lineno, raw in enumerate(fh, start=1):
            if limit is not None and count >= limit:
                return
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # tolerate a byte-order mark
            except UnicodeDecodeError as err:
                raise BadRow(f"{where}: not UTF-8 text (byte {err.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))  # a truncated last value is "unterminated", not "\n"
            except json.JSONDecodeError as err:
                # err.lineno is always 1 here (one line per document), so the column is what helps
                msg = err.msg.removesuffix(" at")  # "Unterminated string starting at"
                raise BadRow(f"{where}: not valid JSON ({msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise BadRow(f"{where}: expected a JSON object, got {type(row).__name__}")
            count += 1
            yield row, where


def check_aligned(responses: Sequence[str], problems: Sequence[Problem]) -> None:
    """Raise if responses and problems cannot be paired one to one (a silent zip would drop rows)."""
    if len(responses) != len(problems):
        raise ValueError(f"score() got {len(responses)} responses for {len(problems)} problems")


def load_local_split(
    data_dir: str | Path, filename: str, read: Callable[[Path], list], fix: str, key: str = "task.data_dir"
) -> list:
    """Rows of `data_dir/filename` read by `read(path)`; every data problem is one `ConfigError` line naming
    the config key (``key=data_dir``), the file (and line, from `BadRow`) and `fix`.

    Raises:
        ConfigError: a missing folder or file, a path that is a file, an unreadable or empty file, a bad row.
    """
    folder = Path(data_dir).expanduser()
    path = folder / filename
    setting = f"{key}={str(data_dir)!r}"
    if not path.is_file():
        if not folder.exists():
            what = f"folder {folder.resolve()} does not exist"
        elif not folder.is_dir():
            what = f"{folder.resolve()} is a file, not a folder"
        else:
            what = f"{path.name} is missing in {folder.resolve()}"
        raise ConfigError(f"{setting}: {what}. Fix: {fix}")
    return _read_rows(path, read, fix, setting)


def load_local_file(path: str | Path, read: Callable[[Path], list], fix: str, key: str) -> list:
    """Rows of the file `path` read by `read(path)`; errors as in :func:`load_local_split`, naming ``key=path``.

    Raises:
        ConfigError: a missing file, a folder, an unreadable or empty file, a bad row.
    """
    file = Path(path).expanduser()
    setting = f"{key}={str(path)!r}"
    if not file.is_file():
        what = f"{file.resolve()} is a folder, not a file" if file.is_dir() else f"{file.resolve()} does not exist"
        raise ConfigError(f"{setting}: {what}. Fix: {fix}")
    return _read_rows(file, read, fix, setting)


def _read_rows(path: Path, read: Callable[[Path], list], fix: str, setting: str) -> list:
    try:
        rows = read(path)
    except BadRow as err:
        raise ConfigError(f"{setting}: {err}. Fix: {err.fix or fix}") from None
    except OSError as err:  # unreadable (permissions, a folder named train.jsonl, ...)
        raise ConfigError(f"{setting}: cannot read {path}: {err.strerror or err}. Fix: {fix}") from None
    if not rows:
        raise ConfigError(f"{setting}: {path} has no rows (empty, or only blank lines). Fix: {fix}")
    return rows
