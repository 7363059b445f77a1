"""Clean greedy evaluation of a policy on a task's held-out problems."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dvpo_lab.multiturn import sample_for_task
from dvpo_lab.rollout import Sampler
from dvpo_lab.tasks import Problem, Task


@torch.no_grad()
def greedy_scores(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: list[Problem],
    batch_size: int,
    max_new_tokens: int,
    max_prompt_len: int | None = None,
    sampler: Sampler | str = "fast",
) -> tuple[torch.Tensor, list[str]]:
    """Clean scores `[n]` of greedy responses to `problems` (dialogues for a multi-turn task), and the responses.

    `max_prompt_len`: pass the training rollout's prompt budget (`rollout.prompt_budget`), so an evaluation sees
    the prompts training sees (truncated alike); None keeps every prompt whole.
    """
    scores, texts = [], []
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        ro = sample_for_task(
            policy,
            tokenizer,
            task,
            chunk,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            max_prompt_len=max_prompt_len,
            sampler=sampler,
        )
        scores.append(task.score(ro.texts, chunk))
        texts.extend(ro.texts)
    return torch.cat(scores) if scores else torch.zeros(0), texts


def metric_sums(chunks: list[dict[str, torch.Tensor]]) -> tuple[list[str], torch.Tensor]:
    """Sum and count of each task metric (`Task.metrics`) over evaluation chunks, NaN entries skipped.

    Returns:
        (sorted names, `[K, 2]` float64 tensor of (sum, count) per name), ready for an all-reduce.
    """
    names = sorted({k for c in chunks for k in c})
    out = torch.zeros(len(names), 2, dtype=torch.float64)
    for c in chunks:
        for j, k in enumerate(names):
            if k in c:
                v = c[k].double()
                out[j, 0] += v.nansum()
                out[j, 1] += (~v.isnan()).sum()
    return names, out
