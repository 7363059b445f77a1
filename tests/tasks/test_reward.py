"""veRL's strict ``####`` rule and the guarded math-verify scorer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dvpo_lab.tasks.reward import (
    extract_answer_math_verify,
    extract_answer_strict,
    score_batch,
    score_math_verify,
    score_strict,
)


def test_strict_takes_last_match_and_strips_commas() -> None:
    assert extract_answer_strict("#### 12 then #### 1,234") == "1234"
    assert extract_answer_strict("x #### -3.5") == "-3.5"
    assert extract_answer_strict("9750 #### 579") == "579"


def test_strict_needs_the_exact_marker() -> None:
    assert extract_answer_strict("the answer is 579") is None
    assert extract_answer_strict("####579") is None  # veRL requires the space
    assert extract_answer_strict("") is None


def test_strict_only_reads_the_last_300_characters() -> None:
    assert extract_answer_strict("#### 7" + "x" * 300) is None
    assert extract_answer_strict("#### 7" + "x" * 294) == "7"


def test_score_strict_is_exact_string_match() -> None:
    assert score_strict("#### 579", "579") == 1.0
    assert score_strict("#### 579.0", "579") == 0.0
    assert score_strict("#### 5790", "579") == 0.0


def test_math_verify_is_flexible() -> None:
    assert score_math_verify("so the answer is 579.0", "579") == 1.0
    assert score_math_verify("the answer is 578", "579") == 0.0
    assert extract_answer_math_verify("#### 579") == "579"


def test_score_batch_shape_and_dtype() -> None:
    out = score_batch(["#### 1", "#### 2", "nope"], ["1", "3", "1"])
    assert out.dtype.is_floating_point and out.tolist() == [1.0, 0.0, 0.0]


# Arbitrary text, plus text dense in the characters the regex cares about (so matches and the clip happen).
_TEXT = st.one_of(st.text(max_size=400), st.text(alphabet="#0123456789 -.,$x\n", max_size=400))


@settings(max_examples=2000, deadline=None)
@given(_TEXT)
def test_strict_never_raises(text: str) -> None:
    out = extract_answer_strict(text)
    assert out is None or isinstance(out, str)
    assert score_strict(text, "1") in (0.0, 1.0)


# math-verify costs about 2 ms a call (sympy), so fewer examples keep the suite fast.
@settings(max_examples=150, deadline=None)
@given(_TEXT)
def test_math_verify_never_raises(text: str) -> None:
    out = extract_answer_math_verify(text)
    assert out is None or isinstance(out, str)
    assert score_math_verify(text, "12") in (0.0, 1.0)
