"""``task=jsonl``: your own prompt/answer data, from JSONL files or a hub dataset, with no code.

One JSON object per line; three columns are read, named by ``task.prompt_key``, ``task.answer_key`` and
(optionally) ``task.solution_key``::

    {"question": "What is 17+25?", "final": 42, "worked": "17+25 = 42\\n#### 42"}

    python -m dvpo_lab task=jsonl task.path=data/my.jsonl task.prompt_key=question task.answer_key=final \\
        task.solution_key=worked

Where the data is (exactly one of):

* ``path``: a ``.jsonl`` file (a test split is held out of it, ``test_size``), or a folder with
  ``train.jsonl`` and, optionally, ``test.jsonl`` (without it a test split is held out of ``train.jsonl``);
* ``train_path`` (and optionally ``test_path``): two files anywhere;
* ``hub_id`` (``hub_config``, ``train_split``, ``test_split``): a Hugging Face hub dataset through the
  ``datasets`` library, the same column mapping (``test_split: null`` holds out a test split).

What each row becomes (:class:`~dvpo_lab.tasks.base.Problem`):

* prompt: the prompt column, then ``instruction`` after one space when set, rendered by ``template``
  (``plain``: as is; ``chat``: the user turn of the tokenizer's chat template, for instruct models);
* answer: the answer column (a string or a number), stripped; a worked answer that ends in ``#### <answer>``
  (GSM8K's format) gives the text after the last marker; commas inside a number are removed (``1,234`` ->
  ``1234``, as the strict rule removes them from responses);
* solution: the solution column, the full response the warm-start trains on (e.g. ``"17+25 = 42\\n#### 42"``);
  without ``solution_key`` the warm-start has no demonstrations: set ``model.warm_start=false`` (a pretrained
  model) or name the column;
* extra_info: the row's other columns, for a reward of yours to read.

Reward: ``task.reward``, default :func:`~dvpo_lab.tasks.reward.strict_match` (veRL's strict rule: the number
after the response's last ``#### `` equals the answer). With it every answer must be a number, checked when the
data loads; for text answers ``task.reward._target_=dvpo_lab.tasks.reward.exact_match``, for LaTeX / equivalent
forms ``...math_verify_match``, or a function of yours.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dvpo_lab.config import ConfigError
from dvpo_lab.tasks.base import BadRow, Problem, Task, iter_jsonl, load_local_file, load_local_split
from dvpo_lab.tasks.reward import (
    RewardFn,
    answer_extractor,
    extract_answer_strict,
    reward_name,
    score_with,
    strict_match,
)
from dvpo_lab.tasks.template import check_template, render_prompt

log = logging.getLogger(__name__)

SPLIT_FILES = {"train": "train.jsonl", "test": "test.jsonl"}
_NUMBER_WITH_COMMAS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")


def reference_answer(value: Any) -> str:
    """The normalised reference answer of an answer cell: stripped, the text after the last ``####`` when there
    is one, commas inside a number removed (``"x\\n#### 1,234"`` -> ``"1234"``, ``42`` -> ``"42"``)."""
    text = str(value).strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip()
    return text.replace(",", "") if _NUMBER_WITH_COMMAS.fullmatch(text) else text


def _uses_strict_rule(reward: Callable[..., Any]) -> bool:
    return (reward.func if isinstance(reward, functools.partial) else reward) is strict_match


class JSONLTask(Task):
    """Prompt/answer rows from JSONL files or a hub dataset; every split is loaded at construction, so a bad
    path, column or row fails at start with one line naming the key, the file and line, and the fix.

    Args:
        path: a ``.jsonl`` file, or a folder with ``train.jsonl`` (and optionally ``test.jsonl``).
        train_path: the training file (instead of ``path``).
        test_path: the test file beside ``train_path``; ``None`` holds out ``test_size`` of the training rows.
        hub_id: a hub dataset (instead of a path), e.g. ``openai/gsm8k``; needs the ``datasets`` library and
            the hub.
        hub_config: the hub dataset's configuration (``None`` = its default), e.g. ``main``.
        train_split: the hub split to train on (``datasets`` slicing such as ``train[:90%]`` works).
        test_split: the hub split to evaluate on; ``None`` holds out ``test_size`` of the training rows.
        prompt_key: the column with the prompt text.
        answer_key: the column with the reference answer (a string or a number).
        solution_key: the column with a full demonstration response for the warm-start; ``None``: no
            warm-start demonstrations (set ``model.warm_start=false``).
        instruction: text appended to every prompt after one space (e.g. ``'Output the final answer after
            "####".'``); ``None`` adds nothing.
        template: ``plain`` | ``chat`` (the tokenizer's chat template around the prompt).
        test_size: rows held out for the test split when no test file or split is given: a fraction in
            ``(0, 1)`` or a count ``>= 1``; the held-out rows are spread evenly through the file (rows
            ``i * n // k``), no randomness, so every run holds out the same ones.
        max_train: keep the first rows of the training split (``None`` = all).
        max_test: keep the first rows of the test split (``None`` = all).
        max_response_len: tokens a response may take, EOS included.
        reward: the clean reward (:class:`~dvpo_lab.tasks.reward.RewardFn`); default veRL's strict ``####``
            rule.
        tokenizer: the model's tokenizer; only ``template=chat`` uses it (``run.make_task`` passes it).
    """

    name = "jsonl"

    def __init__(
        self,
        path: str | Path | None = None,
        train_path: str | Path | None = None,
        test_path: str | Path | None = None,
        hub_id: str | None = None,
        hub_config: str | None = None,
        train_split: str = "train",
        test_split: str | None = "test",
        prompt_key: str = "prompt",
        answer_key: str = "answer",
        solution_key: str | None = None,
        instruction: str | None = None,
        template: str = "plain",
        test_size: float = 0.1,
        max_train: int | None = None,
        max_test: int | None = None,
        max_response_len: int = 256,
        reward: RewardFn = strict_match,
        tokenizer: Any = None,
    ) -> None:
        given = [k for k, v in (("path", path), ("train_path", train_path), ("hub_id", hub_id)) if v]
        if len(given) != 1:
            what = "no data" if not given else f"{' and '.join('task.' + k for k in given)} together"
            raise ConfigError(
                f"task=jsonl: {what}; set exactly one of task.path=FILE.jsonl (or a folder with "
                "train.jsonl and test.jsonl), task.train_path=FILE.jsonl or task.hub_id=ORG/NAME"
            )
        if test_path and not train_path:
            raise ConfigError(
                f"task.test_path={test_path!r} goes with task.train_path; set task.train_path too, "
                "or use task.path=FOLDER with train.jsonl and test.jsonl"
            )
        for key, value in (("max_train", max_train), ("max_test", max_test)):
            if value is not None and value < 1:
                raise ConfigError(f"task.{key}={value}: must be >= 1 or null")
        if max_response_len < 1:
            raise ConfigError(f"task.max_response_len={max_response_len}: must be >= 1 (tokens per response)")
        if not (0 < test_size < 1 or (test_size >= 1 and float(test_size).is_integer())):
            raise ConfigError(f"task.test_size={test_size}: must be a fraction in (0, 1) or a row count >= 1")
        check_template(template, tokenizer)
        self.prompt_key, self.answer_key, self.solution_key = prompt_key, answer_key, solution_key
        self.instruction, self.template, self._tokenizer = instruction, template, tokenizer
        self.max_response_len, self.reward, self.test_size = max_response_len, reward, test_size
        self._check_answer = _uses_strict_rule(reward)
        self.fix = (
            f"each line a JSON object with the prompt in {prompt_key!r} (task.prompt_key) and the answer in "
            f"{answer_key!r} (task.answer_key)"
            + (f", the demonstration in {solution_key!r} (task.solution_key)" if solution_key else "")
            + "; or point those keys at your columns"
        )
        if path:
            source, train, test = self._load_path(path)
        elif train_path:
            source = str(train_path)
            train = load_local_file(train_path, self._read, self.fix, "task.train_path")
            test = load_local_file(test_path, self._read, self.fix, "task.test_path") if test_path else None
        else:
            source = f"hub {hub_id}"
            train = self._load_hub(hub_id, hub_config, train_split)
            test = self._load_hub(hub_id, hub_config, test_split) if test_split else None
        if test is None:
            train, test = self._hold_out(train, source)
        self._train, self._test = train[:max_train], test[:max_test]
        log.info(
            "jsonl from %s: %d train, %d test problems (prompt_key=%s, answer_key=%s, solution_key=%s, reward=%s)",
            source,
            len(self._train),
            len(self._test),
            prompt_key,
            answer_key,
            solution_key,
            reward_name(reward),
        )

    # --- loading --------------------------------------------------------------------------------------

    def _problem(self, row: Mapping[str, Any], where: str) -> Problem:
        """One row as a :class:`Problem`.

        Raises:
            BadRow: ``"<where>: <what is wrong>"`` for a missing or mistyped column, an empty answer, or (with
                the strict rule) an answer that is not a number.
        """
        keys = [("task.prompt_key", self.prompt_key), ("task.answer_key", self.answer_key)]
        if self.solution_key:
            keys.append(("task.solution_key", self.solution_key))
        for setting, column in keys:
            if column not in row:
                has = sorted(map(str, row))
                raise BadRow(
                    f"{where}: no column {column!r} ({setting}; the row has {has[:12]}"
                    f"{' ...' if len(has) > 12 else ''})"
                )
        for setting, column in keys:
            if setting != "task.answer_key" and not isinstance(row[column], str):
                raise BadRow(f"{where}: column {column!r} ({setting}) holds {type(row[column]).__name__}, not text")
        prompt = row[self.prompt_key]
        solution = row[self.solution_key] if self.solution_key else None
        cell = row[self.answer_key]
        if not isinstance(cell, str | int | float) or isinstance(cell, bool):
            raise BadRow(
                f"{where}: answer column {self.answer_key!r} holds {type(cell).__name__}; it must be a "
                "string or a number"
            )
        answer = reference_answer(cell)
        if not answer:
            raise BadRow(f"{where}: empty answer in column {self.answer_key!r}")
        if self._check_answer and extract_answer_strict(f"#### {answer}") != answer:
            raise BadRow(
                f"{where}: answer {answer!r} is not a number, and the default reward (strict_match: the "
                "number after the last '#### ') can never match it",
                fix="for text answers set task.reward._target_=dvpo_lab.tasks.reward.exact_match (or "
                "math_verify_match for equivalent forms)",
            )
        text = f"{prompt} {self.instruction}" if self.instruction else prompt
        used = {self.prompt_key, self.answer_key, self.solution_key}
        extra = {k: v for k, v in row.items() if k not in used}
        return Problem(
            prompt=render_prompt(text, self.template, self._tokenizer),
            answer=answer,
            solution=solution,
            extra_info=extra or None,
        )

    def _read(self, path: Path) -> list[Problem]:
        return [self._problem(row, where) for row, where in iter_jsonl(path)]

    def _load_path(self, path: str | Path) -> tuple[str, list[Problem], list[Problem] | None]:
        """(source, train, test or None) from ``task.path``: a file, or a folder of split files."""
        p = Path(path).expanduser()
        if p.is_dir():
            train = load_local_split(p, SPLIT_FILES["train"], self._read, self.fix, key="task.path")
            has_test = (p / SPLIT_FILES["test"]).exists()
            test = load_local_split(p, SPLIT_FILES["test"], self._read, self.fix, key="task.path") if has_test else None
            return str(p), train, test
        if not p.exists():
            raise ConfigError(
                f"task.path={str(path)!r}: {p.resolve()} does not exist. Fix: a .jsonl file, or a folder "
                "with train.jsonl (and test.jsonl); a relative path is read from the folder you run in"
            )
        return str(p), load_local_file(p, self._read, self.fix, "task.path"), None

    def _load_hub(self, hub_id: str, hub_config: str | None, split: str) -> list[Problem]:
        key = f"task.hub_id={hub_id!r} ({hub_config or 'default config'}, split {split})"
        try:
            import datasets  # deferred: importing it costs about a second and local runs never need it

            ds = datasets.load_dataset(hub_id, hub_config, split=split)
        # any hub or network failure (offline, renamed dataset, no `datasets`) is the user's to fix
        except Exception as err:  # noqa: BLE001
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"{key}: could not load it ({reason}). Fix: check the id, config and split, or "
                "download the rows as JSONL and set task.path"
            ) from None
        rows: Iterable[Mapping[str, Any]] = ds  # a datasets.Dataset iterates one dict per row
        try:
            problems = [self._problem(row, f"{hub_id}[{split}][{i}]") for i, row in enumerate(rows)]
        except BadRow as err:
            raise ConfigError(f"{key}: {err}. Fix: {err.fix or self.fix}") from None
        if not problems:
            raise ConfigError(f"{key}: the split has no rows. Fix: pick another task.train_split / task.test_split")
        return problems

    def _hold_out(self, rows: list[Problem], source: str) -> tuple[list[Problem], list[Problem]]:
        """(train, test): ``test_size`` rows spread evenly through ``rows`` (``i * n // k``) are the test split."""
        n = len(rows)
        k = int(self.test_size) if self.test_size >= 1 else max(1, round(self.test_size * n))
        if k >= n:
            raise ConfigError(
                f"task.test_size={self.test_size} holds out {k} of the {n} rows of {source}, leaving "
                "none to train on; lower it, add rows, or give a test file (task.path=FOLDER with "
                "test.jsonl, or task.test_path)"
            )
        held = {i * n // k for i in range(k)}
        return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]

    # --- Task API -------------------------------------------------------------------------------------

    def train_problems(self, indices: Sequence[int]) -> list[Problem]:
        """Training rows by index, wrapping around the split (``index % num_train()``)."""
        n = len(self._train)
        return [self._train[int(i) % n] for i in indices]

    def num_train(self) -> int | None:
        return len(self._train)

    def test_problems(self) -> list[Problem]:
        return list(self._test)

    def sft_problems(self) -> list[Problem]:
        """The training rows, each with its ``solution_key`` demonstration.

        Raises:
            ConfigError: ``solution_key`` is not set (no demonstrations to warm-start on).
        """
        if not self.solution_key:
            raise ConfigError(
                "task.solution_key=null: the warm-start (model.warm_start=true) trains on a full "
                "demonstration response per row; set task.solution_key to the column that holds one, "
                "or model.warm_start=false for a model that already answers"
            )
        return list(self._train)

    def score(self, responses: list[str], problems: list[Problem]) -> torch.Tensor:
        """``task.reward`` against the reference answer (default: the strict ``####`` rule); ``[B]`` float32."""
        return score_with(self.reward, responses, problems)

    def extract_answer(self, text: str) -> str | None:
        """The final answer under the reward's rule (default: the last ``#### <number>``)."""
        return answer_extractor(self.reward)(text)
