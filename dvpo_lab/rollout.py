"""Batched sampling with a KV cache, and the per-token log-prob / entropy pass over (prompt, response).

Layout of a rollout: prompts are left-padded to P tokens, responses right-padded to T tokens, so
`input_ids = [B, P + T]`; position ids come from the attention mask, so padding never shifts positions.

The rollout engine is `rollout.engine`: a `_target_` node (`{_target_: dvpo_lab.rollout.FastSampler}`, the
default) or the name of a built-in one (`rollout.engine=hf`). Two built-ins draw the same tokens from the same seed:
`fast` (`FastSampler`: `dvpo_lab.decode`, no per-token framework work) and `hf` (`HFSampler`: `model.generate`);
`fast` falls back to `hf` for models it does not cover. A third, `vllm` (`dvpo_lab.vllm_engine`, docs/vllm.md), runs a
vLLM engine beside the trainer and holds its own copy of the weights (`Sampler.update_weights`). A user's engine
subclasses `Sampler`.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dvpo_lab.algos import entropy_from_logits
from dvpo_lab.decode import decode, unsupported_reason
from dvpo_lab.models.pretrained import is_lora

log = logging.getLogger(__name__)
_fallbacks_logged: set[str] = set()
_warned: set[str] = set()  # one-per-process warnings already given (e.g. "prompt_truncation")


@dataclass
class Rollout:
    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T], 0 on left prompt padding and after EOS
    position_ids: torch.Tensor  # [B, P + T]
    response_ids: torch.Tensor  # [B, T]
    response_mask: torch.Tensor  # [B, T] float, 1 on generated tokens up to and including EOS
    texts: list[str]  # decoded responses, special tokens removed
    # [B, T] float32 log-probs of the response tokens under softmax(logits / temperature), as the sampler
    # computed them (0 on padding); None unless asked for and the fast sampler ran
    logprobs: torch.Tensor | None = None
    # [B] bool: prompts that lost their first tokens to the prompt budget `max_prompt_len`
    prompt_clipped: torch.Tensor | None = None
    # [B] bool: responses stopped by the generation budget `max_new_tokens` before they ended
    response_clipped: torch.Tensor | None = None

    @property
    def response_len(self) -> int:
        return self.response_ids.shape[1]

    @property
    def prompt_lengths(self) -> torch.Tensor:
        """`[B]` prompt tokens each row's response was sampled from (after any truncation)."""
        return self.attention_mask[:, : self.input_ids.shape[1] - self.response_len].sum(-1)

    @property
    def response_lengths(self) -> torch.Tensor:
        """`[B]` response tokens each row holds: generated tokens, and a dialogue's user replies too."""
        return self.attention_mask[:, self.input_ids.shape[1] - self.response_len :].sum(-1)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def prompt_budget(policy: PreTrainedModel, max_new_tokens: int) -> int:
    """Prompt tokens that fit beside a `max_new_tokens`-token response in the policy's context window: every
    rollout and every evaluation (RL validation, the warm-start's accuracy checks) truncates prompts to it."""
    return policy.config.max_position_embeddings - max_new_tokens


def check_prompt_budget(max_prompt_len: int | None) -> None:
    """Raise ValueError when the prompt budget (model context - rollout.max_new_tokens) leaves no prompt token."""
    if max_prompt_len is not None and max_prompt_len <= 0:
        raise ValueError(
            f"prompt budget max_prompt_len={max_prompt_len} tokens (model context - "
            "rollout.max_new_tokens) leaves no room for the prompt; lower rollout.max_new_tokens"
        )


def warn_prompts_truncated(n_clipped: int, n_prompts: int, max_prompt_len: int) -> None:
    """Warn, once per process, that prompts lost their first tokens to the prompt budget."""
    if n_clipped == 0 or "prompt_truncation" in _warned:
        return
    _warned.add("prompt_truncation")
    log.warning(
        "%d of %d prompts are longer than the prompt budget of %d tokens (model context - "
        "rollout.max_new_tokens) and lose their first tokens; raise the model's context length or lower "
        "rollout.max_new_tokens (logged every RL step as prompt_length/clip_ratio; warned once)",
        n_clipped,
        n_prompts,
        max_prompt_len,
    )


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_prompt_len: int | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Left-padded prompt batch; a prompt longer than `max_prompt_len` tokens keeps its last `max_prompt_len`
    (where the question ends and the answer starts), and is counted and warned about (`warn_prompts_truncated`).

    Returns:
        ({"input_ids": [B, P], "attention_mask": [B, P]} with P <= max_prompt_len, clipped [B] bool).
    Raises:
        ValueError: `max_prompt_len` <= 0.
    """
    check_prompt_budget(max_prompt_len)
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    lengths = enc["attention_mask"].sum(-1)
    clipped = lengths > max_prompt_len if max_prompt_len is not None else torch.zeros_like(lengths, dtype=torch.bool)
    if max_prompt_len is not None and enc["input_ids"].shape[1] > max_prompt_len:
        enc = {k: v[:, -max_prompt_len:] for k, v in enc.items()}
        warn_prompts_truncated(int(clipped.sum()), len(prompts), max_prompt_len)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, clipped


def clipped_responses(
    response_ids: torch.Tensor, response_attn: torch.Tensor, eos_token_id: int, max_new_tokens: int
) -> torch.Tensor:
    """Which responses the generation budget cut off: they hold `max_new_tokens` tokens and the last is not
    EOS (a response whose EOS falls exactly on the budget ended on its own). `response_length/clip_ratio` is its
    mean: measured against the configured budget (as veRL, which pads to it), not the batch's longest response.
    Dialogues record the same in the sampler (`multiturn.sample_dialogues`).

    Args:
        response_ids: [B, T] right-padded responses, response_attn: [B, T] {0, 1}, 1 on the response's tokens,
        eos_token_id: the tokenizer's EOS, max_new_tokens: the budget.
    Returns:
        [B] bool.
    """
    lengths = response_attn.long().sum(-1)
    last = response_ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (lengths >= max_new_tokens) & (last != eos_token_id)


class Sampler(abc.ABC):
    """A rollout engine: response tokens for left-padded prompts, under the caller's seeded torch RNG.

    Attributes:
        name: how logs and `fast_sampler_reason` name it.
        provides_logprobs: whether `generate(..., return_logprobs=True)` returns the log-probs of its tokens
            (at the rollout temperature); the module then asks for them every step, to log the mismatch with
            the trainer's (`rollout/logprob_diff_*`) and for `algo.rollout_is`.
    """

    name = "sampler"
    provides_logprobs = False
    # an engine with its own copy of the weights (vllm): `update_weights` reads them, so a sharded policy is not
    # gathered whole for its rollouts
    holds_weights = False
    # `generate` takes `stop_token_ids` (a dialogue's end-of-turn ids) and plays each assistant turn itself
    takes_stop_ids = False

    def fallback_reason(self, policy: PreTrainedModel) -> str | None:
        """Why this engine will not run its own loop for `policy` (None: it will); the log-probs it returns are the
        fast sampler's only when this is None."""
        return None

    def update_weights(self, policy: PreTrainedModel, step: int) -> None:
        """Bring an engine that holds its own copy of the weights (vllm) up to `policy`'s; the training module calls
        it before every rollout and every evaluation with its optimizer-step count `step`, and an engine syncs only
        when `step` changed since its last sync. Engines that run the policy itself (fast, hf): nothing to do."""
        return None

    @abc.abstractmethod
    def generate(
        self,
        policy: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        enc: dict[str, torch.Tensor],
        *,
        max_new_tokens: int,
        do_sample: bool,
        temperature: float,
        top_k: int,
        top_p: float,
        min_new_tokens: int,
        return_logprobs: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sample.

        Args:
            enc: `input_ids`, `attention_mask` `[B, P]` on the policy's device, left-padded.
        Returns:
            (response tokens `[B, T]` with T <= max_new_tokens, their log-probs `[B, T]` float32 or None).
        """


class HFSampler(Sampler):
    """`model.generate` (any model transformers can generate with)."""

    name = "hf"
    provides_logprobs = False  # generate's scores are not kept

    def fallback_reason(self, policy: PreTrainedModel) -> str | None:
        return "rollout.engine=hf"

    def generate(
        self,
        policy,
        tokenizer,
        enc,
        *,
        max_new_tokens,
        do_sample,
        temperature,
        top_k,
        top_p,
        min_new_tokens,
        return_logprobs,
    ):
        return _hf_generate(
            policy, tokenizer, enc, max_new_tokens, do_sample, temperature, top_k, top_p, min_new_tokens
        ), None


class FastSampler(Sampler):
    """`dvpo_lab.decode`: a preallocated KV cache and the model's own modules, no per-token framework work; the same
    tokens as `model.generate` from the same seed. Falls back to `generate` (one warning) for models it does not
    cover."""

    name = "fast"
    provides_logprobs = True  # None only where it falls back to generate

    def fallback_reason(self, policy: PreTrainedModel) -> str | None:
        return unsupported_reason(_decoder_of(policy))

    def generate(
        self,
        policy,
        tokenizer,
        enc,
        *,
        max_new_tokens,
        do_sample,
        temperature,
        top_k,
        top_p,
        min_new_tokens,
        return_logprobs,
    ):
        reason = self.fallback_reason(policy)
        if reason is not None:
            if reason not in _fallbacks_logged:
                _fallbacks_logged.add(reason)
                log.warning("rollout.engine=fast falls back to model.generate: %s", reason)
            return HFSampler().generate(
                policy,
                tokenizer,
                enc,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                min_new_tokens=min_new_tokens,
                return_logprobs=False,
            )
        out = decode(
            _decoder_of(policy),
            enc["input_ids"],
            enc["attention_mask"],
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_new_tokens=min_new_tokens,
            return_logprobs=return_logprobs,
        )
        return out.tokens, out.logprobs


# the names `rollout.engine=NAME` takes; an import path is imported on first use (`sampler_class`), so importing
# dvpo_lab never imports vllm (dvpo_lab.vllm_engine imports it only when its engine starts)
SAMPLERS: dict[str, type[Sampler] | str] = {
    "fast": FastSampler,
    "hf": HFSampler,
    "vllm": "dvpo_lab.vllm_engine.VLLMSampler",
}


def sampler_class(name: str) -> type[Sampler]:
    """The class of the built-in engine `name` (a key of `SAMPLERS`), imported if given as a path.

    Raises:
        KeyError: an unknown name.
    """
    cls = SAMPLERS[name]
    if isinstance(cls, str):
        import importlib

        module, _, attr = cls.rpartition(".")
        cls = getattr(importlib.import_module(module), attr)
    return cls


def as_sampler(sampler: Sampler | str | DictConfig | dict, vllm: DictConfig | dict | None = None) -> Sampler:
    """The engine `rollout.engine` describes: an instance, a built-in's name, or a `_target_` node. `vllm`: the
    keyword arguments of the `vllm` engine when named (`rollout.vllm`).

    Raises:
        ValueError: an unknown name or a node without `_target_`.
    """
    if isinstance(sampler, Sampler):
        return sampler
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise ValueError(f"rollout.engine={sampler!r}: expected {' | '.join(SAMPLERS)} or a _target_ node")
        return sampler_class(sampler)(**(dict(vllm or {}) if sampler == "vllm" else {}))
    if "_target_" not in sampler:
        raise ValueError("rollout.engine: a node needs a _target_ (a dvpo_lab.rollout.Sampler subclass)")
    from hydra.utils import instantiate

    return instantiate(sampler)


def fast_sampler_reason(policy: PreTrainedModel, sampler: Sampler | str | DictConfig) -> str | None:
    """Why `sample(..., sampler=sampler)` will not run the fast loop (None: it will)."""
    engine = as_sampler(sampler)
    return engine.fallback_reason(policy) if isinstance(engine, FastSampler) else f"rollout.engine={engine.name}"


def _decoder_of(policy: PreTrainedModel) -> PreTrainedModel:
    """The transformers model the fast loop runs: a LoRA policy's base model, whose layers carry the adapters."""
    return policy.get_base_model() if is_lora(policy) else policy


@torch.no_grad()
def sample(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    max_prompt_len: int | None = None,
    min_new_tokens: int = 0,
    sampler: Sampler | str | DictConfig = "fast",
    return_logprobs: bool = False,
) -> Rollout:
    """Generate one response per prompt (repeat prompts for several samples). `seed` fixes the draw.

    `sampler`: the engine (`as_sampler`: fast | hf | a `_target_` node | an instance), the same tokens from the
    same seed for the built-ins (see the module docstring). `min_new_tokens` forbids EOS before that many tokens
    (fixed-length benchmark workloads). `return_logprobs`: keep the engine's log-probs of its tokens in
    `Rollout.logprobs` (`hf` leaves it None).
    """
    engine = as_sampler(sampler)
    enc, prompt_clipped = encode_prompts(tokenizer, prompts, max_prompt_len)
    enc = {k: v.to(policy.device) for k, v in enc.items()}
    was_training = policy.training
    policy.eval()
    with torch.random.fork_rng(devices=[policy.device] if policy.device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        response, logprobs = engine.generate(
            policy,
            tokenizer,
            enc,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_new_tokens=min_new_tokens,
            return_logprobs=return_logprobs,
        )
    policy.train(was_training)
    T = response.shape[1]
    is_eos = response == tokenizer.eos_token_id
    has_eos = is_eos.any(1)
    first = torch.where(has_eos, is_eos.int().argmax(1), torch.full_like(has_eos, T, dtype=torch.long))
    response_mask = (torch.arange(T, device=response.device)[None, :] <= first[:, None]).float()
    response = torch.where(response_mask.bool(), response, torch.full_like(response, tokenizer.pad_token_id))
    attention_mask = torch.cat([enc["attention_mask"], response_mask.long()], 1)
    texts = tokenizer.batch_decode(response, skip_special_tokens=True)
    return Rollout(
        input_ids=torch.cat([enc["input_ids"], response], 1),
        attention_mask=attention_mask,
        position_ids=positions_from_mask(attention_mask),
        response_ids=response,
        response_mask=response_mask,
        texts=texts,
        logprobs=logprobs * response_mask if logprobs is not None else None,
        prompt_clipped=prompt_clipped,
        response_clipped=clipped_responses(response, response_mask, tokenizer.eos_token_id, max_new_tokens).cpu(),
    )


def _hf_generate(
    policy, tokenizer, enc, max_new_tokens, do_sample, temperature, top_k, top_p, min_new_tokens
) -> torch.Tensor:
    """`model.generate` on the left-padded prompts; the response tokens `[B, T]`."""
    gen_kwargs = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if min_new_tokens:
        gen_kwargs["min_new_tokens"] = min_new_tokens
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_k=top_k or None, top_p=top_p)
    else:
        gen_kwargs.update(temperature=None, top_k=None, top_p=None)
    out = policy.generate(**enc, **gen_kwargs)
    return out[:, enc["input_ids"].shape[1] :]


def response_logprobs(
    model: PreTrainedModel,
    rollout: Rollout,
    temperature: float = 1.0,
    with_entropy: bool = False,
    rows: torch.Tensor | slice = slice(None),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs `[b, T]` of the response tokens (and entropies `[b, T]`) for the selected rows.

    The logits at position p predict token p + 1, so the T response tokens are scored by the T positions
    before them: only those `T + 1` positions' logits are computed (`logits_to_keep`).
    """
    T = rollout.response_len
    logits = (
        model(
            input_ids=rollout.input_ids[rows],
            attention_mask=rollout.attention_mask[rows],
            position_ids=rollout.position_ids[rows],
            use_cache=False,
            logits_to_keep=T + 1,
        )
        .logits[:, :-1]
        .float()
    )
    if temperature != 1.0:
        logits = logits / temperature
    logp = torch.gather(F.log_softmax(logits, -1), 2, rollout.response_ids[rows].unsqueeze(-1)).squeeze(-1)
    ent = entropy_from_logits(logits) if with_entropy else None
    return logp, ent


def response_values(critic, rollout: Rollout, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
    """Critic outputs `[b, T, n_out]` aligned with the response tokens: V(s_t) is read at the position
    whose logits produce y_t (the last token of s_t), as veRL does."""
    T = rollout.response_len
    v = critic(rollout.input_ids[rows], rollout.attention_mask[rows], rollout.position_ids[rows], num_positions=T + 1)
    return v[:, :-1]
