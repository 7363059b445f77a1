"""Prompt truncation is counted, logged and warned about, every evaluation sees the
training prompts, and `response_length/clip_ratio` is measured against the generation budget."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch

from dvpo_lab import rollout as rollout_mod
from dvpo_lab.config import ModelConfig
from dvpo_lab.models.build import build_policy
from dvpo_lab.models.tokenizer import build_char_tokenizer
from dvpo_lab.module import RLModule
from dvpo_lab.multiturn import sample_dialogues
from dvpo_lab.rollout import clipped_responses, encode_prompts, sample
from dvpo_lab.run import run
from dvpo_lab.tasks.arith import ArithTask
from dvpo_lab.tasks.dialogue import DialogueTask
from tests.conftest import compose_cfg

EOS = 2


class _Records(logging.Handler):
    """Collects the records of one logger directly (whatever the root logger's handlers are)."""

    def __init__(self, name: str):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Each test sees the once-per-process warnings as not yet given."""
    monkeypatch.setattr(rollout_mod, "_warned", set())


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tok = build_char_tokenizer()
    return tok, build_policy(ModelConfig(), tok)


# --- response_length/clip_ratio: responses that hit the budget without EOS -----------------------------------


def _responses(lengths: list[int], eos: list[bool], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded responses of the given lengths (token 5 everywhere, EOS last where asked; pad 0)."""
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width)
    for i, (n, e) in enumerate(zip(lengths, eos)):
        ids[i, :n], mask[i, :n] = 5, 1.0
        if e:
            ids[i, n - 1] = EOS
    return ids, mask


def test_responses_ending_before_the_budget_are_not_clipped():
    """16 responses ending in EOS within 10 tokens under a 64-token cap: 0.0 (reading `mask[:, -1] > 0` would
    count the batch's longest response as clipped: 0.0625)."""
    lengths = [10] + [1 + i % 9 for i in range(15)]  # one of them is the batch's longest, at 10 tokens
    ids, mask = _responses(lengths, [True] * 16, width=10)
    clipped = clipped_responses(ids, mask, EOS, max_new_tokens=64)
    assert clipped.dtype == torch.bool and clipped.shape == (16,)
    assert clipped.float().mean().item() == 0.0
    assert (mask[:, -1] > 0).float().mean().item() == 0.0625  # what was logged before


def test_responses_cut_by_the_budget_are_clipped_but_eos_on_the_budget_is_not():
    ids, mask = _responses([64, 64, 64, 10, 63], [False, True, False, True, False], width=64)
    clipped = clipped_responses(ids, mask, EOS, max_new_tokens=64)
    # cut, EOS exactly at the cap (ended on its own), cut, ended early, stopped one short of the cap
    assert clipped.tolist() == [True, False, True, False, False]
    assert clipped_responses(ids[:0], mask[:0], EOS, 64).shape == (0,)


def test_sample_reports_which_responses_the_budget_cut(tiny):
    """The sampler's `response_clipped` is the pure function on its own output, against `max_new_tokens`."""
    tok, policy = tiny
    for budget in (3, 40):
        ro = sample(policy, tok, ["12+34=", "5+6="] * 4, max_new_tokens=budget, seed=1)
        n = ro.response_mask.sum(-1)
        last = ro.response_ids.gather(1, (n.long() - 1).unsqueeze(-1)).squeeze(-1)
        expected = (n == budget) & (last != tok.eos_token_id)
        assert ro.response_clipped.tolist() == expected.tolist()
    ro = sample(policy, tok, ["12+34="] * 8, max_new_tokens=3, seed=1)
    assert ro.response_clipped.any()  # an untrained model rarely says EOS within 3 tokens


def test_dialogue_clip_ratio_counts_episodes_the_budget_cut(tiny):
    """A dialogue is clipped when its tokens (assistant and user) reached the budget while it was still going;
    under the task's own budget no episode is, and the batch's longest dialogue is not counted as clipped."""
    tok, policy = tiny
    task = DialogueTask(n_test=20, n_sft=8)
    problems = task.train_problems(range(4))
    full = sample_dialogues(policy, tok, task, problems, max_new_tokens=task.max_response_len, seed=3)
    assert full.response_clipped.tolist() == [False] * 4
    short = sample_dialogues(policy, tok, task, problems, max_new_tokens=5, seed=3)
    n = short.response_lengths
    assert short.response_clipped.any()
    assert all(not c or int(k) == 5 for c, k in zip(short.response_clipped.tolist(), n))  # clipped -> at budget


# --- prompt truncation: prompt_length/* metrics --------------------------------------------------------------


def test_encode_prompts_counts_truncation_and_warns_once(fresh_warnings):
    tok = build_char_tokenizer()
    with _Records("dvpo_lab.rollout") as rec:
        enc, clipped = encode_prompts(tok, ["abc", "abcdefghijkl", "abcdefghij"], max_prompt_len=10)
        assert clipped.tolist() == [False, True, False]
        assert enc["input_ids"].shape == (3, 10) and enc["attention_mask"].sum(-1).tolist() == [3, 10, 10]
        assert tok.decode(enc["input_ids"][1]) == "cdefghijkl"  # keeps the end of the prompt
        encode_prompts(tok, ["x" * 30] * 4, max_prompt_len=10)  # truncated again: no second warning
        _, none = encode_prompts(tok, ["abc"], max_prompt_len=None)
    assert none.tolist() == [False]
    assert len(rec.records) == 1
    msg = rec.records[0].getMessage()
    assert "1 of 3 prompts" in msg and "prompt budget of 10 tokens" in msg
    assert "rollout.max_new_tokens" in msg and "context" in msg and "prompt_length/clip_ratio" in msg


@pytest.mark.parametrize("budget", [0, -88])
def test_no_prompt_budget_is_refused(budget, tiny):
    tok, policy = tiny
    with pytest.raises(ValueError, match=f"max_prompt_len={budget}.*rollout.max_new_tokens"):
        encode_prompts(tok, ["abc"], max_prompt_len=budget)
    task = DialogueTask(n_test=20, n_sft=8)
    with pytest.raises(ValueError, match="rollout.max_new_tokens"):
        sample_dialogues(policy, tok, task, task.train_problems(range(1)), max_new_tokens=5, max_prompt_len=budget)


def test_dialogue_prompts_are_truncated_counted_and_warned(tiny, fresh_warnings):
    tok, policy = tiny
    task = DialogueTask(n_test=20, n_sft=8)
    problems = task.train_problems(range(3))
    longest = max(len(tok(p.prompt, add_special_tokens=False)["input_ids"]) for p in problems)
    with _Records("dvpo_lab.rollout") as rec:
        ro = sample_dialogues(policy, tok, task, problems, max_new_tokens=4, max_prompt_len=longest - 1, seed=0)
    assert ro.prompt_clipped.any() and int(ro.prompt_lengths.max()) == longest - 1
    assert len(rec.records) == 1 and f"budget of {longest - 1} tokens" in rec.records[0].getMessage()


def _metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return [r for r in csv.DictReader(f) if r.get("training/step")]


def test_rl_step_logs_prompt_truncation_and_every_evaluation_sees_the_training_prompts(
    tmp_path, monkeypatch, fresh_warnings
):
    """Prompt truncation end to end: with a prompt budget of 6 tokens (context 24 - 18 response tokens) every
    8-character arith prompt loses 2 characters, in the rollout, in RL validation and in the warm-start's
    accuracy checks alike; the step logs prompt_length/* and the run warns once. Also the progress bar shows
    `reward` = the noisy trained-on score and `reward_clean`."""
    seen: list[tuple[int | None, tuple[int, ...]]] = []
    real_encode = rollout_mod.encode_prompts

    def spy(tokenizer, prompts, max_prompt_len=None):
        enc, clipped = real_encode(tokenizer, prompts, max_prompt_len)
        seen.extend(
            (max_prompt_len, tuple(row[m.bool()].tolist())) for row, m in zip(enc["input_ids"], enc["attention_mask"])
        )
        return enc, clipped

    monkeypatch.setattr(rollout_mod, "encode_prompts", spy)
    bar: dict[str, float] = {}
    real_log = RLModule.log

    def log(self, name, value, *args, prog_bar=False, **kwargs):
        if prog_bar:
            bar[name] = float(value)
        return real_log(self, name, value, *args, prog_bar=prog_bar, **kwargs)

    monkeypatch.setattr(RLModule, "log", log)
    overrides = [
        "debug=smoke",
        "logger=csv",
        "algo=grpo",
        "noise=flip0.3",
        "total_steps=1",
        "eval_every=1",
        "model.arch.max_position_embeddings=24",
        "rollout.max_new_tokens=18",
        "sft.eval_every=4",
    ]
    cfg = compose_cfg(overrides, tmp_path / "run", tmp_path / "cache")
    with _Records("dvpo_lab.rollout") as rec:
        run(cfg)

    assert {budget for budget, _ in seen} == {6}  # SFT accuracy checks, RL validation and the rollout
    assert {len(ids) for _, ids in seen} == {6}
    assert len([r for r in rec.records if "prompt budget" in r.getMessage()]) == 1
    (row,) = _metric_rows(Path(cfg.paths.output_dir))
    assert float(row["prompt_length/clip_ratio"]) == 1.0
    assert float(row["prompt_length/mean"]) == float(row["prompt_length/max"]) == 6.0
    for key in ("response_length/clip_ratio", "response_length/max", "response_length/min", "prompt_length/min"):
        assert key in row
    assert float(row["response_length/min"]) <= float(row["response_length/mean"]) <= 18
    assert bar["reward"] == pytest.approx(float(row["critic/score/mean"]))
    assert bar["reward_clean"] == pytest.approx(float(row["critic/score_clean/mean"]))


def test_warm_start_demonstrations_longer_than_the_context_keep_their_end(tiny):
    """The warm-start's demonstrations are cut as RL prompts are (prompt start first), counted and warned."""
    from dvpo_lab.sft import _encode_demos

    tok, _ = tiny
    task = ArithTask(n_test=4, n_sft=8)
    demos = task.sft_problems()
    full = _encode_demos(tok, task, demos)
    context = min(len(ids) for ids, _ in full) - 3
    with _Records("dvpo_lab.sft") as rec:
        cut = _encode_demos(tok, task, demos, context=context)
    assert len(rec.records) == 1 and "8 of 8" in rec.records[0].getMessage()
    for (ids, mask), (ids0, mask0) in zip(cut, full):
        k = len(ids0) - context
        assert len(ids) == context and ids == ids0[k:] and mask == mask0[k:]
        assert sum(mask) == sum(mask0)  # the solution is whole
    with _Records("dvpo_lab.sft") as rec:
        assert _encode_demos(tok, task, demos, context=max(len(i) for i, _ in full)) == full and not rec.records
