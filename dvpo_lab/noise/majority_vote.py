"""``noise=majority_vote``: majority-vote pseudo-labels from samples of the initial policy."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from dvpo_lab.noise.base import RewardNoise, Sampler, as_binary_numpy, noise_metrics
from dvpo_lab.seeding import prompt_seed

if TYPE_CHECKING:  # the tasks package imports torch-heavy modules; noise only needs the types
    from dvpo_lab.tasks import Problem, Task


@dataclass(frozen=True)
class PseudoLabel:
    """The majority-vote label of one prompt."""

    answer: str | None  # majority answer of the k samples; None when no sample gave an answer
    votes: int  # how many of the k samples gave it
    agrees: bool  # a sample with that answer passes the clean verifier of the true problem


class MajorityVoteNoise(RewardNoise):
    """Majority-vote pseudo-labels (the DVPO paper's noise for math and science, as in TTRL/VRPO): the reference
    answer of a prompt is replaced by the most common final answer (``task.extract_answer``) among ``k``
    samples of the **initial** policy at ``temperature``, and the noisy reward is the task's own verifier run
    against that label (``task.score_against``). Noise is therefore per question and correlated within a
    prompt's group, and it is wrong exactly where the initial policy's majority is wrong.

    Labels are computed once per prompt and cached (a dict keyed by the prompt text). Each prompt is sampled
    on its own with a seed from (run seed, prompt text) (`dvpo_lab.seeding.prompt_seed`), so its label never
    depends on which batch it came in: a resumed run (whose cache starts empty) recomputes the very same labels.
    Ties go to the answer seen first; a prompt whose samples give no answer at all gets no label and scores 0.

    Logs ``noise/mv_agreement``, the fraction of this batch's samples whose prompt label agrees with the true
    answer (all prompts have the same number of samples, so it is also the fraction of prompts), and
    ``noise/mv_cache_size``.

    Args:
        task: the run's task (the run passes it; not a config key): its ``extract_answer`` and verifier.
        k: samples of the initial policy per prompt, >= 1.
        temperature: their sampling temperature, > 0.
    Raises:
        ValueError: no task, a task without ``extract_answer``, or ``k`` / ``temperature`` out of range.
    """

    needs_policy_samples = True

    def __init__(self, task: Task, k: int = 8, temperature: float = 1.0) -> None:
        if task is None:
            raise ValueError("noise=majority_vote needs the task (its extract_answer and verifier)")
        from dvpo_lab.tasks.base import Task as _Task  # deferred: see the TYPE_CHECKING import above

        if type(task).extract_answer is _Task.extract_answer:  # fail at start, not at the first RL step
            raise ValueError(
                f"noise=majority_vote: task {task.name!r} does not implement extract_answer(), which "
                "the vote needs; implement it or pick another noise"
            )
        if not (isinstance(k, int) and k >= 1):
            raise ValueError(f"noise.k must be a number of samples >= 1, got {k!r}")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"noise.temperature must be > 0, got {temperature!r}")
        self.task, self.k, self.temperature = task, k, float(temperature)
        self.cache: dict[str, PseudoLabel] = {}

    def vote(self, problem: Problem, texts: Sequence[str]) -> PseudoLabel:
        """The label of ``problem`` from its samples ``texts``."""
        answers = [self.task.extract_answer(t) for t in texts]
        counts = Counter(a for a in answers if a is not None)
        if not counts:
            return PseudoLabel(None, 0, False)
        votes = max(counts.values())
        answer = next(a for a in answers if a is not None and counts[a] == votes)
        representative = texts[answers.index(answer)]
        agrees = bool(self.task.score([representative], [problem])[0] == 1.0)
        return PseudoLabel(answer, votes, agrees)

    def prepare(self, problems: Sequence[Problem], sampler: Sampler, *, seed: int) -> None:
        """Label every prompt of ``problems`` that is not cached yet, ``k`` samples each."""
        for p in problems:
            if p.prompt not in self.cache:
                texts = sampler([p.prompt], self.k, prompt_seed(seed, p.prompt), self.temperature)
                if len(texts) != self.k:
                    raise ValueError(f"sampler returned {len(texts)} responses for 1 prompt x k={self.k}")
                self.cache[p.prompt] = self.vote(p, texts)

    def apply(
        self,
        clean: torch.Tensor,
        *,
        seed: int,
        step: int,
        group_index: torch.Tensor,
        sample_offset: int = 0,
        responses: Sequence[str] | None = None,
        problems: Sequence[Problem] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if responses is None or problems is None:
            raise ValueError("noise=majority_vote re-runs the verifier: apply() needs responses= and problems=")
        missing = sorted({p.prompt for p in problems if p.prompt not in self.cache})
        if missing:
            raise ValueError(
                f"noise=majority_vote: {len(missing)} prompts have no label yet (e.g. "
                f"{missing[0]!r}); call prepare(problems, sampler, seed=...) before apply()"
            )
        c = as_binary_numpy(clean)
        labels = [self.cache[p.prompt] for p in problems]
        noisy = self.task.score_against(list(responses), list(problems), [lab.answer for lab in labels])
        n = noisy.to(torch.float32).numpy()
        metrics = noise_metrics(c, n, 0.0, 0.0)
        metrics["noise/mv_agreement"] = float(np.mean([lab.agrees for lab in labels])) if labels else 1.0
        metrics["noise/mv_cache_size"] = float(len(self.cache))
        return torch.from_numpy(n).to(device=clean.device, dtype=clean.dtype), metrics
