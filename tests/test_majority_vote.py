"""Majority-vote pseudo-labels with a fake, deterministic sampler: voting, caching, the verifier run against the
label for every task, the agreement metric, and clear errors when the hook is not used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dvpo_lab.noise import MajorityVoteNoise, PseudoLabel
from dvpo_lab.seeding import prompt_seed
from dvpo_lab.tasks import Task
from dvpo_lab.tasks.arith import ArithTask
from dvpo_lab.tasks.gsm8k import GSM8KTask
from dvpo_lab.tasks.reward import math_verify_match, strict_match
from dvpo_lab.tasks.sciqa import SciQATask

K = 8


class FakeSampler:
    """Answers prompt i with 5 votes for ``majority[prompt]`` and 3 for ``minority[prompt]``; records calls."""

    def __init__(self, majority: dict[str, str], minority: dict[str, str]) -> None:
        self.majority, self.minority = majority, minority
        self.calls: list[tuple[list[str], int, int, float]] = []

    def __call__(self, prompts: list[str], n: int, seed: int, temperature: float) -> list[str]:
        self.calls.append((list(prompts), n, seed, temperature))
        out = []
        for p in prompts:
            votes = [self.minority[p]] * 3 + [self.majority[p]] * 5
            out += [f"work #### {v}" for v in votes[:n]]
        return out


@pytest.fixture(scope="module")
def task() -> ArithTask:
    return ArithTask(digits=2, n_test=20, n_sft=10)


def _setup(task: ArithTask, n: int = 6):  # type: ignore[no-untyped-def]
    problems = task.train_problems(range(n))
    # even prompts: the initial policy's majority is right; odd: it is confidently wrong ("100000")
    majority = {p.prompt: (p.answer if i % 2 == 0 else "100000") for i, p in enumerate(problems)}
    minority = {p.prompt: ("100000" if i % 2 == 0 else p.answer) for i, p in enumerate(problems)}
    return problems, FakeSampler(majority, minority)


def test_labels_are_majority_answers_computed_once_per_prompt(task: ArithTask) -> None:
    problems, sampler = _setup(task)
    noise = MajorityVoteNoise(task, k=K, temperature=0.7)
    noise.prepare(problems, sampler, seed=3)
    assert len(sampler.calls) == len(problems)
    for (prompts, n, seed, temp), p in zip(sampler.calls, problems):
        # one prompt per call, seeded by (run seed, prompt text) alone
        assert prompts == [p.prompt] and n == K and temp == 0.7 and seed == prompt_seed(3, p.prompt)
    for i, p in enumerate(problems):
        label = noise.cache[p.prompt]
        assert label == PseudoLabel(p.answer if i % 2 == 0 else "100000", 5, i % 2 == 0)
    noise.prepare(problems + problems[:2], sampler, seed=3)  # cached: no new samples
    assert len(sampler.calls) == len(problems)
    assert prompt_seed(3, "a") == prompt_seed(3, "a") != prompt_seed(4, "a") != prompt_seed(3, "b")


def test_reward_is_the_verifier_against_the_label(task: ArithTask) -> None:
    problems, sampler = _setup(task)
    noise = MajorityVoteNoise(task, k=K)
    noise.prepare(problems, sampler, seed=1)
    G = 2
    rep = [p for p in problems for _ in range(G)]
    # sample 0 of each group answers correctly, sample 1 answers what the wrong majority says
    responses = [f"x #### {p.answer}" if j == 0 else "x #### 100000" for p in problems for j in range(G)]
    clean = task.score(responses, rep)
    assert clean.tolist() == [1.0, 0.0] * len(problems)
    noisy, m = noise.apply(
        clean, seed=1, step=0, group_index=torch.arange(len(rep)) // G, responses=responses, problems=rep
    )
    # even prompts (label right): noisy = clean; odd prompts (label "100000"): the right answer is punished and
    # the wrong one rewarded
    expected = [1.0, 0.0, 0.0, 1.0] * (len(problems) // 2)
    assert noisy.tolist() == expected and noisy.dtype == clean.dtype
    assert m["noise/mv_agreement"] == pytest.approx(0.5)
    assert m["noise/fp_rate"] == pytest.approx(0.5) and m["noise/fn_rate"] == pytest.approx(0.5)
    assert m["noise/youden_j"] == pytest.approx(0.0) and m["noise/mv_cache_size"] == len(problems)
    # the same call again gives the same rewards (the labels are fixed once computed)
    again, _ = noise.apply(
        clean, seed=1, step=5, group_index=torch.arange(len(rep)) // G, responses=responses, problems=rep
    )
    assert torch.equal(again, noisy)


def test_ties_go_to_the_first_answer_and_no_answer_scores_zero(task: ArithTask) -> None:
    p = task.train_problems([0])[0]
    noise = MajorityVoteNoise(task, k=4)
    assert noise.vote(p, ["#### 7", "#### 8", "#### 8", "#### 7"]).answer == "7"
    assert noise.vote(p, ["nothing", "#### 9", "junk", "junk"]) == PseudoLabel("9", 1, p.answer == "9")
    assert noise.vote(p, ["no", "answer", "at", "all"]) == PseudoLabel(None, 0, False)
    noise.cache[p.prompt] = PseudoLabel(None, 0, False)
    noisy, m = noise.apply(
        torch.ones(2), seed=1, step=0, group_index=torch.zeros(2), responses=[p.solution, p.solution], problems=[p, p]
    )  # type: ignore[list-item]
    assert noisy.tolist() == [0.0, 0.0] and m["noise/mv_agreement"] == 0.0


def test_apply_needs_prepare_and_responses(task: ArithTask) -> None:
    problems, _ = _setup(task, 2)
    noise = MajorityVoteNoise(task)
    assert noise.needs_policy_samples
    with pytest.raises(ValueError, match="needs responses= and problems="):
        noise.apply(torch.zeros(2), seed=1, step=0, group_index=torch.zeros(2))
    with pytest.raises(ValueError, match="call prepare"):
        noise.apply(torch.zeros(2), seed=1, step=0, group_index=torch.zeros(2), responses=["a", "b"], problems=problems)
    with pytest.raises(ValueError, match="noise.k"):
        MajorityVoteNoise(task, k=0)

    class NoExtract(ArithTask):
        extract_answer = Task.extract_answer  # the base class's: not implemented

    with pytest.raises(ValueError, match="does not implement extract_answer"):
        MajorityVoteNoise(NoExtract(digits=1, n_test=5, n_sft=1))


def test_every_task_can_be_pseudo_labelled(tmp_path: Path) -> None:
    sciqa = SciQATask(n_test=10, n_sft=1)
    p = sciqa.test_problems()[0]
    other = "A" if p.answer != "A" else "B"
    noise = MajorityVoteNoise(sciqa, k=5)
    label = noise.vote(p, [f"x #### {other}"] * 3 + [f"the answer is {p.answer}"] * 2)
    assert label == PseudoLabel(other, 3, False)
    assert sciqa.score_against([f"#### {other}", f"#### {p.answer}"], [p, p], [other, other]).tolist() == [1, 0]

    rows = [{"question": "q?", "answer": "1 + 4 = 5\n#### 5"}]
    (tmp_path / "train.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps(rows[0]) + "\n")
    for reward in (strict_match, math_verify_match):
        gsm = GSM8KTask(data_dir=tmp_path, reward=reward)
        g = gsm.test_problems()[0]
        label = MajorityVoteNoise(gsm, k=3).vote(g, ["#### 5", "so #### 5", "#### 6"])
        assert label.answer == "5" and label.agrees and label.votes == 2
    mv = GSM8KTask(data_dir=tmp_path, reward=math_verify_match)
    # the flexible rule matches "5.0" and "\boxed{5}" against the label "5"
    assert mv.score_against(["#### 5.0", "so $\\boxed{5}$", "#### 6"], [g] * 3, ["5"] * 3).tolist() == [1, 1, 0]


def test_config_builds_it_around_the_runs_own_task(task: ArithTask) -> None:
    from dvpo_lab.run import make_noise
    from tests.conftest import compose_cfg

    noise = make_noise(compose_cfg(["noise=majority_vote", "noise.k=5", "noise.temperature=0.5"]), task)
    assert isinstance(noise, MajorityVoteNoise) and noise.task is task and (noise.k, noise.temperature) == (5, 0.5)
