"""Policy, critic and reference: one code path for the tiny built-from-config model and for hub models."""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dvpo_lab.config import ArchConfig, ModelConfig
from dvpo_lab.models.pretrained import AdapterDisabledReference, apply_lora, is_lora, torch_dtype
from dvpo_lab.models.tokenizer import build_char_tokenizer

log = logging.getLogger(__name__)


def build_tokenizer(cfg: ModelConfig, path: str | None = None) -> PreTrainedTokenizerBase:
    """The project's char tokenizer, or `AutoTokenizer` from `path` / `cfg.name_or_path` (left padding)."""
    if cfg.tokenizer == "char":
        return build_char_tokenizer()
    if cfg.tokenizer != "auto":
        raise ValueError(f"model.tokenizer={cfg.tokenizer!r}: expected 'char' or 'auto'")
    tok = AutoTokenizer.from_pretrained(path or cfg.name_or_path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _arch_config(arch: ArchConfig, tokenizer: PreTrainedTokenizerBase):
    if arch.family == "llama":
        from transformers import LlamaConfig as Cfg
    elif arch.family == "qwen2":
        from transformers import Qwen2Config as Cfg
    else:
        raise ValueError(f"model.arch.family={arch.family!r}: expected 'llama' or 'qwen2'")
    return Cfg(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_heads,
        max_position_embeddings=arch.max_position_embeddings,
        tie_word_embeddings=arch.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_policy(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, path: str | None = None) -> PreTrainedModel:
    """Load `path` (or `cfg.name_or_path`) with `from_pretrained`; with neither, build `cfg.arch` at random."""
    src = path or cfg.name_or_path
    dtype = torch_dtype(cfg.dtype)
    if src is not None:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            model = AutoModelForCausalLM.from_config(_arch_config(cfg.arch, tokenizer)).to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if cfg.gradient_checkpointing:
        # non-reentrant: works with frozen inputs (LoRA) and under FSDP; the critic's backbone, a copy of the
        # decoder, inherits it
        # transformers >= 5.24 renames the call (the old name warns, to be removed in v6); both take the same kwargs
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    return model


class ValueModel(nn.Module):
    """Critic: a transformer backbone plus a linear head with `n_out` outputs per token.

    `n_out = 1` is the scalar PPO critic; the quantile critic (H heads x N quantiles) reuses this class.
    """

    def __init__(self, backbone: nn.Module, hidden_size: int, n_out: int = 1, init_std: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, n_out)
        if init_std > 0:
            nn.init.normal_(self.head.weight, std=init_std)
        else:
            nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask, position_ids, num_positions: int) -> torch.Tensor:
        """Values of the last `num_positions` positions: `[B, num_positions, n_out]`."""
        h = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return self.head(h[:, -num_positions:].float())


def build_critic(policy: PreTrainedModel, n_out: int = 1, init_std: float = 0.0) -> ValueModel:
    """A separate backbone initialised from the policy's (as veRL does), with a fresh value head."""
    backbone = copy.deepcopy(policy.get_decoder())
    return ValueModel(backbone, policy.config.hidden_size, n_out=n_out, init_std=init_std)


def build_reference(policy: PreTrainedModel) -> PreTrainedModel:
    """Frozen copy of the initial policy; for a LoRA policy, the policy itself with its adapters disabled."""
    if is_lora(policy):
        return AdapterDisabledReference(policy)
    ref = copy.deepcopy(policy)
    ref.requires_grad_(False)
    ref.eval()
    return ref
