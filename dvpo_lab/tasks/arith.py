"""``task=arith``: the embedded offline testbed, generated GSM8K-format arithmetic.

Strings are short and regular so a tiny character-level transformer learns the task in about a minute
(see ``docs/testbed.md``)::

    prompt   "123+456="          operands zero-padded to ``digits``
    solution "9750 #### 579"     result padded to digits+1 and written least-significant digit first (each
                                 digit is then a local carry computation), then veRL's "#### <answer>"
    answer   "579"

Every problem is a pure function of (seed, index) through a counter-based hash, never Python's salted
``hash()``, so runs, ranks and machines agree. Training and demonstrations never yield a test problem.

An imperfect teacher (``teacher=drop_carry``, the ``task=arith_teacher`` option) writes the demonstrations: it
adds column by column like the exact one but forgets the carry (or, for ``-``, the borrow) into column
``teacher_column`` (0 = units; 2 = hundreds), e.g. ``150+850`` -> ``0090 #### 900`` instead of ``1000``. Its
blind spot, the problems with a carry into that column, is about half of all 3-digit additions (49.5 % for
column 2). A student that imitates it converges to the teacher's accuracy, well below the ceiling, however
long it trains; only a reward that checks the true answer can lead it out of the blind spot.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from dvpo_lab.config import ConfigError
from dvpo_lab.seeding import hash_words as _hash
from dvpo_lab.seeding import splitmix64 as _splitmix64
from dvpo_lab.tasks.base import Problem, Task, draw_outside
from dvpo_lab.tasks.reward import RewardFn, answer_extractor, score_with, strict_match

log = logging.getLogger(__name__)

# Stream words keep the draws of the different splits independent even when their seeds coincide.
_STREAM_TRAIN, _STREAM_TEST, _STREAM_SFT, _STREAM_SFT_NOISE, _STREAM_TEACHER = 1, 2, 3, 4, 5
_ALLOWED_OPS = "+-"
TEACHERS = ("exact", "drop_carry")
# Slack on top of the longest solution plus EOS, so a response one token too long is still judged (as wrong).
RESPONSE_MARGIN = 2


Key = tuple[int, str, int]  # (a, op, b): what makes two problems the same problem


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
        teacher: who writes the demonstrations: ``exact`` (the true result) or ``drop_carry`` (forgets the
            carry, or borrow, into column ``teacher_column``; see :meth:`teacher_result`).
        teacher_column: the column whose incoming carry ``drop_carry`` forgets, 1..digits-1 (0 = units).
        teacher_error_rate: fraction of the demonstrations in the teacher's blind spot (chosen by hash) that
            carry its error; the rest show the true result. Above 0.5 the error stays the most likely answer on
            the blind spot, so greedy decoding of a converged student reproduces it.
        reward: the clean reward (:class:`~dvpo_lab.tasks.reward.RewardFn`); default veRL's strict ``####``
            rule, exact string match against the true result.
    """

    name = "arith"

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
        teacher: str = "exact",
        teacher_column: int = 2,
        teacher_error_rate: float = 1.0,
        reward: RewardFn = strict_match,
    ) -> None:
        if digits < 1:
            raise ValueError(f"task.digits must be >= 1, got {digits}")
        if not ops or set(ops) - set(_ALLOWED_OPS) or len(set(ops)) != len(ops):
            raise ValueError(f"task.ops must be distinct characters from {_ALLOWED_OPS!r}, got {ops!r}")
        if not 0.0 <= sft_label_noise <= 1.0:
            raise ValueError(f"task.sft_label_noise must be in [0, 1], got {sft_label_noise}")
        if n_sft < 0:
            raise ValueError(f"task.n_sft must be >= 0, got {n_sft}")
        if teacher not in TEACHERS:
            raise ConfigError(f"task.teacher={teacher} is not a teacher; choose one of {' | '.join(TEACHERS)}")
        if teacher != "exact" and not 1 <= teacher_column <= digits - 1:
            raise ConfigError(
                f"task.teacher_column={teacher_column} must be between 1 and digits-1={digits - 1} "
                f"(the columns that can receive a carry); lower it or raise task.digits"
            )
        if not 0.0 <= teacher_error_rate <= 1.0:
            raise ConfigError(f"task.teacher_error_rate={teacher_error_rate} must be in [0, 1]; e.g. 0.8")
        self.digits = digits
        self.ops = ops
        self.n_test = n_test
        self.train_seed = train_seed
        self.test_seed = test_seed
        self.n_sft = n_sft
        self.sft_label_noise = sft_label_noise
        self.reversed_solution = reversed_solution
        self.teacher = teacher
        self.teacher_column = teacher_column
        self.teacher_error_rate = teacher_error_rate
        self.reward = reward
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

    def teacher_result(self, key: Key) -> int:
        """The result the ``drop_carry`` teacher computes for ``key``: column-wise addition (subtraction) with
        the carry (borrow) into column ``teacher_column`` forgotten; the true result for ``teacher=exact``.

        For ``+`` that is ``a + b - 10**teacher_column`` on the blind spot, e.g. ``150+850`` -> 900; for ``-``
        it is ``a - b + 10**teacher_column``, e.g. ``100-001`` -> 199 (forgets the borrow into the hundreds).
        """
        a, op, b = key
        result = a + b if op == "+" else a - b
        if self.teacher == "exact" or not self.in_blind_spot(key):
            return result
        return result - 10**self.teacher_column if op == "+" else result + 10**self.teacher_column

    def in_blind_spot(self, key: Key) -> bool:
        """Whether a carry (``+``) or borrow (``-``) enters column ``teacher_column`` of ``key``, i.e. whether
        the ``drop_carry`` teacher gets it wrong. For uniform 3-digit ``+`` and column 2: P = 0.495."""
        a, op, b = key
        low = 10**self.teacher_column
        if op == "+":
            return (a % low) + (b % low) >= low
        return (a % low) < (b % low)

    def teacher_accuracy(self, problems: Sequence[Problem] | None = None) -> float:
        """Fraction of ``problems`` (default: the test split) that the teacher's greedy answer, its error
        taken whenever ``teacher_error_rate > 0.5``, gets right: the accuracy a student that imitates the
        teacher converges to."""
        problems = self.test_problems() if problems is None else problems
        if self.teacher == "exact" or self.teacher_error_rate <= 0.5 or not problems:
            return 1.0
        wrong = sum(self.in_blind_spot(_key(p)) for p in problems)
        return 1.0 - wrong / len(problems)

    # --- Task API ---------------------------------------------------------------------------------------

    def train_problems(self, indices: Sequence[int]) -> list[Problem]:
        """Training problems for any non-negative indices (the stream is unbounded)."""
        return [self._problem(self._draw_outside_test(_STREAM_TRAIN, self.train_seed, int(i))) for i in indices]

    def num_train(self) -> int | None:
        return None

    def test_problems(self) -> list[Problem]:
        return list(self._test)

    def sft_problems(self) -> list[Problem]:
        """``n_sft`` fixed demonstrations from their own stream, written by the teacher, their ``answer``
        always the true one.

        With ``teacher=drop_carry``, ``round(teacher_error_rate * m)`` of the ``m`` demonstrations in its blind
        spot (chosen by hash) show :meth:`teacher_result`. Then exactly ``round(sft_label_noise * n_sft)`` of
        all demonstrations (chosen by hash) get one more wrong digit."""
        keys = [self._draw_outside_test(_STREAM_SFT, self.train_seed, i) for i in range(self.n_sft)]
        shown = [k[0] + k[2] if k[1] == "+" else k[0] - k[2] for k in keys]
        if self.teacher != "exact":
            spot = [i for i, k in enumerate(keys) if self.in_blind_spot(k)]
            spot.sort(key=lambda i: _hash(_STREAM_TEACHER, self.train_seed, i, 0))
            for i in spot[: round(self.teacher_error_rate * len(spot))]:
                shown[i] = self.teacher_result(keys[i])
        n_bad = round(self.sft_label_noise * self.n_sft)
        order = sorted(range(self.n_sft), key=lambda i: _hash(_STREAM_SFT_NOISE, self.train_seed, i, 0))
        for i in order[:n_bad]:
            shown[i] = self._corrupt(shown[i], i)
        return [self._problem(k, r) for k, r in zip(keys, shown, strict=True)]

    def score(self, responses: list[str], problems: list[Problem]) -> torch.Tensor:
        """``task.reward`` against the reference answer (default: the strict ``####`` rule); ``[B]`` float32."""
        return score_with(self.reward, responses, problems)

    def extract_answer(self, text: str) -> str | None:
        """The final answer under the reward's rule (default: the last ``#### <number>``), ``None`` without one."""
        return answer_extractor(self.reward)(text)


def _key(problem: Problem) -> Key:
    """(a, op, b) back from a prompt such as ``"123+456="``."""
    body = problem.prompt.rstrip("=")
    op = "+" if "+" in body else "-"
    a, b = body.split(op)
    return int(a), op, int(b)
