"""The generated arithmetic testbed: exact format, scoring, determinism, disjoint splits, knobs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvpo_lab.tasks.arith import ArithTask


@pytest.fixture(scope="module")
def task() -> ArithTask:
    return ArithTask()


def _wrong_digit(text: str, pos: int) -> str:
    return text[:pos] + str((int(text[pos]) + 1) % 10) + text[pos + 1 :]


def test_format_matches_the_module_docstring() -> None:
    t = ArithTask(digits=3)
    p = t._problem((123, "+", 456))
    assert (p.prompt, p.solution, p.answer) == ("123+456=", "9750 #### 579", "579")
    p = t._problem((5, "+", 7))
    assert (p.prompt, p.solution, p.answer) == ("005+007=", "2100 #### 12", "12")
    p = ArithTask(digits=3, reversed_solution=False)._problem((999, "+", 999))
    assert (p.prompt, p.solution, p.answer) == ("999+999=", "1998 #### 1998", "1998")


def test_generated_problems_are_well_formed(task: ArithTask) -> None:
    for p in task.train_problems(range(200)) + task.test_problems()[:200]:
        a, b = p.prompt[:3], p.prompt[4:7]
        assert len(p.prompt) == 8 and p.prompt[3] == "+" and p.prompt.endswith("=")
        result = int(a) + int(b)
        assert p.answer == str(result)
        assert p.solution == f"{result:04d}"[::-1] + f" #### {result}"
        # solution + EOS fits the response budget with room to spare
        assert len(p.solution) + 1 <= task.max_response_len


def test_max_response_len(task: ArithTask) -> None:
    assert task.max_response_len == len("9991 #### 1998") + 1 + 2


def test_solutions_score_one_and_wrong_digit_scores_zero(task: ArithTask) -> None:
    probs = task.test_problems()[:100]
    assert torch.equal(task.score([p.solution for p in probs], probs), torch.ones(100))
    wrong = [_wrong_digit(p.solution, len(p.solution) - 1) for p in probs]
    assert torch.equal(task.score(wrong, probs), torch.zeros(100))
    assert task.score(["", "9750", "9750 #### 579 "], [probs[0]] * 3).tolist() == [0.0, 0.0, 0.0]
    out = task.score([probs[0].solution], probs[:1])
    assert out.dtype == torch.float32 and out.shape == (1,)


def test_score_rejects_misaligned_batch(task: ArithTask) -> None:
    with pytest.raises(ValueError, match="2 responses for 1 problems"):
        task.score(["a", "b"], task.test_problems()[:1])


def test_train_test_disjoint(task: ArithTask) -> None:
    test_prompts = {p.prompt for p in task.test_problems()}
    assert len(test_prompts) == task.n_test == 500
    train_prompts = {p.prompt for p in task.train_problems(range(20_000))}
    sft_prompts = {p.prompt for p in task.sft_problems()}
    assert not train_prompts & test_prompts
    assert not sft_prompts & test_prompts
    assert task.num_train() is None


def test_disjoint_when_test_takes_half_the_space() -> None:
    # 100 distinct 1-digit sums, 50 of them held out: training must keep redrawing and still never leak
    t = ArithTask(digits=1, n_test=50, n_sft=50)
    test_prompts = {p.prompt for p in t.test_problems()}
    train = t.train_problems(range(2000))
    assert not {p.prompt for p in train} & test_prompts
    assert len({p.prompt for p in train}) == 50  # all remaining problems get used


def test_deterministic_across_calls_and_instances(task: ArithTask) -> None:
    idx = [0, 5, 10**9, 7]
    assert task.train_problems(idx) == task.train_problems(idx) == ArithTask().train_problems(idx)
    assert task.train_problems([5]) == task.train_problems(idx)[1:2]
    assert task.test_problems() == ArithTask().test_problems()
    assert task.sft_problems() == ArithTask().sft_problems()


def test_seeds_change_streams(task: ArithTask) -> None:
    other = ArithTask(train_seed=3, test_seed=4)
    assert task.train_problems(range(50)) != other.train_problems(range(50))
    assert task.test_problems() != other.test_problems()
    assert task.train_problems(range(50)) != task.test_problems()[:50]


def test_digits_and_subtraction_knobs() -> None:
    t = ArithTask(digits=2, ops="+-", n_test=100, n_sft=100)
    probs = t.train_problems(range(2000)) + t.test_problems() + t.sft_problems()
    seen_ops = set()
    for p in probs:
        assert len(p.prompt) == 6 and p.prompt.endswith("=")
        a, op, b = int(p.prompt[:2]), p.prompt[2], int(p.prompt[3:5])
        seen_ops.add(op)
        result = a + b if op == "+" else a - b
        assert result >= 0 and p.answer == str(result)
        assert p.solution == f"{result:03d}"[::-1] + f" #### {result}"
    assert seen_ops == {"+", "-"}
    assert bool(t.score([p.solution for p in probs], probs).all())
    assert t.max_response_len == 3 + 6 + 3 + 1 + 2


def test_sft_label_noise_corrupts_the_requested_fraction() -> None:
    clean = ArithTask(n_sft=400).sft_problems()
    noisy_task = ArithTask(n_sft=400, sft_label_noise=0.25)
    noisy = noisy_task.sft_problems()
    assert [p.prompt for p in noisy] == [p.prompt for p in clean]
    assert all(p.solution for p in noisy)
    scores = noisy_task.score([p.solution for p in noisy], noisy)  # type: ignore[misc]
    assert int((scores == 0).sum()) == 100
    for p, c in zip(noisy, clean):
        if p.solution != c.solution:
            worked, final = p.solution.split(" #### ")  # type: ignore[union-attr]
            # exactly one digit of the padded result differs, written consistently in both places
            assert sum(x != y for x, y in zip(worked, c.solution.split(" #### ")[0])) == 1  # type: ignore[union-attr]
            assert int(worked[::-1]) == int(final) != int(p.answer)
            assert worked[-1] == c.solution.split(" #### ")[0][-1]  # type: ignore[union-attr]  # carry kept


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"digits": 0}, "digits"),
        ({"ops": "*"}, "ops"),
        ({"ops": ""}, "ops"),
        ({"ops": "++"}, "ops"),
        ({"sft_label_noise": 1.5}, "sft_label_noise"),
        ({"digits": 1, "n_test": 51}, "n_test"),
        ({"n_test": 0}, "n_test"),
    ],
)
def test_bad_knobs_fail_clearly(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ArithTask(**kwargs)


def test_extract_answer(task: ArithTask) -> None:
    assert task.extract_answer("9750 #### 579") == "579"
    assert task.extract_answer("9750 #### 579 #### 12") == "12"
    assert task.extract_answer("9750") is None and task.extract_answer("") is None


@settings(max_examples=10_000, deadline=None)
@given(st.one_of(st.text(max_size=60), st.text(alphabet="#0123456789 -", max_size=60)))
def test_extract_answer_never_raises(task: ArithTask, text: str) -> None:
    out = task.extract_answer(text)
    assert out is None or set(out) <= set("-0123456789.")


@pytest.mark.parametrize("n", [0, 100, 300, 1000])
def test_text_after_the_committed_answer_never_changes_the_score(task: ArithTask, n: int) -> None:
    # arith uses the GSM8K strict rule, which reads the last "#### " anywhere, not only in a 300-character tail
    p = task.test_problems()[:1]
    tail = ("\nchecking: 1 + 2 = 3, and 40 + 2 = 42; the answer above stands. " * 20)[:n]
    assert task.score([p[0].solution + tail], p).tolist() == [1.0]  # type: ignore[operator]
    assert task.extract_answer(p[0].solution + tail) == p[0].answer  # type: ignore[operator]
    assert task.score_against([p[0].solution + tail], p, ["42"]).tolist() == [0.0]  # type: ignore[operator]
