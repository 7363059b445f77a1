"""Answer extraction and clean scoring for GSM8K-format responses (a final ``#### <number>``).

The strict rule reproduces veRL's ``verl/utils/reward_score/gsm8k.py`` (method ``strict``) so our accuracy
numbers mean what veRL users expect; ``math-verify`` is the flexible option for free-form answers.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)

# veRL only searches the tail of a response: regexes over very long generations are slow, and the final
# answer is at the end anyway (300 characters is their stand-in for about 300 tokens).
SOLUTION_CLIP_CHARS = 300
_STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")


def extract_answer_strict(text: str) -> str | None:
    """veRL's strict GSM8K extraction: the last ``#### <number>`` in the last 300 characters.

    Commas and ``$`` are removed from the match (``"#### 1,234"`` -> ``"1234"``). Returns ``None`` when the
    response has no well-formed final answer, which is what makes the rule test the format too.
    """
    tail = text[-SOLUTION_CLIP_CHARS:]
    matches = _STRICT_RE.findall(tail)
    if not matches:
        return None
    return matches[-1].replace(",", "").replace("$", "")


def score_strict(text: str, answer: str) -> float:
    """1.0 when the strict extraction equals the reference string exactly, else 0.0 (veRL's defaults)."""
    return 1.0 if extract_answer_strict(text) == answer else 0.0


def _math_verify_timeout() -> int | None:
    # math-verify enforces its timeout with signal.alarm, which only works in the main thread; elsewhere it
    # would fail every call, so we run without a timeout there.
    return 5 if threading.current_thread() is threading.main_thread() else None


def final_segment(text: str) -> str:
    """What the flexible rule parses: the text after the last ``####`` when there is one, else the tail.

    A worked GSM8K solution is full of intermediate numbers (``<<6/1=6>>6 mph``) that math-verify would
    otherwise pick up; the ``####`` marker, when present, says where the final answer is.
    """
    tail = text[-SOLUTION_CLIP_CHARS:]
    return tail.rsplit("####", 1)[1] if "####" in tail else tail


def extract_answer_math_verify(text: str) -> str | None:
    """Flexible extraction with ``math_verify.parse`` on :func:`final_segment`: the string form of the answer
    it finds (``"#### 1,234"`` -> ``"1234"``, ``"so $\\boxed{6}$"`` -> ``"6"``).

    Never raises: any parser failure (or a missing ``math-verify``) gives ``None``.
    """
    try:
        from math_verify import parse

        parsed = parse(final_segment(text), parsing_timeout=_math_verify_timeout())
    # a scorer must not kill a training run on one odd response, whatever the parser throws
    except Exception as err:  # noqa: BLE001
        log.debug("math_verify.parse failed: %r", err)
        return None
    if len(parsed) < 2:
        return None
    return str(parsed[1])


def score_math_verify(text: str, answer: str) -> float:
    """1.0 when ``math_verify.verify`` judges the response's :func:`final_segment` equivalent to the
    reference (``"579.0"``, ``"\\boxed{579}"`` and ``"#### 579"`` all match ``"579"``), else 0.0.

    Never raises: any failure scores 0.0.
    """
    try:
        from math_verify import parse, verify

        timeout = _math_verify_timeout()
        gold = parse(answer, parsing_timeout=timeout)
        pred = parse(final_segment(text), parsing_timeout=timeout)
        return 1.0 if gold and pred and verify(gold, pred, timeout_seconds=timeout) else 0.0
    except Exception as err:  # noqa: BLE001  (same reason as above)
        log.debug("math_verify scoring failed: %r", err)
        return 0.0


SCORERS: dict[str, Callable[[str, str], float]] = {"strict": score_strict, "math_verify": score_math_verify}


def score_batch(responses: Sequence[str], answers: Sequence[str], method: str = "strict") -> torch.Tensor:
    """Score each response against its reference answer.

    Returns:
        ``[B]`` float32 tensor in ``{0, 1}``.
    """
    if method not in SCORERS:
        raise ValueError(f"unknown scoring method {method!r}; choose one of {sorted(SCORERS)}")
    if len(responses) != len(answers):
        raise ValueError(f"got {len(responses)} responses for {len(answers)} answers")
    fn = SCORERS[method]
    return torch.tensor([fn(r, a) for r, a in zip(responses, answers)], dtype=torch.float32)
