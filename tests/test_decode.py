"""The fast sampler (`dvpo_lab.decode`) draws exactly what `model.generate` draws from the same seed.

Tiny random models: the project's char-tokenizer Llama (model=tiny), a Qwen2, a Qwen3 and a grouped-query
Llama. The random models rarely emit the real EOS, so the tests declare the most frequent generated token
the EOS: rows then stop at different steps, which exercises the padding after EOS and the early stop.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from dvpo_lab.config import ModelConfig
from dvpo_lab.decode import unsupported_reason
from dvpo_lab.models.build import build_policy, build_tokenizer
from dvpo_lab.rollout import response_logprobs, sample

PROMPTS = [f"{a}+{b}=" for a, b in [(1, 2), (123, 456), (77, 8), (5, 999)] for _ in range(4)]
SETTINGS = {
    "greedy": dict(do_sample=False),
    "sample": dict(do_sample=True),
    "temp_top_k": dict(do_sample=True, temperature=0.7, top_k=5),
    "temp_top_p": dict(do_sample=True, temperature=1.3, top_p=0.8),
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(ModelConfig())


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return build_policy(ModelConfig(), tokenizer).eval()


def _random_model(kind: str, tokenizer):
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=4, **common)).eval()
    if kind == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(num_key_value_heads=2, head_dim=16, **common)).eval()
    return LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **common)).eval()  # grouped-query attention


def _frequent_token_as_eos(model, tokenizer, **kw):
    """A copy of the tokenizer whose EOS is the token the model generates most often with these sampling
    settings (so that rows stop early, at different steps)."""
    ro = sample(model, tokenizer, PROMPTS, max_new_tokens=12, seed=0, sampler="hf", **kw)
    new = ro.response_ids[ro.response_mask.bool()]
    tok = copy.deepcopy(tokenizer)
    tok.eos_token = tokenizer.convert_ids_to_tokens(int(new.mode().values))
    return tok


def _both(model, tok, **kw):
    fast = sample(model, tok, PROMPTS, max_new_tokens=16, seed=11, sampler="fast", return_logprobs=True, **kw)
    hf = sample(model, tok, PROMPTS, max_new_tokens=16, seed=11, sampler="hf", **kw)
    return fast, hf


def _assert_same_rollout(fast, hf):
    for name in ("input_ids", "attention_mask", "position_ids", "response_ids", "response_mask"):
        assert torch.equal(getattr(fast, name), getattr(hf, name)), name
    assert fast.texts == hf.texts


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_fast_sampler_matches_generate_tiny(tiny, tokenizer, setting):
    tok = _frequent_token_as_eos(tiny, tokenizer, **SETTINGS[setting])
    fast, hf = _both(tiny, tok, **SETTINGS[setting])
    _assert_same_rollout(fast, hf)
    lengths = fast.response_mask.sum(1)
    if setting != "greedy":  # rows end at different steps, some before the budget
        assert lengths.min() < lengths.max()
    assert (fast.response_ids[fast.response_mask == 0] == tok.pad_token_id).all()


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "llama_gqa"])
def test_fast_sampler_matches_generate_families(tokenizer, kind):
    model = _random_model(kind, tokenizer)
    assert unsupported_reason(model) is None
    for setting in ("greedy", "temp_top_p"):
        tok = _frequent_token_as_eos(model, tokenizer, **SETTINGS[setting])
        _assert_same_rollout(*_both(model, tok, **SETTINGS[setting]))


def test_min_new_tokens_and_early_stop(tiny, tokenizer):
    tok = _frequent_token_as_eos(tiny, tokenizer)
    fast, hf = _both(tiny, tok, min_new_tokens=6)
    _assert_same_rollout(fast, hf)
    assert (fast.response_mask.sum(1) >= 6).all()
    # the loop ends at the step the last row emitted EOS, as generate does: small batches often end early
    tok = _frequent_token_as_eos(tiny, tokenizer, temperature=0.5)
    lengths = []
    for seed in range(8):
        kw = dict(max_new_tokens=48, seed=seed, temperature=0.5)
        fast = sample(tiny, tok, PROMPTS[:3], sampler="fast", **kw)
        _assert_same_rollout(fast, sample(tiny, tok, PROMPTS[:3], sampler="hf", **kw))
        lengths.append(fast.response_len)
    assert min(lengths) < 48, lengths


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_equal_scoring_pass(tiny, tokenizer, temperature):
    tok = _frequent_token_as_eos(tiny, tokenizer)
    ro = sample(tiny, tok, PROMPTS, max_new_tokens=16, seed=3, temperature=temperature, return_logprobs=True)
    recomputed, _ = response_logprobs(tiny, ro, temperature)
    mask = ro.response_mask.bool()
    assert torch.allclose(ro.logprobs[mask], recomputed[mask], atol=1e-5, rtol=0)
    assert (ro.logprobs[~mask] == 0).all()


def test_unsupported_models_fall_back_to_generate(tiny, tokenizer):
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, pad_token_id=tokenizer.pad_token_id)
    ).eval()
    assert "GPT2LMHeadModel" in unsupported_reason(gpt2)
    ro = sample(gpt2, tokenizer, PROMPTS[:2], max_new_tokens=4, seed=0, return_logprobs=True)
    assert ro.logprobs is None and ro.response_ids.shape == (2, 4)
    penalised = copy.deepcopy(tiny)
    penalised.generation_config.repetition_penalty = 1.1
    assert "repetition_penalty" in unsupported_reason(penalised)
    # a hub generation_config.json that spells out the defaults adds no processor: the fast loop still runs
    spelled = copy.deepcopy(tiny)
    spelled.generation_config.update(repetition_penalty=1.0, min_length=0, renormalize_logits=False)
    assert unsupported_reason(spelled) is None


def test_lora_policy_runs_the_fast_loop_through_its_adapters(tiny, tokenizer):
    pytest.importorskip("peft")
    from dvpo_lab.config import LoraConfig
    from dvpo_lab.models.pretrained import apply_lora

    policy = apply_lora(copy.deepcopy(tiny), LoraConfig(enabled=True, r=4))
    with torch.no_grad():  # LoRA B starts at zero: give the adapters an effect to reproduce
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
    tok = _frequent_token_as_eos(policy, tokenizer, **SETTINGS["temp_top_p"])
    fast, hf = _both(policy, tok, **SETTINGS["temp_top_p"])
    _assert_same_rollout(fast, hf)
    assert fast.logprobs is not None  # the fast loop ran, not the fallback
    recomputed, _ = response_logprobs(policy, fast, 1.3)
    mask = fast.response_mask.bool()
    assert torch.allclose(fast.logprobs[mask], recomputed[mask], atol=1e-5, rtol=0)
    base, _ = _both(tiny, tok, **SETTINGS["temp_top_p"])
    assert not torch.equal(base.response_ids, fast.response_ids)  # the adapters changed what was drawn


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_training_step_is_the_same_with_either_sampler(smoke_cfg, algo):
    """The real loop, one seed: `generate` + recomputed old log-probs against the fast sampler + its own
    log-probs. Step 0 draws the same responses; every logged metric agrees to float rounding."""
    from dvpo_lab.run import run
    from tests.test_train import read_metrics, training_rows

    steps = {}
    for name, overrides in (
        ("hf", ["rollout.engine=hf", "rollout.reuse_sampler_logprobs=false"]),
        ("fast", ["rollout.engine=fast", "rollout.reuse_sampler_logprobs=true"]),
    ):
        cfg = smoke_cfg(f"algo={algo}", "total_steps=1", "eval_every=1", *overrides, name=name)
        run(cfg)
        steps[name] = training_rows(read_metrics(Path(cfg.paths.output_dir)))[0]
    hf, fast = steps["hf"], steps["fast"]
    assert hf.keys() == fast.keys()
    assert hf["response_length/mean"] == fast["response_length/mean"]
    assert hf["critic/score/mean"] == fast["critic/score/mean"]
    for key in hf:
        assert fast[key] == pytest.approx(hf[key], rel=1e-4, abs=1e-5), key


def test_bf16_autocast_recomputes_old_logprobs(smoke_cfg, monkeypatch):
    """Under `trainer.precision=bf16-mixed` the cached decode and the full forward round differently, so the step
    runs the old-log-prob pass over the rollout instead of reusing the sampler's log-probs (fp32: reused)."""
    import dvpo_lab.module as module_mod
    from dvpo_lab.run import run

    scored = []
    real = module_mod.response_logprobs

    def spy(model, ro, temperature, **kw):
        if not torch.is_grad_enabled():  # the old-log-prob pass (the update's forward keeps its graph)
            scored.append(torch.is_autocast_enabled("cpu"))
        return real(model, ro, temperature, **kw)

    monkeypatch.setattr(module_mod, "response_logprobs", spy)
    for precision in ("32-true", "bf16-mixed"):
        scored.clear()
        cfg = smoke_cfg(
            "algo=grpo",
            "algo.use_kl_loss=false",
            "total_steps=1",
            "eval_every=2",
            f"trainer.precision={precision}",
            name=precision,
        )
        run(cfg)
        assert scored == ([True] if precision == "bf16-mixed" else []), precision
