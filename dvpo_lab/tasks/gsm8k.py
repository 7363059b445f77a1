"""``task=gsm8k``: grade-school math from the hub (``openai/gsm8k``, config ``main``) or local JSONL files.

Prompts and rewards follow veRL's GSM8K recipe (``examples/data_preprocess/gsm8k.py`` and the strict
``####`` rule) so results compare with veRL runs::

    task.template=plain   "<question> Let's think step by step and output the final answer after "####"."
    task.template=chat    the same text as the user turn of the tokenizer's chat template (instruct models)
    task.reward=strict    veRL's rule: the last "#### <number>" must equal the reference exactly
    task.reward=math_verify  math-verify's equivalence on the text after the last "####" (or the whole tail
                          when there is none): "#### 5.0", "\\boxed{5}" and "the answer is 5" match "5"
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dvpo_lab.tasks.base import Problem, Task, check_aligned, iter_jsonl, register_task
from dvpo_lab.tasks.reward import SCORERS, extract_answer_math_verify, extract_answer_strict, score_batch
from dvpo_lab.tasks.template import check_template, render_prompt

log = logging.getLogger(__name__)

HUB_ID, HUB_CONFIG = "openai/gsm8k", "main"
SPLIT_FILES = {"train": "train.jsonl", "test": "test.jsonl"}
# veRL's instruction, appended after one space.
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'


def reference_answer(answer_text: str) -> str | None:
    """The normalised final answer of a GSM8K ``answer`` field: text after the last ``####``, no commas."""
    if "####" not in answer_text:
        return None
    return answer_text.rsplit("####", 1)[1].strip().replace(",", "")


def make_problem(row: Mapping[str, Any], where: str, template: str = "plain", tokenizer: Any = None) -> Problem:
    """Turn one ``{"question", "answer"}`` row into a :class:`Problem`; ``where`` names it in errors.

    ``template``/``tokenizer`` render the prompt (:func:`dvpo_lab.tasks.template.render_prompt`).
    """
    for key in ("question", "answer"):
        if key not in row:
            raise ValueError(f"{where}: missing key {key!r} (each row needs 'question' and 'answer')")
        if not isinstance(row[key], str):
            # every bad-data problem is a ValueError with a location, so callers catch one type
            raise ValueError(  # noqa: TRY004
                f"{where}: {key!r} must be a string, got {type(row[key]).__name__}"
            )
    answer = reference_answer(row["answer"])
    if not answer:
        raise ValueError(f"{where}: 'answer' must end with '#### <number>', got ...{row['answer'][-60:]!r}")
    prompt = render_prompt(f"{row['question']} {INSTRUCTION}", template, tokenizer)
    return Problem(prompt=prompt, answer=answer, solution=row["answer"])


def read_jsonl(path: Path, limit: int | None = None, template: str = "plain", tokenizer: Any = None) -> list[Problem]:
    """Read GSM8K-format JSONL (one object per line; blank lines skipped), at most ``limit`` rows.

    Raises:
        ValueError: naming ``path:lineno`` for a line that is not a JSON object or lacks a valid row.
    """
    return [make_problem(row, where, template, tokenizer) for row, where in iter_jsonl(path, limit)]


def _load_local(data_dir: str | Path, split: str, limit: int | None, template: str, tokenizer: Any) -> list[Problem]:
    folder = Path(data_dir).expanduser()
    path = folder / SPLIT_FILES[split]
    if not path.is_file():
        what = "folder does not exist" if not folder.is_dir() else f"{path.name} is missing"
        raise FileNotFoundError(
            f"task.data_dir={str(data_dir)!r} (resolved to {folder.resolve()}): {what}. It must contain "
            f"{' and '.join(SPLIT_FILES.values())}, one JSON object per line with 'question' and 'answer' "
            f"(answer ending in '#### <number>'). Fix: point task.data_dir at such a folder (here: "
            f"../shared/data/gsm8k), or set task.data_dir=null to download {HUB_ID} from the hub."
        )
    return read_jsonl(path, limit, template, tokenizer)


def _load_hub(split: str, limit: int | None, template: str, tokenizer: Any) -> list[Problem]:
    import datasets  # deferred: importing it costs about a second and local runs never need it

    try:
        ds = datasets.load_dataset(HUB_ID, HUB_CONFIG, split=split)
    except Exception as err:
        raise RuntimeError(
            f"could not load {HUB_ID} ({HUB_CONFIG}, split {split}) from the hub: {err}. Offline, set "
            f"task.data_dir to a folder with {' and '.join(SPLIT_FILES.values())}."
        ) from err
    rows: Iterable[Mapping[str, Any]] = itertools.islice(ds, limit)
    return [make_problem(row, f"{HUB_ID}[{split}][{i}]", template, tokenizer) for i, row in enumerate(rows)]


@register_task("gsm8k")
class GSM8KTask(Task):
    """GSM8K with veRL's prompt and ``####`` reward; both splits are loaded at construction so a bad path, row
    or template fails at start, not after an hour of training.

    Args:
        data_dir: folder with ``train.jsonl`` and ``test.jsonl``; ``None`` loads ``openai/gsm8k`` from the hub.
        max_train: keep only the first ``max_train`` training rows (for speed); ``None`` keeps all.
        max_test: keep only the first ``max_test`` test rows; ``None`` keeps all.
        max_response_len: tokens a response may take, EOS included.
        template: ``plain`` (veRL's raw prompt) | ``chat`` (the tokenizer's chat template around it).
        reward: ``strict`` (veRL's ``####`` rule) | ``math_verify`` (flexible equivalence).
        tokenizer: the model's tokenizer; only ``template=chat`` uses it (``run.make_task`` passes it).
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        max_train: int | None = None,
        max_test: int | None = None,
        max_response_len: int = 256,
        template: str = "plain",
        reward: str = "strict",
        tokenizer: Any = None,
    ) -> None:
        for name, value in (("max_train", max_train), ("max_test", max_test)):
            if value is not None and value < 1:
                raise ValueError(f"task.{name} must be >= 1 or null, got {value}")
        if reward not in SCORERS:
            raise ValueError(f"task.reward={reward!r}: expected one of {' | '.join(SCORERS)}")
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
        if not self._train or not self._test:
            raise ValueError(f"gsm8k: empty split (train={len(self._train)}, test={len(self._test)})")
        source = HUB_ID if data_dir is None else str(data_dir)
        log.info("gsm8k from %s: %d train, %d test problems (template=%s, reward=%s)", source, len(self._train),
                 len(self._test), template, reward)

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
        """``task.reward``'s rule against the reference answer; ``[B]`` float32 in ``{0, 1}``."""
        check_aligned(responses, problems)
        return score_batch(responses, [p.answer for p in problems], method=self.reward)

    def extract_answer(self, text: str) -> str | None:
        """The final answer under ``task.reward``'s rule (strict: the last ``#### <number>``, commas removed)."""
        return extract_answer_strict(text) if self.reward == "strict" else extract_answer_math_verify(text)
