"""Clean greedy evaluation of a policy on a task's held-out problems."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dvpo_lab.rollout import sample
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
) -> tuple[torch.Tensor, list[str]]:
    """Clean scores `[n]` of greedy responses to `problems`, and the responses."""
    scores, texts = [], []
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        ro = sample(policy, tokenizer, [p.prompt for p in chunk], max_new_tokens=max_new_tokens,
                    do_sample=False, max_prompt_len=max_prompt_len)
        scores.append(task.score(ro.texts, chunk))
        texts.extend(ro.texts)
    return torch.cat(scores) if scores else torch.zeros(0), texts
