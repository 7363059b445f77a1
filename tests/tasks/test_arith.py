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


# --- the imperfect teacher (task=arith_teacher) -----------------------------------------------------------


def test_drop_carry_teacher_forgets_exactly_the_carry_into_the_hundreds() -> None:
    t = ArithTask(teacher="drop_carry")
    assert t.teacher_result((150, "+", 850)) == 900  # true 1000: the tens' carry never reaches the hundreds
    assert t._problem((150, "+", 850), 900).solution == "0090 #### 900"
    assert t.teacher_result((999, "+", 999)) == 1898  # units and tens carry, the hundreds' one is lost
    assert t.teacher_result((123, "+", 456)) == 579  # no carry at all: right
    assert t.teacher_result((909, "+", 101)) == 1010  # carry into the tens only: right
    assert t.teacher_result((500, "+", 600)) == 1100  # carry out of the hundreds only: right
    assert t.teacher_result((45, "+", 55)) == 0  # 045+055: "0000", the carry chain ends in the hundreds
    assert ArithTask(teacher="drop_carry", teacher_column=1).teacher_result((5, "+", 7)) == 2
    s = ArithTask(digits=3, ops="-", teacher="drop_carry")
    assert s.teacher_result((100, "-", 1)) == 199  # the borrow from the hundreds is forgotten
    assert s.teacher_result((555, "-", 123)) == 432
    assert ArithTask().teacher_result((150, "+", 850)) == 1000  # teacher=exact


def test_drop_carry_blind_spot_is_every_carry_into_the_column() -> None:
    t = ArithTask(teacher="drop_carry")
    pairs = [(a, b) for a in range(0, 1000, 7) for b in range(0, 1000, 11)]
    for a, b in pairs:
        carry = (a % 10 + b % 10 >= 10) + a // 10 % 10 + b // 10 % 10 >= 10
        assert t.in_blind_spot((a, "+", b)) == carry
        assert t.teacher_result((a, "+", b)) == a + b - 100 * carry
    # over all 10^6 sums the blind spot holds 0.45 * 0.55 + 0.55 * 0.45 = 49.5 %
    assert sum(t.in_blind_spot((a, "+", b)) for a in range(1000) for b in range(1000)) == 495_000


def test_teacher_demonstrations_show_its_error_on_the_blind_spot_only() -> None:
    t = ArithTask(n_sft=1000, teacher="drop_carry")
    clean = ArithTask(n_sft=1000).sft_problems()
    demos = t.sft_problems()
    assert [p.prompt for p in demos] == [p.prompt for p in clean]
    assert [p.answer for p in demos] == [p.answer for p in clean]  # the reference answer stays true
    wrong = 0
    for p in demos:
        key = (int(p.prompt[:3]), "+", int(p.prompt[4:7]))
        shown = int(p.solution.split(" #### ")[1])  # type: ignore[union-attr]
        assert p.solution == f"{shown:04d}"[::-1] + f" #### {shown}"  # worked part and answer agree
        assert shown == (int(p.answer) - 100 if t.in_blind_spot(key) else int(p.answer))
        wrong += shown != int(p.answer)
    assert 0.45 < wrong / len(demos) < 0.55
    assert t.teacher_accuracy() == pytest.approx(0.514)  # the plateau SFT converges to on the 500 test problems
    assert ArithTask().teacher_accuracy() == 1.0


def test_teacher_error_rate_is_the_fraction_of_the_blind_spot_shown_wrong() -> None:
    t = ArithTask(n_sft=1000, teacher="drop_carry", teacher_error_rate=0.75)
    demos = t.sft_problems()
    spot = [p for p in demos if t.in_blind_spot((int(p.prompt[:3]), "+", int(p.prompt[4:7])))]
    wrong = [p for p in demos if p.solution.split(" #### ")[1] != p.answer]  # type: ignore[union-attr]
    assert set(map(id, wrong)) <= set(map(id, spot))
    assert len(wrong) == round(0.75 * len(spot))
    assert (
        ArithTask(n_sft=1000, teacher="drop_carry", teacher_error_rate=0.0).sft_problems()
        == ArithTask(n_sft=1000).sft_problems()
    )
    assert ArithTask(teacher="drop_carry", teacher_error_rate=0.5).teacher_accuracy() == 1.0  # no majority error


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"teacher": "weak"}, "task.teacher"),
        ({"teacher": "drop_carry", "teacher_column": 3}, "task.teacher_column"),
        ({"teacher": "drop_carry", "teacher_column": 0}, "task.teacher_column"),
        ({"teacher": "drop_carry", "teacher_error_rate": 1.2}, "task.teacher_error_rate"),
    ],
)
def test_bad_teacher_knobs_fail_clearly(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ArithTask(**kwargs)


def test_arith_teacher_option_runs_to_convergence_on_the_teacher_task() -> None:
    from dvpo_lab.run import make_task
    from dvpo_lab.sft import target_acc, warm_start_key
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["task=arith_teacher"])
    assert (cfg.task.name, cfg.task.teacher, cfg.task.teacher_error_rate) == ("arith_teacher", "drop_carry", 0.8)
    assert cfg.task.n_sft == 10000  # enough that no warm-start memorises which blind-spot problems were right
    assert target_acc(cfg) is None  # no accuracy threshold: a fixed decay after the loss trigger
    assert (cfg.sft.lr_schedule, cfg.sft.decay_below_loss, cfg.sft.decay_steps) == ("wsd", 0.04, 300)
    assert cfg.sft.batch_size == 64 and cfg.sft.max_steps == 6000  # small batches; a cap, not the budget
    assert compose_cfg(["task=arith_teacher", "seed=7"]).sft.seed == 7  # a warm-start per run seed
    assert compose_cfg([]).task.name == "arith_teacher"  # the default task
    task = make_task(cfg)
    assert isinstance(task, ArithTask) and task.teacher_accuracy() == pytest.approx(0.514)
    assert task.teacher_column == 2  # the class's default: the hundreds digit
    plain = compose_cfg(["task=arith"])  # the threshold-stopped task is unchanged beside it
    assert make_task(plain).teacher == "exact" and target_acc(plain) == pytest.approx(0.3)
    assert warm_start_key(cfg) != warm_start_key(plain)
