"""Answer extraction and clean scoring for GSM8K-format responses (a final ``#### <number>``).

The strict rule reproduces veRL's ``verl/utils/reward_score/gsm8k.py`` (method ``strict``) so our accuracy
numbers mean what veRL users expect; ``math-verify`` is the flexible option for free-form answers.

Where the answer is: the last ``####`` marker commits to it, and nothing written after the committed answer
can change the score, however long it is. veRL reads only the last 300 characters (its stand-in for about
300 tokens, to keep regexes fast), so a correct ``#### 42`` followed by 300 characters of explanation scores 0
there; ``window=300`` (``task.reward_window=300``) reproduces that for comparisons with numbers published
with it, and the default ``window=None`` reads the whole response.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)

MARKER = "####"
# veRL's window, in characters (``task.reward_window=300`` reproduces it; the default reads everything).
VERL_WINDOW_CHARS = 300
# The flexible rule's committed answer is the shortest prefix of the marker's line, in words, that parses;
# "#### The final answer is 42" needs 5 words, so 8 is room enough and bounds the parser calls.
MAX_ANSWER_WORDS = 8
_STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")


def clip_window(text: str, window: int | None) -> str:
    """The part of ``text`` a rule reads: all of it (``window=None``), or veRL's last ``window`` characters."""
    if window is None:
        return text
    if window < 1:
        raise ValueError(f"window must be >= 1 characters or None, got {window}")
    return text[-window:]


def extract_answer_strict(text: str, window: int | None = None) -> str | None:
    """veRL's strict GSM8K extraction: the number of the last ``#### <number>`` (one space, no other text).

    Commas and ``$`` are removed from the match (``"#### 1,234"`` -> ``"1234"``). Returns ``None`` when the
    response has no well-formed final answer, which is what makes the rule test the format too. Text after
    the last match never changes the result; ``window`` (characters, ``None`` = all) clips the response to its
    tail first, as veRL does with 300.
    """
    matches = _STRICT_RE.findall(clip_window(text, window))
    if not matches:
        return None
    return matches[-1].replace(",", "").replace("$", "")


def score_strict(text: str, answer: str, window: int | None = None) -> float:
    """1.0 when the strict extraction equals the reference string exactly, else 0.0 (veRL's defaults)."""
    return 1.0 if extract_answer_strict(text, window) == answer else 0.0


def _math_verify_timeout() -> int | None:
    # math-verify enforces its timeout with signal.alarm, which only works in the main thread; elsewhere it
    # would fail every call, so we run without a timeout there.
    return 5 if threading.current_thread() is threading.main_thread() else None


def final_segment(text: str, window: int | None = None) -> str:
    """The part of a response the flexible rule parses: the rest of the last ``####`` marker's line when
    the response has a marker, else the whole response (``window``: only its last characters).

    A worked GSM8K solution is full of intermediate numbers (``<<6/1=6>>6 mph``) that math-verify would
    otherwise pick up, and explanations after the answer are full of others; the marker says where the
    committed answer is. See :func:`parse_committed` for how much of the marker's line counts.
    """
    text = clip_window(text, window)
    if MARKER not in text:
        return text
    return text.rsplit(MARKER, 1)[1].split("\n", 1)[0]


def parse_committed(text: str, window: int | None = None, timeout: int | None = None) -> list:
    """``math_verify.parse`` of the answer a response commits to (``[]`` when none).

    With a ``####`` marker: the shortest prefix, in words, of the rest of the marker's line that parses
    (at most :data:`MAX_ANSWER_WORDS` words), so ``"#### 42. Then 17 remain"`` is 42 where math-verify alone
    would take its rightmost number, 17; nothing after the marker's line counts, and a marker whose line
    has no answer gives ``[]`` (the response committed to nothing readable). Without a marker: math-verify's
    own choice over the whole response (``\\boxed{}``, then ``the answer is ...``, then the last number;
    rightmost first within each kind), since nothing marks where the answer ends: a later phrase of the same
    kind wins, which is why the prompt asks for ``####``.
    ``window`` clips the response first; a marker left outside it gives ``[]``, never a number from the text
    after it.

    Raises whatever ``math_verify.parse`` raises (callers guard).
    """
    from math_verify import parse

    clipped = clip_window(text, window)
    if MARKER not in clipped:
        # a marker cut off by the window committed to an answer the rule cannot see: the tail after it is
        # explanation, not an answer (strict scores such a response 0 too)
        return [] if MARKER in text else parse(clipped, parsing_timeout=timeout)
    words = final_segment(clipped).split()
    for k in range(1, min(len(words), MAX_ANSWER_WORDS) + 1):
        parsed = parse(" ".join(words[:k]), parsing_timeout=timeout)
        if parsed:
            return parsed
    return []


def extract_answer_math_verify(text: str, window: int | None = None) -> str | None:
    """Flexible extraction: the string form of :func:`parse_committed`'s answer (``"#### 1,234"`` ->
    ``"1234"``, ``"so $\\boxed{6}$"`` -> ``"6"``).

    Never raises: any parser failure (or a missing ``math-verify``) gives ``None``.
    """
    try:
        parsed = parse_committed(text, window, _math_verify_timeout())
    # a scorer must not kill a training run on one odd response, whatever the parser throws
    except Exception as err:  # noqa: BLE001
        log.debug("math_verify.parse failed: %r", err)
        return None
    if len(parsed) < 2:
        return None
    return str(parsed[1])


def score_math_verify(text: str, answer: str, window: int | None = None) -> float:
    """1.0 when ``math_verify.verify`` judges the response's committed answer (:func:`parse_committed`)
    equivalent to the reference (``"579.0"``, ``"\\boxed{579}"`` and ``"#### 579"`` all match ``"579"``),
    else 0.0.

    Never raises: any failure scores 0.0.
    """
    try:
        from math_verify import parse, verify

        timeout = _math_verify_timeout()
        gold = parse(answer, parsing_timeout=timeout)
        pred = parse_committed(text, window, timeout)
        return 1.0 if gold and pred and verify(gold, pred, timeout_seconds=timeout) else 0.0
    except Exception as err:  # noqa: BLE001  (same reason as above)
        log.debug("math_verify scoring failed: %r", err)
        return 0.0


SCORERS: dict[str, Callable[[str, str, int | None], float]] = {
    "strict": score_strict, "math_verify": score_math_verify,
}
EXTRACTORS: dict[str, Callable[[str, int | None], str | None]] = {
    "strict": extract_answer_strict, "math_verify": extract_answer_math_verify,
}


def score_batch(
    responses: Sequence[str], answers: Sequence[str], method: str = "strict", window: int | None = None
) -> torch.Tensor:
    """Score each response against its reference answer with rule ``method`` (``window``: see
    :func:`clip_window`).

    Returns:
        ``[B]`` float32 tensor in ``{0, 1}``.
    """
    if method not in SCORERS:
        raise ValueError(f"unknown scoring method {method!r}; choose one of {sorted(SCORERS)}")
    if len(responses) != len(answers):
        raise ValueError(f"got {len(responses)} responses for {len(answers)} answers")
    fn = SCORERS[method]
    return torch.tensor([fn(r, a, window) for r, a in zip(responses, answers)], dtype=torch.float32)
