"""``task=gsm8k``: grade-school math from the hub (``openai/gsm8k``, config ``main``) or local JSONL files.

Prompts and rewards follow veRL's GSM8K recipe (``examples/data_preprocess/gsm8k.py`` and the strict
``####`` rule) so results compare with veRL runs::

    task.template=plain   "<question> Let's think step by step and output the final answer after "####"."
    task.template=chat    the same text as the user turn of the tokenizer's chat template (instruct models)
    task.reward           veRL's rule (default, reward.strict_match): the last "#### <number>" must equal the
                          reference exactly; task.reward._target_=dvpo_lab.tasks.reward.math_verify_match:
                          math-verify's equivalence on the answer the last "####" commits to (the whole
                          response when there is none): "#### 5.0", "\\boxed{5}" and "the answer is 5" match "5"
    +task.reward.window=300  veRL's window (only the last 300 characters are read, so a "#### 42" followed by
                          300 characters of explanation scores 0), for comparisons with numbers published with
                          it; by default both rules read the whole response. See :mod:`dvpo_lab.tasks.reward`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dvpo_lab.config import ConfigError
from dvpo_lab.tasks.base import BadRow, Problem, Task, iter_jsonl, load_local_split
from dvpo_lab.tasks.reward import RewardFn, answer_extractor, reward_name, score_with, strict_match
from dvpo_lab.tasks.template import check_template, render_prompt

log = logging.getLogger(__name__)

HUB_ID, HUB_CONFIG = "openai/gsm8k", "main"
SPLIT_FILES = {"train": "train.jsonl", "test": "test.jsonl"}
# veRL's instruction, appended after one space.
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
# The fix every data error ends with: what a data folder must hold (one line).
DATA_FIX = (
    f"set task.data_dir to a folder with {' and '.join(SPLIT_FILES.values())} (GSM8K format: one JSON "
    "object per line with 'question' and 'answer', the answer ending in '#### <number>'), or "
    f"task.data_dir=null to download {HUB_ID} from the hub"
)


def reference_answer(answer_text: str) -> str | None:
    """The normalised final answer of a GSM8K ``answer`` field: text after the last ``####``, no commas."""
    if "####" not in answer_text:
        return None
    return answer_text.rsplit("####", 1)[1].strip().replace(",", "")


def make_problem(row: Mapping[str, Any], where: str, template: str = "plain", tokenizer: Any = None) -> Problem:
    """Turn one ``{"question", "answer"}`` row into a :class:`Problem`; ``where`` names it in errors.

    ``template``/``tokenizer`` render the prompt (:func:`dvpo_lab.tasks.template.render_prompt`).

    Raises:
        BadRow: ``"<where>: <what is wrong>"`` for a row without a string ``question`` and an ``answer``
            ending in ``#### <number>``.
    """
    for key in ("question", "answer"):
        if key not in row:
            raise BadRow(f"{where}: missing key {key!r} (each row needs 'question' and 'answer'; it has {sorted(row)})")
        if not isinstance(row[key], str):
            raise BadRow(f"{where}: {key!r} must be a string, got {type(row[key]).__name__}")
    answer = reference_answer(row["answer"])
    if not answer:
        raise BadRow(f"{where}: 'answer' must end with '#### <number>', got ...{row['answer'][-60:]!r}")
    prompt = render_prompt(f"{row['question']} {INSTRUCTION}", template, tokenizer)
    return Problem(prompt=prompt, answer=answer, solution=row["answer"])


def read_jsonl(path: Path, limit: int | None = None, template: str = "plain", tokenizer: Any = None) -> list[Problem]:
    """Read GSM8K-format JSONL (one object per line; blank lines skipped), at most ``limit`` rows.

    Raises:
        BadRow: naming ``path:lineno`` for a line that is not a JSON object or lacks a valid row.
    """
    return [make_problem(row, where, template, tokenizer) for row, where in iter_jsonl(path, limit)]


def _load_local(data_dir: str | Path, split: str, limit: int | None, template: str, tokenizer: Any) -> list[Problem]:
    """One split from ``data_dir``; every data problem is a one-line :class:`ConfigError` naming
    ``task.data_dir``, the file (and line) and the fix."""
    return load_local_split(
        data_dir, SPLIT_FILES[split], lambda path: read_jsonl(path, limit, template, tokenizer), DATA_FIX
    )


def _load_hub(split: str, limit: int | None, template: str, tokenizer: Any) -> list[Problem]:
    import datasets  # deferred: importing it costs about a second and local runs never need it

    key = f"task.data_dir=null (hub {HUB_ID}, {HUB_CONFIG}, split {split})"
    try:
        ds = datasets.load_dataset(HUB_ID, HUB_CONFIG, split=split)
    # any hub or network failure (offline, renamed dataset, ...) is the user's to fix, with a local folder
    except Exception as err:  # noqa: BLE001
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{key}: could not load it ({reason}). Fix: offline, set task.data_dir to a folder "
            f"with {' and '.join(SPLIT_FILES.values())} (GSM8K format: question, answer)"
        ) from None
    rows: Iterable[Mapping[str, Any]] = itertools.islice(ds, limit)
    try:
        problems = [make_problem(row, f"{HUB_ID}[{split}][{i}]", template, tokenizer) for i, row in enumerate(rows)]
    except BadRow as err:
        raise ConfigError(f"{key}: {err}. Fix: {DATA_FIX}") from None
    if not problems:
        raise ConfigError(f"{key}: the split has no rows. Fix: {DATA_FIX}")
    return problems


class GSM8KTask(Task):
    """GSM8K with veRL's prompt and ``####`` reward; both splits are loaded at construction so a bad path, row
    or template fails at start, not after an hour of training.

    Args:
        data_dir: folder with ``train.jsonl`` and ``test.jsonl``; ``None`` loads ``openai/gsm8k`` from the hub.
        max_train: keep only the first ``max_train`` training rows (for speed); ``None`` keeps all.
        max_test: keep only the first ``max_test`` test rows; ``None`` keeps all.
        max_response_len: tokens a response may take, EOS included.
        template: ``plain`` (veRL's raw prompt) | ``chat`` (the tokenizer's chat template around it).
        reward: the clean reward (:class:`~dvpo_lab.tasks.reward.RewardFn`): veRL's strict ``####`` rule
            (default), :func:`~dvpo_lab.tasks.reward.math_verify_match` (flexible equivalence) or your own.
            The built-in rules take ``window``: characters of each response read, from its end (``None``, the
            default, reads all of it, so text after the committed answer never changes the score; ``300`` is
            veRL's window).
        tokenizer: the model's tokenizer; only ``template=chat`` uses it (``run.make_task`` passes it).
    """

    name = "gsm8k"

    def __init__(
        self,
        data_dir: str | Path | None = None,
        max_train: int | None = None,
        max_test: int | None = None,
        max_response_len: int = 256,
        template: str = "plain",
        reward: RewardFn = strict_match,
        tokenizer: Any = None,
    ) -> None:
        for name, value in (("max_train", max_train), ("max_test", max_test)):
            if value is not None and value < 1:
                raise ConfigError(f"task.{name}={value}: must be >= 1 or null")
        if max_response_len < 1:
            raise ConfigError(f"task.max_response_len={max_response_len}: must be >= 1 (tokens per response)")
        check_template(template, tokenizer)  # before loading 7k rows
        self.data_dir = data_dir
        self.max_response_len = max_response_len
        self.template, self.reward = template, reward
        if data_dir is None:
            self._train = _load_hub("train", max_train, template, tokenizer)
            self._test = _load_hub("test", max_test, template, tokenizer)
        else:
            self._train = _load_local(data_dir, "train", max_train, template, tokenizer)
            self._test = _load_local(data_dir, "test", max_test, template, tokenizer)
        source = HUB_ID if data_dir is None else str(data_dir)
        log.info(
            "gsm8k from %s: %d train, %d test problems (template=%s, reward=%s)",
            source,
            len(self._train),
            len(self._test),
            template,
            reward_name(reward),
        )

    def train_problems(self, indices: Sequence[int]) -> list[Problem]:
        """Training rows by index, wrapping around the split (``index % num_train()``)."""
        n = len(self._train)
        return [self._train[int(i) % n] for i in indices]

    def num_train(self) -> int | None:
        return len(self._train)

    def test_problems(self) -> list[Problem]:
        return list(self._test)

    def sft_problems(self) -> list[Problem]:
        """The training split itself: every row carries the dataset's worked solution."""
        return list(self._train)

    def score(self, responses: list[str], problems: list[Problem]) -> torch.Tensor:
        """``task.reward`` against the reference answer; ``[B]`` float32 (``{0, 1}`` for the built-in rules)."""
        return score_with(self.reward, responses, problems)

    def extract_answer(self, text: str) -> str | None:
        """The final answer under the reward's rule (strict: the last ``#### <number>``, commas removed)."""
        return answer_extractor(self.reward)(text)
