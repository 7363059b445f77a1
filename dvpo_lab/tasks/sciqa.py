"""``task=sciqa``: science multiple choice; the response names a letter, the reward checks it against the key.

Sources (``task.source``):

* ``generated`` (default, offline): items built from the project's fact table
  (:mod:`dvpo_lab.tasks.sciqa_facts`), short enough for the tiny char-level model::

      prompt   "Symbol of Sodium? Ne(A) Na(B) S(C) Nb(D)\\n"   distractors: other answers of the same category
      solution "Ne(A) Na(B) #### B"        the options copied in order up to the chosen one, then "#### <letter>"
      answer   "B"

  The worked part is an elimination: copy an option, stop if it is the answer, else go on. Measured on the
  tiny model: with the letter first ("A:Ne B:Na ...", solution "Na #### B") it recalled 63% of the facts
  after 400 SFT steps but located their letters at chance (27%); with "Na(B) #### B" (find "Na(" in the
  prompt) it was still at chance after 120 steps of 256. Copying in order needs no search.

  An item is (fact, distractors, order), a pure function of (seed, index) through a counter-based hash. The
  test split is ``n_test`` distinct items; training and demonstrations redraw any item that is a test item,
  so a test prompt is never trained on, while its fact is (with other distractors and another order):
  test accuracy measures recalling the fact and locating its letter, not memorising a prompt.
* ``sciq`` | ``arc`` | ``gpqa``: the real datasets (:mod:`dvpo_lab.tasks.sciqa_data`), from the hub
  (``task.hub_id``/``hub_config``, null = the source's default) or from ``task.data_dir`` with
  ``train.jsonl``/``test.jsonl`` in the same row format. Choices are shuffled by a permutation keyed by
  (``shuffle_seed``, split, row), so the correct letter is uniform over the letters.

Reward (:func:`choice_match`, the default ``task.reward``): 1 when :func:`extract_choice` finds the key's
letter among the letters the item offers (``problem.extra_info["letters"]``). It reads, by priority, the last
``#### X``; the last ``answer is X`` / ``answer: x``; a leading ``(X)``, ``X.``, ``X)`` or a bare letter
(unless the response restates the options); a single distinct ``(X)`` anywhere. Text after a committed
letter never undoes it, and nothing after the last ``####``'s line is read. It never raises.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dvpo_lab.config import ConfigError
from dvpo_lab.seeding import hash_words, splitmix64
from dvpo_lab.tasks import sciqa_data
from dvpo_lab.tasks.base import Problem, Task, draw_outside
from dvpo_lab.tasks.reward import RewardFn, score_with
from dvpo_lab.tasks.sciqa_facts import build_facts, category_pools
from dvpo_lab.tasks.template import check_template, render_prompt

log = logging.getLogger(__name__)

LETTERS = "ABCDE"
SOURCES = ("generated", *sciqa_data.SOURCES)
INSTRUCTION = 'Answer with the letter of the correct choice after "####".'
_STREAM_TRAIN, _STREAM_TEST, _STREAM_SFT, _STREAM_SHUFFLE = 11, 12, 13, 14
_SPLIT_WORD = {"train": 1, "test": 2}
RESPONSE_MARGIN = 2  # as in arith: a response a token or two too long is still judged (as wrong)


# --- reward ---------------------------------------------------------------------------------------------


def _choice_patterns(letters: str) -> tuple[re.Pattern[str], ...]:
    up, low = letters.upper(), letters.lower()
    end = r"(?![A-Za-z0-9])"  # "B" but not "Because" or "B12"
    return (
        re.compile(rf"####\s*\(?([{up}{low}]){end}"),  # "#### B", "####(b)"
        # "the answer is B", "Answer: (C)", "answer = D"; lowercase only after ":" or in parentheses,
        # so "the answer is a mammal" does not read as A
        re.compile(
            rf"(?i:answer)\s*(?:(?i:is)\s*)?[:=]?\s*\(?([{up}]){end}"
            rf"|(?i:answer)\s*[:=]\s*\(?([{low}]){end}|(?i:answer)\s*(?:(?i:is)\s*)?[:=]?\s*\(([{low}])\)"
        ),
        # "(B) ...", "B. ...", "B) ...", or "B" alone on the first line
        re.compile(rf"^\s*(?:\(([{up}{low}])\)|([{up}])(?:[.):]|[ \t]*(?:\n|$)))"),
        re.compile(rf"\(([{up}])\)"),  # "(B)" anywhere, if only one distinct letter is so marked
        re.compile(rf"(?m)^[ \t]*(?:\(([{up}{low}])\)|([{up}])[.)])"),  # a line that starts like an option
    )


_PATTERNS: dict[str, tuple[re.Pattern[str], ...]] = {}


def _letters_of(pat: re.Pattern[str], text: str) -> set[str]:
    return {next(g for g in m.groups() if g).upper() for m in pat.finditer(text)}


def extract_choice(text: str, letters: str = LETTERS[:4]) -> str | None:
    """The letter a response chooses, upper-case, among ``letters``; ``None`` when it commits to none.

    By priority: the last ``#### X``; else, in the text up to the end of the last ``####``'s line (all of it
    when there is no marker: what follows a marker's line is never read), the last ``answer is X`` /
    ``answer: x``; a leading ``(X)``, ``X.``, ``X)`` or a letter alone on the first line, unless the response
    restates the options (another line starts with an option mark, or, after a leading ``(X)``, its line
    marks another ``(Y)``); a single distinct ``(X)`` anywhere.

    Examples: ``"Na #### B"``, ``"(B)"``, ``"B."``, ``"Answer: b"``, ``"the answer is B because ..."``,
    ``"B. Because (C) is a gas, ..."`` -> ``"B"``; ``"(A) x (B) y"``, ``"(A) x\n(B) y"`` -> ``None``.
    Never raises.
    """
    if not isinstance(text, str) or not text:
        return None
    pats = _PATTERNS.get(letters) or _PATTERNS.setdefault(letters, _choice_patterns(letters))
    marker, answer, leading, anywhere, option_line = pats
    found = [next(g for g in m.groups() if g) for m in marker.finditer(text)]
    if found:
        return found[-1].upper()
    if "####" in text:  # a marker with no letter: its line is the commitment, later text does not count
        head, tail = text.rsplit("####", 1)
        text = head + "####" + tail.split("\n", 1)[0]
    found = [next(g for g in m.groups() if g) for m in answer.finditer(text)]
    if found:
        return found[-1].upper()
    m = leading.match(text)
    if m:
        letter = next(g for g in m.groups() if g).upper()
        # "(A) x (B) y" or "A. x\nB. y" restates the options rather than choosing one; "B. Because (C) is a
        # gas" chooses B (prose after a committed letter does not undo it)
        first_line = text.lstrip().split("\n", 1)[0]
        others = _letters_of(option_line, text) - {letter}
        if m.group(1):
            others |= _letters_of(anywhere, first_line) - {letter}
        return None if others else letter
    marked = _letters_of(anywhere, text)
    return marked.pop() if len(marked) == 1 else None


def choice_match(responses: Sequence[str], problems: Sequence[Problem]) -> torch.Tensor:
    """1 where the letter a response chooses (:func:`extract_choice` among the item's letters,
    ``problem.extra_info["letters"]``, all of ``"ABCDE"`` when it has none) equals ``problem.answer``, else 0.
    Returns ``[B]`` float32 in ``{0, 1}``."""
    if len(responses) != len(problems):
        raise ValueError(f"got {len(responses)} responses for {len(problems)} problems")
    return torch.tensor(
        [
            1.0 if extract_choice(r, (p.extra_info or {}).get("letters", LETTERS)) == p.answer else 0.0
            for r, p in zip(responses, problems)
        ],
        dtype=torch.float32,
    )


# --- items ----------------------------------------------------------------------------------------------


def shuffled(item: sciqa_data.MCItem, seed: int, split: str, row: int) -> tuple[tuple[str, ...], int]:
    """``item``'s choices in a permutation keyed by (seed, split, row) (Fisher-Yates on hash draws), and the
    new index of the correct one, which is uniform over positions."""
    order = list(range(len(item.choices)))
    h = hash_words(_STREAM_SHUFFLE, seed, _SPLIT_WORD[split], row)
    for i in range(len(order) - 1, 0, -1):
        h = splitmix64(h)
        j = h % (i + 1)
        order[i], order[j] = order[j], order[i]
    return tuple(item.choices[k] for k in order), order.index(item.correct)


def format_question(question: str, choices: Sequence[str], compact: bool) -> str:
    """One line ending in a newline for the generated items (short for the char model); otherwise one choice
    per line and the instruction, for real models."""
    if compact:
        return question + "".join(f" {c}({LETTERS[i]})" for i, c in enumerate(choices)) + "\n"
    lines = [question, *(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices)), INSTRUCTION]
    return "\n".join(lines)


def worked_choice(options: Sequence[str], correct: int) -> str:
    """The generated items' demonstration: the options copied in order up to the correct one, then its letter,
    ``"Ne(A) Na(B) #### B"``. Copying a list is an easy sequential pattern, and each stop-or-go decision is
    local (is the option just copied the answer to this question?), so the model never has to search the
    prompt for where its recalled answer sits."""
    shown = " ".join(f"{c}({LETTERS[i]})" for i, c in enumerate(options[: correct + 1]))
    return f"{shown} #### {LETTERS[correct]}"


Key = tuple[int, tuple[str, ...]]  # (fact index, choices in order): what makes two generated items the same


class SciQATask(Task):
    """Science multiple choice from a generated fact table (offline) or SciQ / ARC / GPQA.

    Args:
        source: ``generated`` | ``sciq`` | ``arc`` | ``gpqa``.
        data_dir: folder with ``train.jsonl``/``test.jsonl`` in the source's format; ``None`` loads the hub.
        hub_id, hub_config, train_split, test_split: hub dataset and splits; ``None`` = the source's default
            (``allenai/sciq``; ``allenai/ai2_arc`` ``ARC-Challenge``; ``Idavidrein/gpqa`` ``gpqa_main`` halves).
        max_train, max_test: keep the first rows of each split (real sources); ``None`` keeps all.
        shuffle_seed: seed of the choice permutation (real sources).
        template: ``plain`` | ``chat`` (the tokenizer's chat template around the question).
        n_test: held-out items (generated).
        train_seed, test_seed: seeds of the generated training and test streams.
        n_sft: fixed demonstrations for the warm-start (generated; real sources use their training split).
        n_choices: options per generated item (2-5).
        max_response_len: tokens per response, EOS included; ``None`` = the longest generated solution + EOS
            + 2 (generated) or 256 (real sources).
        tokenizer: the model's tokenizer; only ``template=chat`` uses it.
        categories: generated items only from these fact categories (``None`` = all); a smaller table is
            seen more often per run.
        reward: the clean reward (:class:`~dvpo_lab.tasks.reward.RewardFn`); default :func:`choice_match`.
    """

    name = "sciqa"

    def __init__(
        self,
        source: str = "generated",
        data_dir: str | Path | None = None,
        hub_id: str | None = None,
        hub_config: str | None = None,
        train_split: str | None = None,
        test_split: str | None = None,
        max_train: int | None = None,
        max_test: int | None = None,
        shuffle_seed: int = 0,
        template: str = "plain",
        n_test: int = 500,
        train_seed: int = 1,
        test_seed: int = 2,
        n_sft: int = 2000,
        n_choices: int = 4,
        max_response_len: int | None = None,
        tokenizer: Any = None,
        categories: Sequence[str] | None = None,
        reward: RewardFn = choice_match,
    ) -> None:
        if source not in SOURCES:
            raise ConfigError(f"task.source={source!r}: expected one of {' | '.join(SOURCES)}")
        for name, value in (("max_train", max_train), ("max_test", max_test), ("max_response_len", max_response_len)):
            if value is not None and value < 1:
                raise ConfigError(f"task.{name} must be >= 1 or null, got {value}")
        if not 2 <= n_choices <= len(LETTERS):
            raise ConfigError(f"task.n_choices must be between 2 and {len(LETTERS)}, got {n_choices}")
        if n_sft < 0:
            raise ConfigError(f"task.n_sft must be >= 0, got {n_sft}")
        check_template(template, tokenizer)
        self.source, self.template, self._tokenizer, self.reward = source, template, tokenizer, reward
        self.shuffle_seed = shuffle_seed
        if source == "generated":
            self._init_generated(n_test, train_seed, test_seed, n_sft, n_choices, categories)
            self.max_response_len = max_response_len or self._longest_solution + 1 + RESPONSE_MARGIN
        else:
            self._init_real(data_dir, hub_id, hub_config, train_split, test_split, max_train, max_test)
            self.max_response_len = max_response_len or 256

    # --- generated ------------------------------------------------------------------------------------

    def _init_generated(
        self,
        n_test: int,
        train_seed: int,
        test_seed: int,
        n_sft: int,
        n_choices: int,
        categories: Sequence[str] | None = None,
    ) -> None:
        self.facts = build_facts()
        if categories is not None:
            known = sorted({f.category for f in self.facts})
            unknown = sorted(set(categories) - set(known))
            if unknown or not categories:
                raise ConfigError(
                    f"task.categories={list(categories)}: unknown {unknown or 'empty list'}; categories: {known}"
                )
            self.facts = [f for f in self.facts if f.category in set(categories)]
        self._pools = category_pools(self.facts)
        small = {c: len(p) for c, p in self._pools.items() if len(p) < n_choices}
        if small:
            raise ConfigError(
                f"task.n_choices={n_choices} needs {n_choices} distinct answers per fact category; "
                f"these have fewer: {small}. Lower task.n_choices"
            )
        self.n_choices, self.letters = n_choices, LETTERS[:n_choices]
        self.n_test, self.train_seed, self.test_seed, self.n_sft = n_test, train_seed, test_seed, n_sft
        # a conservative bound on distinct items, so the rejection loops below stay short
        space = len(self.facts) * n_choices
        if not 1 <= n_test <= space // 2:
            raise ConfigError(
                f"task.n_test={n_test} must be between 1 and {space // 2} for {len(self.facts)} "
                f"facts x {n_choices} choices; lower task.n_test"
            )
        longest = max(len(a) for pool in self._pools.values() for a in pool)
        self._longest_solution = len(worked_choice(["x" * longest] * n_choices, n_choices - 1))
        self._test_keys: set[Key] = set()
        self._test: list[Problem] = []
        index = 0
        while len(self._test) < n_test:
            key = self._draw(_STREAM_TEST, test_seed, index, 0)
            index += 1
            if key not in self._test_keys:
                self._test_keys.add(key)
                self._test.append(self._problem(key))
        log.info(
            "sciqa (generated): %d facts in %d categories, %d test items, %d choices; max_response_len=%d",
            len(self.facts),
            len(self._pools),
            n_test,
            n_choices,
            self._longest_solution + 1 + RESPONSE_MARGIN,
        )

    def _draw(self, stream: int, seed: int, index: int, attempt: int) -> Key:
        """The item at (stream, seed, index, attempt): a fact, distractors of its category, the key's position."""
        h = hash_words(stream, seed, index, attempt)
        fi = h % len(self.facts)
        fact = self.facts[fi]
        pool = [a for a in self._pools[fact.category] if a != fact.answer]
        options = []
        for _ in range(self.n_choices - 1):
            h = splitmix64(h)
            options.append(pool.pop(h % len(pool)))
        h = splitmix64(h)
        options.insert(h % self.n_choices, fact.answer)  # the correct letter is uniform
        return fi, tuple(options)

    def _draw_outside_test(self, stream: int, seed: int, index: int) -> Key:
        """Like :meth:`_draw`, redrawn with the next attempt counter until the problem is not a test one."""
        return draw_outside(lambda attempt: self._draw(stream, seed, index, attempt), self._test_keys)

    def _problem(self, key: Key) -> Problem:
        fi, options = key
        fact = self.facts[fi]
        letter = LETTERS[options.index(fact.answer)]
        text = format_question(fact.question, options, compact=True)
        prompt = text if self.template == "plain" else render_prompt(text.rstrip("\n"), "chat", self._tokenizer)
        return Problem(
            prompt=prompt,
            answer=letter,
            solution=worked_choice(options, options.index(fact.answer)),
            extra_info={"letters": self.letters},
        )

    # --- real sources ---------------------------------------------------------------------------------

    def _init_real(self, data_dir, hub_id, hub_config, train_split, test_split, max_train, max_test) -> None:
        spec = sciqa_data.SOURCES[self.source]
        self.letters = LETTERS
        splits = {
            "train": (train_split or spec.train_split, max_train),
            "test": (test_split or spec.test_split, max_test),
        }
        loaded: dict[str, list[Problem]] = {}
        for split, (hub_split, limit) in splits.items():
            if data_dir is None:
                items = sciqa_data.load_hub(
                    self.source,
                    hub_id or spec.hub_id,
                    hub_config if hub_id else (hub_config or spec.hub_config),
                    hub_split,
                    limit,
                )
            else:
                items = sciqa_data.load_local(data_dir, self.source, split, limit)
            loaded[split] = [self._real_problem(item, split, row) for row, item in enumerate(items)]
        self._train, self._test = loaded["train"], loaded["test"]
        where = (hub_id or spec.hub_id) if data_dir is None else str(data_dir)
        log.info("sciqa (%s) from %s: %d train, %d test items", self.source, where, len(self._train), len(self._test))

    def _real_problem(self, item: sciqa_data.MCItem, split: str, row: int) -> Problem:
        if len(item.choices) > len(LETTERS):
            raise ConfigError(
                f"task.source={self.source}: {split} row {row} has {len(item.choices)} choices, at "
                f"most {len(LETTERS)} are supported"
            )
        choices, correct = shuffled(item, self.shuffle_seed, split, row)
        letter = LETTERS[correct]
        prompt = render_prompt(format_question(item.question, choices, compact=False), self.template, self._tokenizer)
        return Problem(
            prompt=prompt,
            answer=letter,
            solution=f"{choices[correct]} #### {letter}",
            extra_info={"letters": self.letters},
        )

    # --- Task API -------------------------------------------------------------------------------------

    def train_problems(self, indices: Sequence[int]) -> list[Problem]:
        """Generated: any non-negative index (never a test item). Real: ``index % num_train()``."""
        if self.source == "generated":
            return [self._problem(self._draw_outside_test(_STREAM_TRAIN, self.train_seed, int(i))) for i in indices]
        return [self._train[int(i) % len(self._train)] for i in indices]

    def num_train(self) -> int | None:
        return None if self.source == "generated" else len(self._train)

    def test_problems(self) -> list[Problem]:
        return list(self._test)

    def sft_problems(self) -> list[Problem]:
        """Generated: ``n_sft`` fixed demonstrations from their own stream. Real: the training split."""
        if self.source == "generated":
            return [self._problem(self._draw_outside_test(_STREAM_SFT, self.train_seed, i)) for i in range(self.n_sft)]
        return list(self._train)

    def extract_answer(self, text: str) -> str | None:
        """The chosen letter (:func:`extract_choice` over this task's letters), ``None`` when none."""
        return extract_choice(text, self.letters)

    def score(self, responses: list[str], problems: list[Problem]) -> torch.Tensor:
        """``task.reward`` (default :func:`choice_match`: the chosen letter equals the key); ``[B]`` float32."""
        return score_with(self.reward, responses, problems)
