"""Multi-turn rollouts: interleaved masks, log-probs equal to one forward pass, GAE across user turns, SFT masks."""

from __future__ import annotations

import pytest
import torch

from dvpo_lab.algos import build_token_rewards, compute_gae
from dvpo_lab.config import ModelConfig
from dvpo_lab.models.build import build_critic, build_policy
from dvpo_lab.models.tokenizer import build_char_tokenizer
from dvpo_lab.multiturn import encode_dialogue_demo, sample_dialogues, sample_for_task
from dvpo_lab.rollout import Rollout, response_logprobs, response_values
from dvpo_lab.sft import _collate, _encode_demos
from dvpo_lab.tasks.dialogue import DialogueTask, Goal


class ScriptedUserTask:
    """Wraps the dialogue task so every turn, whatever the policy said, gets a long user reply: the rollout
    then always interleaves several assistant and user segments, even for a random policy."""

    max_turn_tokens = 150  # a random policy's turn then mostly ends on its own (newline or EOS), not at the cap

    def __init__(self, task):
        self._task = task

    def __getattr__(self, name):
        return getattr(self._task, name)

    def user_reply(self, problem, turn):
        return "from=A7 to=B2"


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    tok = build_char_tokenizer()
    policy = build_policy(ModelConfig(), tok)
    task = DialogueTask(n_test=20, n_sft=8)
    return tok, policy, task


def _segments(ro: Rollout, row: int) -> list[tuple[int, list[int]]]:
    """(mask value, token ids) runs of one row's valid response tokens."""
    n = int(ro.attention_mask[row, -ro.response_len :].sum())
    ids, mask = ro.response_ids[row, :n].tolist(), ro.response_mask[row, :n].int().tolist()
    runs: list[tuple[int, list[int]]] = []
    for t, m in zip(ids, mask):
        if runs and runs[-1][0] == m:
            runs[-1][1].append(t)
        else:
            runs.append((m, [t]))
    return runs


def test_user_tokens_have_mask_zero_and_stay_in_attention(setup):
    tok, policy, task = setup
    scripted = ScriptedUserTask(task)
    problems = task.train_problems(range(6))
    ro = sample_dialogues(policy, tok, scripted, problems, max_new_tokens=400, seed=1)
    P = ro.input_ids.shape[1] - ro.response_len
    assert ro.response_mask.shape == ro.response_ids.shape == (6, ro.response_len)
    # every real token is attended (user replies are context): a prefix of ones, then right padding
    att, T = ro.attention_mask[:, P:], ro.response_len
    assert torch.equal(att, (torch.arange(T)[None, :] < att.sum(1, keepdim=True)).long())
    assert torch.all(ro.response_mask <= att)
    saw_user = False
    for row in range(6):
        runs = _segments(ro, row)
        assert runs[0][0] == 1, "a dialogue starts with an assistant turn"
        for m, ids in runs:
            text = tok.decode(ids, skip_special_tokens=True)
            if m == 0:  # exactly the user's replies, each ending the turn
                saw_user = True
                assert text == "from=A7 to=B2\n"
            else:
                assert text.count("\n") <= 1 and (not text.count("\n") or text.endswith("\n"))
        # the transcript is the decoded response
        assert ro.texts[row] == tok.decode(ro.response_ids[row], skip_special_tokens=True)
    assert saw_user
    assert int(ro.num_turns.max()) > 1


def test_assistant_logprobs_equal_one_forward_pass(setup):
    """The sampler's own log-probs (turn by turn, re-padded each turn) equal those of one forward pass over
    the assembled rollout: PPO's ratio starts at exactly 1 on assistant tokens."""
    tok, policy, task = setup
    scripted = ScriptedUserTask(task)
    ro = sample_dialogues(
        policy,
        tok,
        scripted,
        task.train_problems(range(8)),
        max_new_tokens=400,
        seed=2,
        temperature=0.7,
        record_logprobs=True,
    )
    logp, _ = response_logprobs(policy, ro, temperature=0.7)
    m = ro.response_mask.bool()
    assert (ro.response_mask == 0).any() and m.sum() > 20
    torch.testing.assert_close(logp[m], ro.sampled_logprobs[m], atol=1e-4, rtol=0)
    assert torch.all(ro.sampled_logprobs[~m] == 0)


def test_seed_fixes_the_dialogue(setup):
    tok, policy, task = setup
    problems = task.train_problems(range(4))
    a, b = (
        sample_for_task(policy, tok, task, problems, max_new_tokens=task.max_response_len, seed=5) for _ in range(2)
    )
    assert a.texts == b.texts and torch.equal(a.input_ids, b.input_ids)


def test_gae_carries_values_across_user_turns_end_to_end(setup):
    """GAE on the interleaved rollout equals GAE on the assistant tokens alone; user tokens get 0."""
    tok, policy, task = setup
    ro = sample_dialogues(
        policy, tok, ScriptedUserTask(task), task.train_problems(range(4)), max_new_tokens=400, seed=3
    )
    critic = build_critic(policy, 1, init_std=0.5)
    with torch.no_grad():
        values = response_values(critic, ro)[..., 0]
    score = torch.tensor([1.0, 0.0, 1.0, 0.5])
    rewards = build_token_rewards(score, ro.response_mask, None, 0.0)
    adv, ret = compute_gae(rewards, values, ro.response_mask, gamma=1.0, lam=0.9)
    for row in range(4):
        keep = ro.response_mask[row].bool()
        assert torch.all(adv[row, ~keep] == 0) and torch.all(ret[row, ~keep] == 0)
        r, v = rewards[row, keep][None], values[row, keep][None]
        ref_adv, ref_ret = compute_gae(r, v, torch.ones_like(r), gamma=1.0, lam=0.9)
        torch.testing.assert_close(adv[row, keep][None], ref_adv)
        torch.testing.assert_close(ret[row, keep][None], ref_ret)
        # the reward sits on the last assistant token, never on a user token
        assert rewards[row, keep][-1] == score[row]


def test_greedy_dialogue_of_a_scripted_policy_scores_its_demonstration(setup):
    """A policy that replays the demonstration token by token gets TCR = ACR = GCR = 1 through the sampler."""
    tok, _, task = setup
    problem = task.test_problems()[0]
    ids, loss_mask = encode_dialogue_demo(tok, task, problem)
    prompt_len = len(tok(problem.prompt, add_special_tokens=False)["input_ids"])

    class Replay(torch.nn.Module):
        """Greedy = the demonstration's next token; user tokens come from the task, so only the assistant
        positions must match."""

        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))
            self.config = type("C", (), {"max_position_embeddings": 512})()

        @property
        def device(self):
            return torch.device("cpu")

        def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
            n_ctx = int(attention_mask[0].sum())
            seq = input_ids[0, -n_ctx:].tolist()
            assert seq == ids[:n_ctx], "the context must be the demonstration so far"
            new = []
            for t, m in zip(ids[n_ctx:], loss_mask[n_ctx:]):
                if not m:
                    break
                new.append(t)
            out = torch.tensor([input_ids[0].tolist() + new])
            return type("O", (), {"sequences": out, "logits": None})()

    ro = sample_dialogues(Replay(), tok, task, [problem], max_new_tokens=task.max_response_len, do_sample=False)
    assert ro.texts[0] == problem.solution
    assert ro.response_ids[0, : len(ids) - prompt_len].tolist() == ids[prompt_len:]
    assert ro.response_mask[0, : len(ids) - prompt_len].tolist() == loss_mask[prompt_len:]
    m = task.metrics(ro.texts, [problem])
    assert (float(m["tcr"]), float(m["acr"]), float(m["gcr"])) == (1.0, 1.0, 1.0)
    assert Goal.parse(problem.answer).action() in ro.texts[0]


def test_sft_loss_covers_assistant_turns_only(setup):
    tok, _, task = setup
    demos = task.sft_problems()[:3]
    batch = _collate(tok.pad_token_id)(_encode_demos(tok, task, demos))
    for row, p in enumerate(demos):
        labels = batch["labels"][row]
        trained = tok.decode(labels[labels != -100])
        expected = "".join(text for text, is_assistant in task.demo_turns(p) if is_assistant)
        assert trained == expected
        assert "=" not in trained.split("book")[0], "no user reply (slot=value) is trained on"


@pytest.mark.parametrize(
    "kw",
    [dict(do_sample=True), dict(do_sample=True, temperature=0.8, top_k=7), dict(do_sample=False)],
    ids=["sample", "temp_top_k", "greedy"],
)
def test_fast_sampler_plays_the_same_dialogues_as_generate(setup, kw):
    """Each assistant turn through `dvpo_lab.decode` (several stop ids: turn end and EOS) draws exactly the
    tokens `model.generate` draws from the same seed, across user turns, with the same sampler log-probs."""
    tok, policy, task = setup
    problems = task.train_problems(range(6))
    runs = {
        s: sample_dialogues(
            policy,
            tok,
            ScriptedUserTask(task),
            problems,
            max_new_tokens=300,
            seed=5,
            record_logprobs=True,
            sampler=s,
            **kw,
        )
        for s in ("fast", "hf")
    }
    fast, hf = runs["fast"], runs["hf"]
    for name in ("input_ids", "attention_mask", "response_ids", "response_mask"):
        assert torch.equal(getattr(fast, name), getattr(hf, name)), name
    assert fast.texts == hf.texts and torch.equal(fast.num_turns, hf.num_turns)
    if kw["do_sample"]:  # (a random model's greedy turn repeats one token up to the cap)
        assert int(fast.num_turns.max()) >= 2  # user turns were interleaved
    torch.testing.assert_close(fast.sampled_logprobs, hf.sampled_logprobs, atol=1e-5, rtol=0)
