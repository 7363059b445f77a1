"""Batched sampling for Llama-style decoders without `generate`'s per-token framework work.

`model.generate` spends most of a small model's decode step in Python: logits processors, stopping criteria,
cache objects, a fresh 4-D attention mask and `prepare_inputs_for_generation` on every token. This loop runs
the model's own modules (projections, norms, MLP, rotary embedding) over a KV cache allocated once for the
whole response, with one boolean key mask that grows by a column per step, and stops as soon as every row
has emitted EOS.

It reproduces `generate` token for token: the same processing order on float32 logits (EOS suppression for
`min_new_tokens`, then temperature, top-k, top-p), one `torch.multinomial` over the whole batch per step
(finished rows included, so the RNG is consumed identically) and pad written after EOS. Models or generation
settings it does not cover are reported by `unsupported_reason`; the caller then falls back to `generate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, PreTrainedModel

# Decoder-only families whose layers are (input norm -> attention with RoPE -> residual -> norm -> MLP ->
# residual); Qwen3 adds per-head q/k norms, handled below.
SUPPORTED = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")

# generation_config fields that add logits processors `generate` would apply and this loop does not.
_PROCESSOR_FIELDS = (
    "repetition_penalty",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "min_length",
    "min_p",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "sequence_bias",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "suppress_tokens",
    "begin_suppress_tokens",
    "guidance_scale",
    "exponential_decay_length_penalty",
    "remove_invalid_values",
    "watermarking_config",
    "renormalize_logits",
)


@dataclass
class Decoded:
    tokens: torch.Tensor  # [B, T] long: drawn tokens, pad after each row's EOS; T <= max_new_tokens
    logprobs: torch.Tensor | None  # [B, T] float32: log softmax(logits / temperature) of the drawn tokens


def unsupported_reason(model: PreTrainedModel) -> str | None:
    """Why `decode` cannot stand in for `model.generate` on this model (None when it can)."""
    # trainer=fsdp: fully_shard swaps the class for its subclass `FSDP<name>`; the layers are the same
    name = type(model).__name__.removeprefix("FSDP")
    if name not in SUPPORTED:
        return f"{name} is not one of {', '.join(SUPPORTED)}"
    cfg = model.config
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return "sliding-window attention layers"
    # transformers 5 names it `rope_parameters` (rope_type + rope_theta, always set); `rope_scaling` stays as an alias
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type")) in ("dynamic", "longrope"):
        # these rescale with the longest position seen so far; the loop computes all positions up front
        return f"rope type {rope.get('rope_type', rope.get('type'))!r} (config.rope_parameters)"
    if cfg._attn_implementation not in ("sdpa", "eager"):
        return f"attn_implementation={cfg._attn_implementation!r}"
    changed = [f for f in _PROCESSOR_FIELDS if _is_set(f, getattr(model.generation_config, f, None))]
    if changed:
        return f"generation_config sets {', '.join(changed)}"
    return None


def _generation_defaults() -> dict:
    """The value each generation field takes when neither the model nor the caller sets it.

    transformers 5 leaves every field of a fresh `GenerationConfig` at None and fills the unset ones from
    `GenerationConfig._get_default_generation_params()` inside `generate` (e.g. repetition_penalty 1.0); transformers 4
    wrote those values into `GenerationConfig()` itself.
    """
    defaults = getattr(GenerationConfig, "_get_default_generation_params", None)
    return defaults() if defaults is not None else GenerationConfig().to_dict()


def _is_set(field: str, value) -> bool:
    """Whether `generate` adds the logits processor of `field` for this value: None, False and the global default
    add none (a hub `generation_config.json` that spells out `repetition_penalty: 1.0` keeps the fast loop)."""
    return value is not None and value is not False and value != _generation_defaults().get(field)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _filter_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """HF `TopKLogitsWarper`: drop every logit below the k-th largest (ties kept)."""
    kth = torch.topk(scores, min(k, scores.shape[-1]))[0][..., -1:]
    return scores.masked_fill(scores < kth, -float("inf"))


def _filter_top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """HF `TopPLogitsWarper`: keep the smallest set of most likely tokens whose probability reaches p."""
    sorted_logits, sorted_idx = torch.sort(scores, descending=False)
    drop = sorted_logits.softmax(-1).cumsum(-1) <= (1 - p)
    drop[..., -1:] = False
    return scores.masked_fill(drop.scatter(-1, sorted_idx, drop), -float("inf"))


class _Layers:
    """The decoder's modules and KV cache `[n_layers] x [B, H_kv, P + T_max, D]`, filled slot by slot."""

    def __init__(self, model: PreTrainedModel, batch: int, slots: int) -> None:
        cfg = model.config
        self.base = model.model
        self.lm_head = model.lm_head
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        p = self.base.embed_tokens.weight
        shape = (batch, self.n_kv, slots, self.head_dim)
        self.k = [torch.empty(shape, dtype=p.dtype, device=p.device) for _ in self.base.layers]
        self.v = [torch.empty(shape, dtype=p.dtype, device=p.device) for _ in self.base.layers]

    def forward(
        self, ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int, mask: torch.Tensor
    ) -> torch.Tensor:
        """Run tokens `ids [B, s]` at cache slots `start : start + s`; float32 logits `[B, V]` of the last one.

        Args:
            cos, sin: `[B, s, D]` rotary tables of the tokens' positions.
            mask: `[B, 1, s, start + s]` bool, True where a query may attend to a key.
        """
        B, s = ids.shape
        end = start + s
        x = self.base.embed_tokens(ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        for i, layer in enumerate(self.base.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(B, s, self.n_heads, self.head_dim)
            k = attn.k_proj(h).view(B, s, self.n_kv, self.head_dim)
            if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm per head before RoPE
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            self.k[i][:, :, start:end] = k * cos + _rotate_half(k) * sin
            self.v[i][:, :, start:end] = attn.v_proj(h).view(B, s, self.n_kv, self.head_dim).transpose(1, 2)
            keys, values = self.k[i][:, :, :end], self.v[i][:, :, :end]
            if self.n_kv != self.n_heads:  # grouped-query attention: HF's repeat_kv
                keys = keys.repeat_interleave(self.n_heads // self.n_kv, dim=1)
                values = values.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attn.scaling)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(B, s, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.lm_head(self.base.norm(x[:, -1])).float()


@torch.no_grad()
def decode(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_new_tokens: int = 0,
    return_logprobs: bool = False,
) -> Decoded:
    """Sample up to `max_new_tokens` tokens after left-padded prompts `input_ids [B, P]`, as `generate` does.

    Draws from the global torch RNG (fork and seed it around the call, as `rollout.sample` does). The model
    must pass `unsupported_reason`; it runs in eval mode (no dropout, e.g. LoRA's) and is restored after.
    Attention is always torch's SDPA: the kernel `generate` uses on an `sdpa` model (the default; the tests
    find identical tokens), equal to float rounding on an `eager` one.

    Returns:
        `Decoded`: tokens `[B, T]` with T the step at which every row had emitted EOS (or max_new_tokens),
        and with `return_logprobs`, the log-probs of those tokens under softmax(logits / temperature) of
        the unfiltered logits (1.0 for greedy), i.e. what the scoring pass recomputes.
    """
    was_training = model.training
    model.eval()
    try:
        return _decode(
            model,
            input_ids,
            attention_mask,
            max_new_tokens,
            eos_token_id,
            pad_token_id,
            do_sample,
            temperature,
            top_k,
            top_p,
            min_new_tokens,
            return_logprobs,
        )
    finally:
        model.train(was_training)


def _decode(
    model,
    input_ids,
    attention_mask,
    max_new_tokens,
    eos_token_id,
    pad_token_id,
    do_sample,
    temperature,
    top_k,
    top_p,
    min_new_tokens,
    return_logprobs,
) -> Decoded:
    B, P = input_ids.shape
    device = input_ids.device
    stop = torch.as_tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=device)
    net = _Layers(model, B, P + max_new_tokens)
    rotary = net.base.rotary_emb
    keys_ok = torch.zeros(B, P + max_new_tokens, dtype=torch.bool, device=device)
    keys_ok[:, :P] = attention_mask.bool()
    # positions as `generate` computes them: count of real tokens before, pads at 1; then one more per step
    prompt_pos = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
    new_pos = prompt_pos[:, -1:] + 1 + torch.arange(max_new_tokens, device=device)
    probe = net.base.embed_tokens.weight  # rotary_emb reads only its dtype and device
    cos_p, sin_p = rotary(probe, prompt_pos)
    cos_n, sin_n = rotary(probe, new_pos)  # [B, T_max, D], computed once for every step

    # prefill: causal and padding mask; each query also sees itself so that pad rows stay finite
    causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
    mask = (causal & keys_ok[:, None, :P]) | torch.eye(P, dtype=torch.bool, device=device)
    logits = net.forward(input_ids, cos_p, sin_p, 0, mask.unsqueeze(1))

    tokens = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(B, max_new_tokens, device=device) if return_logprobs else None
    unfinished = torch.ones(B, dtype=torch.bool, device=device)
    scale = temperature if do_sample else 1.0
    T = max_new_tokens
    for t in range(max_new_tokens):
        scores = logits
        if t < min_new_tokens:  # HF MinNewTokensLengthLogitsProcessor, before the warpers
            scores = scores.clone()
            scores[:, stop] = -float("inf")
        if do_sample:
            if temperature != 1.0:
                scores = scores / temperature
            if top_k:
                scores = _filter_top_k(scores, top_k)
            if top_p < 1.0:
                scores = _filter_top_p(scores, top_p)
            nxt = torch.multinomial(F.softmax(scores, -1), num_samples=1).squeeze(1)
        else:
            nxt = torch.argmax(scores, -1)
        nxt = torch.where(unfinished, nxt, pad_token_id)
        tokens[:, t] = nxt
        if logprobs is not None:
            lp = F.log_softmax(logits / scale if scale != 1.0 else logits, -1)
            logprobs[:, t] = lp.gather(1, nxt[:, None]).squeeze(1)
        unfinished &= ~torch.isin(nxt, stop)  # any of the stop ids ends a row, as in `generate`
        if not unfinished.any() or t == max_new_tokens - 1:
            T = t + 1
            break
        keys_ok[:, P + t] = True
        logits = net.forward(
            nxt[:, None], cos_n[:, t : t + 1], sin_n[:, t : t + 1], P + t, keys_ok[:, None, None, : P + t + 1]
        )
    return Decoded(tokens[:, :T], logprobs[:, :T] if logprobs is not None else None)
