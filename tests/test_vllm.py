"""rollout.engine=vllm (`dvpo_lab.vllm_engine`): greedy tokens equal `generate`'s before and after a weight sync,
LoRA pushes only the adapted layers, the engine's log-probs match the trainer's, dialogues play through it, and a
`debug=smoke` run trains with it. These need vLLM (docs/vllm.md has the CPU recipe) and are skipped without it;
the start check for a missing vLLM runs where vLLM is absent. Each engine start costs ~5-10 s on a 2-core CPU.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys

import pytest
import torch

from dvpo_lab.config import LoraConfig, ModelConfig
from dvpo_lab.models.build import build_policy
from dvpo_lab.models.tokenizer import build_char_tokenizer
from dvpo_lab.multiturn import sample_dialogues
from dvpo_lab.rollout import response_logprobs, sample
from tests.conftest import ROOT, run_cli

NO_VLLM = 'vLLM is not installed (pip install -e ".[vllm]" on GPU; the CPU recipe is in docs/vllm.md)'
PROMPTS = [f"{100 + 7 * i}+{300 + 13 * i}=" for i in range(12)]


def _engine():
    pytest.importorskip("vllm", reason=NO_VLLM)
    from dvpo_lab.vllm_engine import VLLMSampler

    return VLLMSampler()


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def plain(tok):
    """(policy, its engine): a float32 model=tiny at random init, one engine for the module's tests."""
    engine = _engine()
    torch.manual_seed(0)
    policy = build_policy(ModelConfig(), tok)
    yield policy, engine
    engine.close()


def _greedy(policy, tok, sampler, prompts=PROMPTS, n=16):
    return sample(policy, tok, prompts, max_new_tokens=n, do_sample=False, sampler=sampler).response_ids


def _one_update(policy, tok, lr: float) -> None:
    """One AdamW step of next-token cross-entropy on a few answers: a real optimizer update of every trainable
    weight (for LoRA, the adapters only)."""
    batch = tok(["123+456=579\n", "5+5=10\n"], return_tensors="pt", padding=True)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr)
    policy.train()
    out = policy(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    out.loss.backward()
    opt.step()
    opt.zero_grad()
    policy.eval()


def test_greedy_equals_generate_before_and_after_a_weight_sync(plain, tok):
    policy, engine = plain
    before = _greedy(policy, tok, "hf")
    engine.update_weights(policy, 0)  # as the training module calls it: before the engine starts, a no-op
    assert torch.equal(_greedy(policy, tok, engine), before)  # the engine starts from the weights of step 0
    engine.update_weights(policy, 0)  # the same step: nothing to push
    assert engine.last_sync_s == 0.0 and engine.last_pushed == []

    _one_update(policy, tok, lr=0.05)
    after = _greedy(policy, tok, "hf")
    assert not torch.equal(after, before), "the update must change the greedy text for this test to mean anything"
    assert torch.equal(_greedy(policy, tok, engine), before)  # not synced yet: the engine still has the old weights
    engine.update_weights(policy, 1)
    assert engine.last_sync_s > 0 and len(engine.last_pushed) == len(policy.state_dict())
    assert torch.equal(_greedy(policy, tok, engine), after)
    engine.update_weights(policy, 1)  # the same step again: no push
    assert engine.last_sync_s == 0.0


def test_stop_token_ends_a_row_as_generate_does(plain, tok):
    """A stop id (EOS, or a dialogue's end-of-turn ids) is kept as the row's last token, padding after it."""
    policy, engine = plain
    enc = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    free = _greedy(policy, tok, "hf", n=12)
    stop = int(free[0, 3])  # a token the greedy text reaches: row 0 stops on it by position 3
    kw = dict(max_new_tokens=12, do_sample=False, temperature=1.0, top_k=0, top_p=1.0, min_new_tokens=0)
    got, _ = engine.generate(policy, tok, dict(enc), return_logprobs=False, stop_token_ids=[stop], **kw)
    ref = policy.generate(**enc, max_new_tokens=12, do_sample=False, eos_token_id=stop, pad_token_id=tok.pad_token_id)[
        :, enc["input_ids"].shape[1] :
    ]
    assert got.shape[1] < 12 or (got == stop).any(1).all()
    width = max(got.shape[1], ref.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=tok.pad_token_id)  # noqa: E731
    assert torch.equal(pad(got), pad(ref))
    assert (got[0, :4] == stop).any()


def test_sampled_logprobs_match_the_trainer_and_seeds_repeat(plain, tok):
    policy, engine = plain
    kw = dict(max_new_tokens=16, temperature=0.7, top_k=0, top_p=1.0, sampler=engine, return_logprobs=True)
    a = sample(policy, tok, PROMPTS, seed=3, **kw)
    trainer = response_logprobs(policy, a, temperature=0.7)[0] * a.response_mask
    assert (trainer - a.logprobs).abs().max() < 1e-4  # float32 on both sides: ~1e-6 measured
    assert torch.equal(sample(policy, tok, PROMPTS, seed=3, **kw).response_ids, a.response_ids)
    assert not torch.equal(sample(policy, tok, PROMPTS, seed=4, **kw).response_ids, a.response_ids)


def test_other_models_sample_with_the_fast_sampler(plain, tok):
    """The engine serves its policy only; another model given to it (the frozen reference that majority-vote
    noise samples from) gets the fast sampler's tokens."""
    policy, engine = plain
    assert engine.serves(policy)
    other = build_policy(ModelConfig(init_seed=1), tok)
    served = engine.n_requests
    kw = dict(max_new_tokens=8, seed=5, return_logprobs=True)
    ours = sample(other, tok, PROMPTS, sampler=engine, **kw)
    ref = sample(other, tok, PROMPTS, sampler="fast", **kw)
    assert torch.equal(ours.response_ids, ref.response_ids) and torch.equal(ours.logprobs, ref.logprobs)
    assert engine.n_requests == served


def test_dialogues_play_through_the_engine_as_with_generate(plain, tok):
    """Each assistant turn is one batch of engine requests stopping on the end-of-turn ids; greedy, the engine
    plays the same dialogues as `generate`."""
    from dvpo_lab.tasks.dialogue import DialogueTask

    policy, engine = plain
    task = DialogueTask(n_test=8, n_sft=4)
    problems = task.train_problems(range(6))
    kw = dict(max_new_tokens=120, do_sample=False, seed=0)
    served = engine.n_requests
    ours = sample_dialogues(policy, tok, task, problems, sampler=engine, **kw)
    assert engine.n_requests - served >= len(problems)  # every first turn went through the engine
    ref = sample_dialogues(policy, tok, task, problems, sampler="hf", **kw)
    assert ours.texts == ref.texts
    assert torch.equal(ours.response_ids, ref.response_ids) and torch.equal(ours.response_mask, ref.response_mask)
    assert int(ours.num_turns.max()) >= 1


def test_lora_sync_pushes_only_the_adapted_layers(tok):
    pytest.importorskip("peft", reason="peft is not installed (pip install -e '.[lora]')")
    from dvpo_lab.models.pretrained import apply_lora

    engine = _engine()
    torch.manual_seed(0)
    policy = apply_lora(build_policy(ModelConfig(), tok), LoraConfig(enabled=True, r=4, target_modules=["q_proj"]))
    try:
        before = _greedy(policy, tok, "hf")
        assert torch.equal(_greedy(policy, tok, engine), before)
        _one_update(policy, tok, lr=0.2)  # B starts at zero: one step makes the adapters count
        after = _greedy(policy, tok, "hf")
        assert not torch.equal(after, before)
        engine.update_weights(policy, 1)
        layers = policy.config.num_hidden_layers
        # q_proj is adapted; k_proj and v_proj ride along because vLLM fuses the three into one qkv_proj layer
        expected = {
            f"model.layers.{i}.self_attn.{p}.weight" for i in range(layers) for p in ("q_proj", "k_proj", "v_proj")
        }
        assert set(engine.last_pushed) == expected
        assert torch.equal(_greedy(policy, tok, engine), after)
    finally:
        engine.close()


def test_smoke_run_trains_with_the_vllm_engine(tmp_path):
    """A 3-step `debug=smoke` run with the engine; the mismatch between its log-probs and the trainer's is logged
    every step and tiny in float32."""
    pytest.importorskip("vllm", reason=NO_VLLM)
    r = run_cli(["debug=smoke", "rollout.engine=vllm", "logger=csv"], tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (metrics,) = list(tmp_path.glob("**/csv/**/metrics.csv"))
    rows = [row for row in csv.DictReader(metrics.open()) if row.get("timing_s/gen")]
    assert len(rows) == 3
    diffs = [float(row["rollout/logprob_diff_max"]) for row in rows]
    assert all(math.isfinite(d) and d < 1e-4 for d in diffs), diffs
    assert all(float(row["timing_s/update_weights"]) >= 0 for row in rows)


FSDP_LORA = ["trainer=fsdp", "trainer.precision=32-true", "model.lora.enabled=true"]


@pytest.mark.parametrize(
    "trainer",
    [
        ["trainer=ddp"],
        ["trainer=fsdp", "trainer.precision=32-true"],
        pytest.param(FSDP_LORA, marks=pytest.mark.slow),
    ],
    ids=["ddp", "fsdp", "fsdp-lora"],
)
def test_two_training_processes_each_run_an_engine(tmp_path, trainer):
    """`trainer.devices=2` on CPU (gloo): each rank starts its own engine in vLLM's `external_launcher` mode, inside
    the trainer's process group, from dummy weights that the policy's then replace (under FSDP read from the shards
    one tensor at a time, no full gather; LoRA: merged, then only the adapted layers); the engine's log-probs match
    the trainer's every step, which they could not if a rank's engine held other weights than its trainer.
    ~40 s each on a 2-core CPU."""
    pytest.importorskip("vllm", reason=NO_VLLM)
    if "model.lora.enabled=true" in trainer:
        pytest.importorskip("peft", reason="peft is not installed (pip install -e '.[lora]')")
    args = ["debug=smoke", "rollout.engine=vllm", "logger=csv", "trainer.accelerator=cpu", "trainer.devices=2"]
    r = run_cli([*args, *trainer], tmp_path, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    (metrics,) = list(tmp_path.glob("**/csv/**/metrics.csv"))
    rows = [row for row in csv.DictReader(metrics.open()) if row.get("timing_s/gen")]
    assert len(rows) == 3
    diffs = [float(row["rollout/logprob_diff_max"]) for row in rows]
    assert all(math.isfinite(d) and d < 1e-4 for d in diffs), diffs
    assert all(float(row["timing_s/update_weights"]) > 0 for row in rows[1:])  # a push after each update
    (run_dir,) = {p.parent for p in tmp_path.glob("**/__main__.log")}
    for rank, name in enumerate(["__main__.log", "train_ddp_process_1.log"]):
        log = (run_dir / name).read_text()
        assert f"external_launcher: rank {rank} of 2" in log, name


def test_missing_vllm_is_one_line_at_start(tmp_path):
    """Where vLLM is not installed (simulated where it is: `sys.modules["vllm"] = None` makes it unfindable), a
    run with rollout.engine=vllm stops at the start checks with one line naming both install routes."""
    prelude = "import sys; sys.modules['vllm'] = None; from dvpo_lab.__main__ import main; main()"
    cmd = [sys.executable, "-c", prelude, "debug=smoke", "rollout.engine=vllm", f"paths.log_dir={tmp_path}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    lines = [line for line in out.splitlines() if "rollout.engine=vllm needs vLLM" in line]
    assert len(lines) == 1 and 'pip install -e ".[vllm]"' in lines[0] and "docs/vllm.md" in lines[0], out[-2000:]
    assert "Traceback" not in out
