"""The task contract: problems, splits and the clean reward, plus a registry that config strings select from.

A task owns its data and its verifier and nothing else: noise (`dvpo_lab.noise`) wraps the clean score it
returns, and the training loop decides what to do with either.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Callable, Hashable, Iterator, Sequence
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
    """

    prompt: str
    answer: str
    solution: str | None = None


class Task(abc.ABC):
    """A source of problems with a clean verifier.

    Attributes:
        name: the registry name (``task=<name>`` in the config); set by :func:`register_task`.
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
            ``[B]`` float32 tensor with values in ``{0, 1}``.
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


TASKS: dict[str, type[Task]] = {}

_T = TypeVar("_T", bound=type[Task])


def register_task(name: str) -> Callable[[_T], _T]:
    """Class decorator: register a :class:`Task` subclass under ``name`` and set its ``name`` attribute."""

    def deco(cls: _T) -> _T:
        if name in TASKS and TASKS[name] is not cls:
            raise ValueError(f"task {name!r} is already registered by {TASKS[name].__qualname__}")
        cls.name = name
        TASKS[name] = cls
        return cls

    return deco


def build_task(name: str, **kwargs: Any) -> Task:
    """Instantiate the task registered as ``name`` with its constructor keyword arguments."""
    if name not in TASKS:
        raise ConfigError(f"task.name={name!r} is not a registered task; choose one of {sorted(TASKS)}")
    return TASKS[name](**kwargs)


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

    Loaders turn it into a :class:`dvpo_lab.config.ConfigError` that also names the config key and the fix.
    """


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


def load_local_split(data_dir: str | Path, filename: str, read: Callable[[Path], list], fix: str) -> list:
    """Rows of `data_dir/filename` read by `read(path)`; every data problem is one `ConfigError` line naming
    ``task.data_dir``, the file (and line, from `BadRow`) and `fix`.

    Raises:
        ConfigError: a missing folder or file, a path that is a file, an unreadable or empty file, a bad row.
    """
    folder = Path(data_dir).expanduser()
    path = folder / filename
    key = f"task.data_dir={str(data_dir)!r}"
    if not path.is_file():
        if not folder.exists():
            what = f"folder {folder.resolve()} does not exist"
        elif not folder.is_dir():
            what = f"{folder.resolve()} is a file, not a folder"
        else:
            what = f"{path.name} is missing in {folder.resolve()}"
        raise ConfigError(f"{key}: {what}. Fix: {fix}")
    try:
        rows = read(path)
    except BadRow as err:
        raise ConfigError(f"{key}: {err}. Fix: {fix}") from None
    except OSError as err:  # unreadable (permissions, a folder named train.jsonl, ...)
        raise ConfigError(f"{key}: cannot read {path}: {err.strerror or err}. Fix: {fix}") from None
    if not rows:
        raise ConfigError(f"{key}: {path} has no rows (empty, or only blank lines). Fix: {fix}")
    return rows
