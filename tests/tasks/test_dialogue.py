"""task=dialogue: the simulated user, the TCR/ACR/GCR judge on hand-written dialogues, goals and demos."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvpo_lab.tasks.dialogue import DOMAINS, SERVICE_DOMAIN, DialogueTask, Goal, Judgement, judge, user_reply

TAXI = Goal("taxi", (("from", "A7"), ("to", "B2"), ("time", "9")))


@pytest.fixture(scope="module")
def task() -> DialogueTask:
    return DialogueTask(n_test=50, n_sft=40)


# --- the simulated user ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "turn, reply",
    [
        ("ask from", "from=A7"),
        ("ask time", "time=9"),
        ("  ask to ", "to=B2"),  # surrounding whitespace is forgiven
        ("ask day", "?"),  # a slot this goal lacks
        ("ask", "?"),
        ("ask from to", "?"),
        ("from=A7", "?"),
        ("", "?"),
        ("hello", "?"),
        ("book taxi from=A7", None),  # any turn starting with "book" ends the episode
        ("book", None),
    ],
)
def test_user_answers_the_slot_asked_and_question_marks_the_rest(turn, reply):
    assert user_reply(TAXI, turn) == reply


def test_user_is_a_pure_function_of_goal_and_turn(task):
    p = task.train_problems([3])[0]
    first_slot = Goal.parse(p.answer).slots[0][0]
    assert task.user_reply(p, f"ask {first_slot}") == task.user_reply(task.train_problems([3])[0], f"ask {first_slot}")
    assert task.user_reply(p, f"ask {first_slot}").startswith(f"{first_slot}=")


# --- the judge ------------------------------------------------------------------------------------------

FULL = "ask from\nfrom=A7\nask to\nto=B2\nask time\ntime=9\nbook taxi from=A7 to=B2 time=9\n"


@pytest.mark.parametrize(
    "transcript, expected",
    [
        (FULL, Judgement(1.0, 1.0, 1.0)),
        # slots in another order, final action in another order: still complete
        ("ask time\ntime=9\nask from\nfrom=A7\nask to\nto=B2\nbook taxi time=9 to=B2 from=A7\n", Judgement(1, 1, 1)),
        # guessed a value without asking: completes the task, but ACR counts two of three asks
        ("ask from\nfrom=A7\nask to\nto=B2\nbook taxi from=A7 to=B2 time=9\n", Judgement(1.0, 2 / 3, 1.0)),
        # one value wrong
        (
            "ask from\nfrom=A7\nask to\nto=B2\nask time\ntime=9\nbook taxi from=A7 to=B3 time=9\n",
            Judgement(0.0, 1.0, 2 / 3),
        ),
        # a slot missing from the action
        ("ask from\nfrom=A7\nask to\nto=B2\nask time\ntime=9\nbook taxi from=A7 to=B2\n", Judgement(0.0, 1.0, 2 / 3)),
        # an extra slot or a repeated one: not complete, the right values still count
        (FULL.replace("to=B2 time=9\n", "to=B2 time=9 day=mo\n"), Judgement(0.0, 1.0, 1.0)),
        ("book taxi from=A7 to=B2 time=9 time=9\n", Judgement(0.0, 0.0, 2 / 3)),
        # a malformed word in the action
        ("book taxi from=A7 to=B2 time=9 please\n", Judgement(0.0, 0.0, 1.0)),
        # the wrong service: no goal value counts
        ("ask from\nfrom=A7\nbook train from=A7 to=B2 time=9\n", Judgement(0.0, 1 / 3, 0.0)),
        # never booked
        ("ask from\nfrom=A7\nask to\nto=B2\nask time\ntime=9\n", Judgement(0.0, 1.0, 0.0)),
        # only the first final action counts; asks after it do not
        ("book taxi from=A7\nask to\nbook taxi from=A7 to=B2 time=9\n", Judgement(0.0, 0.0, 1 / 3)),
        ("", Judgement(0.0, 0.0, 0.0)),
    ],
)
def test_judge_on_hand_written_dialogues(transcript, expected):
    got = judge(transcript, TAXI)
    assert (got.tcr, got.acr, got.gcr) == pytest.approx((expected.tcr, expected.acr, expected.gcr))


@settings(max_examples=10_000, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("askbo tfrmime=A7B29\n?x ")), max_size=80) | st.text(max_size=60))
def test_judge_never_raises(text):
    j = judge(text, TAXI)
    assert j.tcr in (0.0, 1.0) and 0.0 <= j.acr <= 1.0 and 0.0 <= j.gcr <= 1.0
    assert j.tcr <= j.gcr  # a complete action has every value right


# --- goals, demonstrations, scores and metrics ----------------------------------------------------------


def test_demonstrations_are_perfect_dialogues(task):
    demos = task.sft_problems()
    assert len(demos) == 40
    scores = task.score([p.solution for p in demos], demos)
    assert torch.equal(scores, torch.ones(40))
    turns = task.demo_turns(demos[0])
    assert [a for _, a in turns] == [i % 2 == 0 for i in range(len(turns))] and turns[-1][1]
    assert "".join(t for t, _ in turns) == demos[0].solution
    assert all(t.endswith("\n") for t, _ in turns)


def test_goals_are_deterministic_and_train_never_hits_test(task):
    again = DialogueTask(n_test=50, n_sft=40)
    assert task.train_problems(range(20)) == again.train_problems(range(20))
    assert task.test_problems() == again.test_problems()
    test_keys = {p.answer for p in task.test_problems()}
    assert len(test_keys) == 50
    assert not test_keys & {p.answer for p in task.train_problems(range(2000))}
    assert not test_keys & {p.answer for p in task.sft_problems()}
    assert {SERVICE_DOMAIN[p.answer.split()[0]] for p in task.train_problems(range(200))} == set(DOMAINS)


def test_prompt_reveals_the_service_but_no_value(task):
    for p in task.test_problems()[:20]:
        goal = Goal.parse(p.answer)
        assert p.prompt == f"G:{goal.service}\n"
        assert all(v not in p.prompt[2:].replace(goal.service, "") for _, v in goal.slots)


def test_gcr_reward_and_metrics_per_domain(task):
    problems = task.test_problems()[:30]
    half = []  # the demonstration with the first value of the final action wrong
    for p in problems:
        *turns, action = p.solution.rstrip("\n").split("\n")
        book, service, first, *rest = action.split(" ")
        half.append("\n".join([*turns, " ".join([book, service, first + "x", *rest])]) + "\n")
    gcr_task = DialogueTask(n_test=50, n_sft=0, reward="gcr")
    tcr, gcr = task.score(half, problems), gcr_task.score(half, problems)
    assert torch.all(tcr == 0) and torch.all((gcr > 0) & (gcr < 1))
    m = task.metrics([p.solution for p in problems], problems)
    assert {"tcr", "acr", "gcr"} <= set(m) and all(f"tcr/{d}" in m for d in DOMAINS)
    for d in DOMAINS:
        in_domain = torch.tensor([SERVICE_DOMAIN[p.answer.split()[0]] == d for p in problems])
        assert torch.isnan(m[f"tcr/{d}"][~in_domain]).all() and torch.all(m[f"tcr/{d}"][in_domain] == 1)


def test_domains_subset_and_bad_arguments():
    t = DialogueTask(n_test=10, n_sft=0, domains=["finance"])
    assert {SERVICE_DOMAIN[p.answer.split()[0]] for p in t.train_problems(range(50))} == {"finance"}
    assert t.max_turns >= 3 and not math.isnan(t.max_response_len)
    with pytest.raises(ValueError, match="task.domains"):
        DialogueTask(domains=["sports"])
    with pytest.raises(ValueError, match="task.reward"):
        DialogueTask(reward="acr")
    with pytest.raises(ValueError, match="task.max_turns >= 4"):
        DialogueTask(max_turns=3)


@pytest.mark.parametrize("n", [0, 100, 300, 1000])
def test_text_after_the_final_action_never_changes_the_verdict(n: int) -> None:
    # the first "book" line ends the episode; later lines (another action, asks) are never judged
    dialogue = "ask from\nfrom=A7\nask to\nto=B2\nask time\ntime=9\nbook taxi from=A7 to=B2 time=9\n"
    tail = ("book taxi from=C1 to=D4 time=3\nask day\n?\n" * 40)[:n]
    assert judge(dialogue + tail, TAXI) == Judgement(tcr=1.0, acr=1.0, gcr=1.0)
    wrong = dialogue.replace("to=B2 time=9\n", "to=B3 time=9\n")
    fixed_later = wrong + "book taxi from=A7 to=B2 time=9\n" + tail
    assert judge(fixed_later, TAXI).tcr == 0.0  # a later corrected action does not count either
