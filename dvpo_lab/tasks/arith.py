"""``task=arith``: the embedded offline testbed, generated GSM8K-format arithmetic.

Strings are short and regular so a tiny character-level transformer learns the task in about a minute
(see ``docs/testbed.md``)::

    prompt   "123+456="          operands zero-padded to ``digits``
    solution "9750 #### 579"     result padded to digits+1 and written least-significant digit first (each
                                 digit is then a local carry computation), then veRL's "#### <answer>"
    answer   "579"

Every problem is a pure function of (seed, index) through a counter-based hash, never Python's salted
``hash()``, so runs, ranks and machines agree. Training and demonstrations never yield a test problem.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from dvpo_lab.tasks.base import Problem, Task, check_aligned, draw_outside, register_task
from dvpo_lab.tasks.hashing import hash_words as _hash
from dvpo_lab.tasks.hashing import splitmix64 as _splitmix64
from dvpo_lab.tasks.reward import extract_answer_strict, score_batch

log = logging.getLogger(__name__)

# Stream words keep the draws of the different splits independent even when their seeds coincide.
_STREAM_TRAIN, _STREAM_TEST, _STREAM_SFT, _STREAM_SFT_NOISE = 1, 2, 3, 4
_ALLOWED_OPS = "+-"
# Slack on top of the longest solution plus EOS, so a response one token too long is still judged (as wrong).
RESPONSE_MARGIN = 2


Key = tuple[int, str, int]  # (a, op, b): what makes two problems the same problem


@register_task("arith")
class ArithTask(Task):
    """Zero-padded addition (and optionally subtraction) in GSM8K format.

    Args:
        digits: operand width; results are written with ``digits + 1`` digits in the worked part.
        ops: allowed operators, a string over ``"+-"`` (``"+-"`` mixes both uniformly).
        n_test: size of the held-out split (distinct problems).
        train_seed: seed of the training stream and of the demonstrations.
        test_seed: seed of the held-out split.
        n_sft: number of fixed demonstrations for the supervised warm-start.
        sft_label_noise: fraction of demonstrations whose result has one wrong digit (written consistently in
            the worked part and after ``####``), a knob that makes the warm-start plateau below the ceiling.
        reversed_solution: write the worked part least-significant digit first (False: most-significant
            first, which the tiny model learns far more slowly).
    """

    def __init__(
        self,
        digits: int = 3,
        ops: str = "+",
        n_test: int = 500,
        train_seed: int = 1,
        test_seed: int = 2,
        n_sft: int = 2000,
        sft_label_noise: float = 0.0,
        reversed_solution: bool = True,
    ) -> None:
        if digits < 1:
            raise ValueError(f"task.digits must be >= 1, got {digits}")
        if not ops or set(ops) - set(_ALLOWED_OPS) or len(set(ops)) != len(ops):
            raise ValueError(f"task.ops must be distinct characters from {_ALLOWED_OPS!r}, got {ops!r}")
        if not 0.0 <= sft_label_noise <= 1.0:
            raise ValueError(f"task.sft_label_noise must be in [0, 1], got {sft_label_noise}")
        if n_sft < 0:
            raise ValueError(f"task.n_sft must be >= 0, got {n_sft}")
        self.digits = digits
        self.ops = ops
        self.n_test = n_test
        self.train_seed = train_seed
        self.test_seed = test_seed
        self.n_sft = n_sft
        self.sft_label_noise = sft_label_noise
        self.reversed_solution = reversed_solution
        self._base = 10**digits

        space = self.num_distinct_problems()
        # Keep at most half the space for testing so training has problems left and the rejection loops
        # below stay short.
        if not 1 <= n_test <= space // 2:
            raise ValueError(
                f"task.n_test={n_test} must be between 1 and {space // 2} (half of the {space} distinct "
                f"problems for digits={digits}, ops={ops!r}); lower n_test or raise digits"
            )
        width = digits + 1
        # worked part (digits+1) + " #### " + answer (at most digits+1 characters) + EOS + margin
        self.max_response_len = width + len(" #### ") + width + 1 + RESPONSE_MARGIN

        self._test: list[Problem] = []
        self._test_keys: set[Key] = set()
        index = 0
        while len(self._test) < n_test:
            key = self._draw(_STREAM_TEST, test_seed, index, 0)
            index += 1
            if key not in self._test_keys:
                self._test_keys.add(key)
                self._test.append(self._problem(key))
        log.info(
            "arith: digits=%d ops=%r, %d test problems of %d distinct; max_response_len=%d",
            digits,
            ops,
            n_test,
            space,
            self.max_response_len,
        )

    # --- generation -------------------------------------------------------------------------------------

    def num_distinct_problems(self) -> int:
        """How many distinct (a, op, b) exist: base^2 for ``+``, base(base+1)/2 for ``-`` with a >= b."""
        n = self._base
        return sum(n * n if op == "+" else n * (n + 1) // 2 for op in self.ops)

    def _draw(self, stream: int, seed: int, index: int, attempt: int) -> Key:
        """The problem at (stream, seed, index, attempt): a pure function of these four integers."""
        h = _hash(stream, seed, index, attempt)
        op = self.ops[h % len(self.ops)]
        h = _splitmix64(h)
        a = h % self._base
        h = _splitmix64(h)
        b = h % self._base
        if op == "-" and a < b:  # results stay non-negative
            a, b = b, a
        return a, op, b

    def _draw_outside_test(self, stream: int, seed: int, index: int) -> Key:
        """Like :meth:`_draw`, redrawn with the next attempt counter until the problem is not a test one."""
        return draw_outside(lambda attempt: self._draw(stream, seed, index, attempt), self._test_keys)

    def _worked(self, result: int) -> str:
        digits = f"{result:0{self.digits + 1}d}"
        return digits[::-1] if self.reversed_solution else digits

    def _problem(self, key: Key, shown_result: int | None = None) -> Problem:
        """Build the problem; ``shown_result`` overrides the result written in the solution (label noise)."""
        a, op, b = key
        result = a + b if op == "+" else a - b
        shown = result if shown_result is None else shown_result
        d = self.digits
        return Problem(
            prompt=f"{a:0{d}d}{op}{b:0{d}d}=",
            answer=str(result),
            solution=f"{self._worked(shown)} #### {shown}",
        )

    def _corrupt(self, result: int, index: int) -> int:
        """``result`` with one of its ``digits`` low digits replaced by a different digit.

        The top (carry) digit is left alone: a wrong carry-out such as ``8021`` for ``741-720`` would be an
        implausible slip, while a wrong low digit is the error a half-trained model actually makes.
        """
        h = _hash(_STREAM_SFT_NOISE, self.train_seed, index, 1)
        padded = list(f"{result:0{self.digits + 1}d}")
        pos = 1 + h % self.digits
        # adding 1..9 mod 10 guarantees a different digit
        padded[pos] = str((int(padded[pos]) + 1 + _splitmix64(h) % 9) % 10)
        return int("".join(padded))

    # --- Task API ---------------------------------------------------------------------------------------

    def train_problems(self, indices: Sequence[int]) -> list[Problem]:
        """Training problems for any non-negative indices (the stream is unbounded)."""
        return [
            self._problem(self._draw_outside_test(_STREAM_TRAIN, self.train_seed, int(i))) for i in indices
        ]

    def num_train(self) -> int | None:
        return None

    def test_problems(self) -> list[Problem]:
        return list(self._test)

    def sft_problems(self) -> list[Problem]:
        """``n_sft`` fixed demonstrations from their own stream; exactly ``round(sft_label_noise * n_sft)``
        of them (chosen by hash) carry a result with one wrong digit, their ``answer`` staying the true one."""
        n_bad = round(self.sft_label_noise * self.n_sft)
        order = sorted(range(self.n_sft), key=lambda i: _hash(_STREAM_SFT_NOISE, self.train_seed, i, 0))
        bad = set(order[:n_bad])
        out = []
        for i in range(self.n_sft):
            key = self._draw_outside_test(_STREAM_SFT, self.train_seed, i)
            a, op, b = key
            result = a + b if op == "+" else a - b
            out.append(self._problem(key, self._corrupt(result, i) if i in bad else None))
        return out

    def score(self, responses: list[str], problems: list[Problem]) -> torch.Tensor:
        """Strict ``####`` rule, exact string match against the reference answer; ``[B]`` float32."""
        check_aligned(responses, problems)
        return score_batch(responses, [p.answer for p in problems], method="strict")

    def extract_answer(self, text: str) -> str | None:
        """The last ``#### <number>`` of the response (veRL's strict extraction), ``None`` without one."""
        return extract_answer_strict(text)
