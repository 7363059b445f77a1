"""veRL's strict ``####`` rule, the guarded math-verify scorer, and the reward functions ``task.reward`` names."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvpo_lab.config import ConfigError
from dvpo_lab.tasks.base import Problem
from dvpo_lab.tasks.reward import (
    answer_extractor,
    exact_match,
    extract_answer_exact,
    extract_answer_math_verify,
    extract_answer_strict,
    math_verify_match,
    per_sample,
    score_batch,
    score_math_verify,
    score_strict,
    score_with,
    strict_match,
)


def test_strict_takes_last_match_and_strips_commas() -> None:
    assert extract_answer_strict("#### 12 then #### 1,234") == "1234"
    assert extract_answer_strict("x #### -3.5") == "-3.5"
    assert extract_answer_strict("9750 #### 579") == "579"


def test_strict_needs_the_exact_marker() -> None:
    assert extract_answer_strict("the answer is 579") is None
    assert extract_answer_strict("####579") is None  # veRL requires the space
    assert extract_answer_strict("") is None


# 352 characters of explanation after the committed answer, with numbers in it: more than veRL's
# 300-character window, so that window no longer sees the marker
_HEAD = "I added the two numbers. To check, 17 apples and 25 pears make 42 fruits, and 3 boxes of 14 would too. "
_TAIL = "Nothing here changes the count written above; the last number is 8 crates."
PROSE = _HEAD + ("More words and no digits. " * 20)[: 352 - len(_HEAD) - len(_TAIL)] + _TAIL
WORKED = "2+40=42\n#### 42\n"


def test_prose_fixture_is_352_characters() -> None:
    assert len(PROSE) == 352 and PROSE.endswith("8 crates.")


@pytest.mark.parametrize("n", [0, 1, 100, 284, 285, 300, 352, 5000])
def test_strict_score_does_not_depend_on_text_after_the_answer(n: int) -> None:
    # a 300-character window (veRL's) would lose the marker for n >= 285 and score 0
    text = WORKED + (PROSE * 20)[:n]
    assert extract_answer_strict(text) == "42"
    assert score_strict(text, "42") == 1.0


def test_answer_followed_by_long_prose_strict_and_flexible() -> None:
    text = WORKED + PROSE
    assert score_strict(text, "42") == 1.0
    assert score_math_verify(text, "42") == 1.0
    assert extract_answer_math_verify(text) == "42"
    # read through a 300-character tail, math-verify would find no marker and credit the last number
    assert score_math_verify(text, "8") == 0.0


def test_verl_window_is_an_explicit_option() -> None:
    text = WORKED + PROSE
    assert extract_answer_strict(text, window=300) is None and score_strict(text, "42", window=300) == 0.0
    assert extract_answer_strict("#### 7" + "x" * 294, window=300) == "7"  # veRL's edge: 300 characters in all
    assert extract_answer_strict("#### 7" + "x" * 295, window=300) is None
    # the flexible rule never credits a number after a marker, even one the window cut off
    assert extract_answer_math_verify(text, window=300) is None
    assert score_math_verify(text, "8", window=300) == 0.0 and score_math_verify(text, "42", window=300) == 0.0
    assert score_batch([text], ["42"], window=300).tolist() == [0.0]
    assert score_batch([text], ["42"]).tolist() == [1.0]
    with pytest.raises(ValueError, match="window"):
        extract_answer_strict("#### 1", window=0)


@pytest.mark.parametrize(
    "text, answer",
    [
        ("#### 42\nThen 17 apples remain.", "42"),  # the next lines are explanation
        ("#### 42. Then 17 apples remain.", "42"),  # so is the rest of the marker's line
        ("#### 42 (not 43)", "42"),
        ("#### 1,234 apples (not 5)", "1234"),
        ("#### The final answer is 42, since 40 + 2 = 42 and 17 is wrong", "42"),
        ("worked: 6 * 7 = 42\n#### \\frac{1}{2} and 7 more", "\\frac{1}{2}"),
        ("so 17\n#### 42\n\n#### ", None),  # the last marker commits to nothing readable
        ("#### 42\n" + PROSE + "\n####", None),
        ("####\n42", None),  # the answer belongs on the marker's line
    ],
)
def test_math_verify_reads_only_the_committed_answer(text: str, answer: str | None) -> None:
    assert extract_answer_math_verify(text) == answer
    if answer is not None:
        assert score_math_verify(text, answer) == 1.0
    for number in ("17", "43", "5", "7"):
        assert score_math_verify(text, number) == 0.0


@pytest.mark.parametrize(
    "text, answer",
    [
        ("so the answer is 579.0", "579"),
        ("The final answer is 42. Then 17 more.", "42"),  # math-verify's own priority: an "answer is" phrase
        ("\\boxed{42} and then 17 more", "42"),  # ... and \boxed{} before the last number
        ("so 42 then 17", "17"),  # no commitment at all: the last number (documented)
        ("The answer is 42. " + PROSE, "42"),  # long trailing prose changes nothing
    ],
)
def test_math_verify_without_a_marker(text: str, answer: str) -> None:
    assert score_math_verify(text, answer) == 1.0


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


# --- the reward functions task.reward names -------------------------------------------------------------------

RESPONSES = ["x #### 1,234", "#### 5.0", "so $\\boxed{5}$", WORKED + PROSE, "no answer", "#### Paris\nmore"]
ANSWERS = ["1234", "5", "5", "42", "7", "Paris"]
PROBLEMS = [Problem(prompt="q", answer=a) for a in ANSWERS]


def test_builtin_rewards_are_the_rules_on_a_batch() -> None:
    """The functions task.reward names give exactly the per-response rules' numbers (window included)."""
    for reward, rule in ((strict_match, score_strict), (math_verify_match, score_math_verify)):
        for window in (None, 300):
            expected = [rule(r, a, window) for r, a in zip(RESPONSES, ANSWERS)]
            got = reward(RESPONSES, PROBLEMS, window=window)
            assert got.dtype == torch.float32 and got.tolist() == expected
    assert strict_match(RESPONSES, PROBLEMS).tolist() == [1, 0, 0, 1, 0, 0]
    assert exact_match(RESPONSES, PROBLEMS).tolist() == [0, 0, 0, 1, 0, 1]  # "1,234" is not the text "1234"
    assert extract_answer_exact("a #### B) x\nlater #### ") is None and extract_answer_exact("#### B) x\n") == "B) x"


def test_per_sample_wraps_a_function_of_one_response() -> None:
    @per_sample
    def contains(response: str, answer: str, bonus: float = 0.0) -> float:
        return min(1.0, float(answer in response) + bonus)

    assert contains(RESPONSES, PROBLEMS) == [0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    assert contains(["-"], PROBLEMS[:1], bonus=0.5) == [0.5]
    assert contains.__name__ == "contains"  # the checks read its signature: bonus is a valid node key


def test_score_with_checks_what_a_reward_returns() -> None:
    two = PROBLEMS[:2]
    assert score_with(lambda r, p: [True, 0.25], ["a", "b"], two).tolist() == [1.0, 0.25]
    assert score_with(lambda r, p: torch.tensor([1, 0], dtype=torch.int64), ["a", "b"], two).dtype == torch.float32
    for bad, match in (
        ([1.0], r"returned shape \(1,\) for 2 responses"),
        ([0.5, 1.5], "scored response 1 1.5"),
        ([float("nan"), 0.0], "scored response 0 NaN"),
        ("ab", "returned str, not \\[B\\] scores"),
        ([[1.0, 0.0]], r"returned shape \(1, 2\)"),
    ):
        with pytest.raises(ConfigError, match=f"^task.reward \\(.*\\) {match}") as err:
            score_with(lambda r, p, bad=bad: bad, ["a", "b"], two)
        assert "\n" not in str(err.value)


def test_answer_extractor_follows_the_reward() -> None:
    text = "#### 5.0 then " + "x" * 300
    assert answer_extractor(strict_match)(text) == "5.0"
    assert answer_extractor(functools.partial(strict_match, window=300))(text) is None  # the reward's window
    assert answer_extractor(functools.partial(math_verify_match))("so #### 5.0") == "5.0"
    assert answer_extractor(exact_match)("#### Paris") == "Paris"
    assert answer_extractor(lambda r, p: [1.0] * len(r))("#### 12 apples") == "12"  # a user's: the strict rule
