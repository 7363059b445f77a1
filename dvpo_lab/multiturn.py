"""Multi-turn rollouts: the policy's turns interleaved with a simulated user's replies, as one `Rollout`.

Layout (the same as a single-turn rollout, so log-probs, values, advantages and losses run unchanged)::

    input_ids      [B, P + T]  left-padded prompt | assistant turn, user reply, assistant turn, ... | right pad
    attention_mask [B, P + T]  1 on every real token: user replies are context
    response_mask  [B, T]      1 on assistant tokens only: user tokens and padding are out of the policy loss,
                               the critic loss and the GAE recursion (which carries values across them)

Each turn is one `generate` call over the batch of unfinished episodes (re-encoding the context: simple and
correct; the tiny model's contexts are ~100 tokens). A turn ends at the first token whose text contains the
task's end-of-turn string (or EOS); the task's user answers it; the episode ends on a final action, an EOS,
a turn that hits `max_turn_tokens`, `max_turns` assistant turns, or the total token budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dvpo_lab.decode import decode
from dvpo_lab.rollout import (
    Rollout,
    Sampler,
    _decoder_of,
    as_sampler,
    check_prompt_budget,
    fast_sampler_reason,
    positions_from_mask,
    sample,
    warn_prompts_truncated,
)
from dvpo_lab.tasks import MultiTurnTask, Problem, Task


@dataclass
class DialogueRollout(Rollout):
    """A `Rollout` whose response is a dialogue; `sampled_logprobs` `[B, T]` (0 off assistant tokens) are the
    sampler's own log-probs of its tokens, recorded only with `record_logprobs=True` (for tests)."""

    sampled_logprobs: torch.Tensor | None = None
    num_turns: torch.Tensor | None = None  # [B] assistant turns taken


@lru_cache(maxsize=8)
def _turn_end_ids(tokenizer: PreTrainedTokenizerBase, turn_end: str) -> tuple[int, ...]:
    """Ids of every token whose text contains `turn_end`, plus EOS (one pass over the vocabulary, cached)."""
    ids = {i for tok, i in tokenizer.get_vocab().items() if turn_end in tokenizer.convert_tokens_to_string([tok])}
    return tuple(sorted(ids | {tokenizer.eos_token_id}))


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r)
            attn[i, width - len(r) :] = 1
    return ids, attn


@torch.no_grad()
def sample_dialogues(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: MultiTurnTask,
    problems: list[Problem],
    *,
    max_new_tokens: int,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    max_prompt_len: int | None = None,
    record_logprobs: bool = False,
    sampler: Sampler | str = "fast",
) -> DialogueRollout:
    """Play one episode per problem (repeat problems for several samples). `seed` fixes every draw.

    Args:
        max_new_tokens: budget for the whole response (assistant and user tokens together).
        record_logprobs: also return the sampler's log-probs of its tokens (at `temperature`), to check that
            the scoring pass over the assembled rollout reproduces them.
        sampler: fast (`dvpo_lab.decode` for each assistant turn) | hf (`model.generate`): the same tokens from
            the same seed (tests/test_decode.py); fast falls back to generate where it does not apply. vllm (an
            instance, to keep one engine across calls): each turn is one batch of engine requests.

    Returns:
        a `DialogueRollout`; `texts[i]` is the transcript (each turn cut after its end-of-turn text).
        `response_clipped[i]`: the episode was still going when its tokens reached `max_new_tokens` (an episode
        that ends by itself, on EOS, a final action or `max_turns`, is not clipped, nor is a turn cut by
        `max_turn_tokens` before the budget). `prompt_clipped[i]`: as in `rollout.encode_prompts`.
    Raises:
        ValueError: `max_prompt_len` <= 0.
    """
    check_prompt_budget(max_prompt_len)
    B, device, end = len(problems), policy.device, task.turn_end
    stop_ids = _turn_end_ids(tokenizer, end)
    stop_set = set(stop_ids)
    prompts = [_encode(tokenizer, p.prompt) for p in problems]
    prompt_clipped = torch.tensor(
        [max_prompt_len is not None and len(ids) > max_prompt_len for ids in prompts], dtype=torch.bool
    )
    if max_prompt_len is not None:
        prompts = [ids[-max_prompt_len:] for ids in prompts]  # keep the end, as `encode_prompts` does
        warn_prompts_truncated(int(prompt_clipped.sum()), B, max_prompt_len)
    clipped = [False] * B
    resp: list[list[int]] = [[] for _ in range(B)]
    mask: list[list[int]] = [[] for _ in range(B)]
    logps: list[list[float]] = [[] for _ in range(B)]
    texts, turns = [""] * B, [0] * B
    active = list(range(B))
    gen_kwargs = dict(
        do_sample=do_sample,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=list(stop_ids),
        output_logits=record_logprobs,
        return_dict_in_generate=True,
    )
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_k=top_k or None, top_p=top_p)
    else:
        gen_kwargs.update(temperature=None, top_k=None, top_p=None)
    engine = as_sampler(sampler)
    fast = fast_sampler_reason(policy, engine) is None
    own_loop = engine.takes_stop_ids  # an engine that plays each turn itself, to the turn's stop ids
    was_training = policy.training
    policy.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        for turn in range(task.max_turns):
            for i in active:  # an episode still going (its user just replied) that has no budget left
                clipped[i] = clipped[i] or len(resp[i]) >= max_new_tokens
            active = [i for i in active if len(resp[i]) < max_new_tokens]
            if not active:
                break
            cap = min(task.max_turn_tokens, max(max_new_tokens - len(resp[i]) for i in active))
            ids, attn = _left_pad([prompts[i] + resp[i] for i in active], tokenizer.pad_token_id)
            if fast:
                out = decode(
                    _decoder_of(policy),
                    ids.to(device),
                    attn.to(device),
                    max_new_tokens=cap,
                    eos_token_id=stop_ids,
                    pad_token_id=tokenizer.pad_token_id,
                    do_sample=do_sample,
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                    return_logprobs=record_logprobs,
                )
                new = out.tokens.tolist()
                step_logp = out.logprobs.tolist() if record_logprobs else None
            elif own_loop:
                tokens, lp = engine.generate(
                    policy,
                    tokenizer,
                    {"input_ids": ids.to(device), "attention_mask": attn.to(device)},
                    max_new_tokens=cap,
                    do_sample=do_sample,
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                    min_new_tokens=0,
                    return_logprobs=record_logprobs,
                    stop_token_ids=stop_ids,
                )
                new = tokens.tolist()  # padded after the stop token: the cut below drops the padding
                step_logp = lp.tolist() if record_logprobs else None
            else:
                out = policy.generate(
                    input_ids=ids.to(device), attention_mask=attn.to(device), max_new_tokens=cap, **gen_kwargs
                )
                new = out.sequences[:, ids.shape[1] :].tolist()
                if record_logprobs:  # [cap, b, V] raw logits -> log-probs of the drawn tokens
                    step_logits = torch.stack(out.logits, 0).float() / (temperature if do_sample else 1.0)
                    drawn = out.sequences[:, ids.shape[1] :].T.unsqueeze(-1)
                    step_logp = F.log_softmax(step_logits, -1).gather(-1, drawn).squeeze(-1).T.tolist()
            still = []
            for row, i in enumerate(active):
                toks = new[row][: max_new_tokens - len(resp[i])]
                stop = next((k for k, t in enumerate(toks) if t in stop_set), None)
                toks = toks if stop is None else toks[: stop + 1]
                resp[i] += toks
                mask[i] += [1] * len(toks)
                if record_logprobs:
                    logps[i] += step_logp[row][: len(toks)]
                turns[i] += 1
                text = tokenizer.decode(toks, skip_special_tokens=True)
                if stop is None or toks[-1] == tokenizer.eos_token_id or end not in text:
                    texts[i] += text  # EOS, or cut off by the per-turn cap or the budget: the episode ends
                    clipped[i] = stop is None and len(resp[i]) >= max_new_tokens
                    continue
                said = text.split(end, 1)[0]
                texts[i] += said + end
                reply = task.user_reply(problems[i], said)
                if reply is None or turn == task.max_turns - 1:
                    continue
                reply_ids = _encode(tokenizer, reply + end)[: max_new_tokens - len(resp[i])]
                resp[i] += reply_ids
                mask[i] += [0] * len(reply_ids)
                logps[i] += [0.0] * len(reply_ids)
                texts[i] += reply + end
                still.append(i)
            active = still
    policy.train(was_training)
    ro = _assemble(tokenizer, prompts, resp, mask, logps if record_logprobs else None, texts, turns, device)
    ro.prompt_clipped, ro.response_clipped = prompt_clipped, torch.tensor(clipped, dtype=torch.bool)
    return ro


def _assemble(tokenizer, prompts, resp, mask, logps, texts, turns, device) -> DialogueRollout:
    """Left-pad prompts to P and right-pad responses to T (at least 1) into one rollout."""
    B, T = len(prompts), max(1, max(len(r) for r in resp))
    prompt_ids, prompt_attn = _left_pad(prompts, tokenizer.pad_token_id)
    response = torch.full((B, T), tokenizer.pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((B, T))
    response_attn = torch.zeros((B, T), dtype=torch.long)
    sampled = torch.zeros((B, T)) if logps is not None else None
    for i in range(B):
        n = len(resp[i])
        if n:
            response[i, :n] = torch.tensor(resp[i])
            response_mask[i, :n] = torch.tensor(mask[i], dtype=torch.float32)
            response_attn[i, :n] = 1
            if sampled is not None:
                sampled[i, :n] = torch.tensor(logps[i])
    attention_mask = torch.cat([prompt_attn, response_attn], 1)
    return DialogueRollout(
        input_ids=torch.cat([prompt_ids, response], 1).to(device),
        attention_mask=attention_mask.to(device),
        position_ids=positions_from_mask(attention_mask).to(device),
        response_ids=response.to(device),
        response_mask=response_mask.to(device),
        texts=texts,
        sampled_logprobs=sampled.to(device) if sampled is not None else None,
        num_turns=torch.tensor(turns),
    )


def sample_for_task(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: list[Problem],
    **kwargs,
) -> Rollout:
    """One response per problem: a dialogue for a multi-turn task, else `rollout.sample` on the prompts.
    Keyword arguments are `sample`'s (max_new_tokens, do_sample, temperature, ..., seed, max_prompt_len)."""
    if task.multi_turn:  # dialogues are played turn by turn (each assistant turn with rollout.engine)
        for key in ("min_new_tokens", "return_logprobs"):
            kwargs.pop(key, None)
        return sample_dialogues(policy, tokenizer, task, problems, **kwargs)
    return sample(policy, tokenizer, [p.prompt for p in problems], **kwargs)


def encode_dialogue_demo(
    tokenizer: PreTrainedTokenizerBase, task: MultiTurnTask, problem: Problem
) -> tuple[list[int], list[int]]:
    """Token ids of prompt + demonstration dialogue and the loss mask (1 on assistant tokens only).

    Each turn is tokenized on its own, as the sampler appends them, so the warm-start trains on the token
    sequences that rollouts produce."""
    ids = _encode(tokenizer, problem.prompt)
    loss_mask = [0] * len(ids)
    for text, is_assistant in task.demo_turns(problem):
        turn = _encode(tokenizer, text)
        ids += turn
        loss_mask += [int(is_assistant)] * len(turn)
    return ids, loss_mask
