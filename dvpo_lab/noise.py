"""Reward-noise models: turn a task's clean score into the score training sees (docs/tasks_and_noise.md).

Noise acts during training only and is applied after the verifier, before any advantage. Every random draw is
a counter-based hash of (seed, step, index), so it is independent of the responses and of the policy, is the
same on every run and DDP rank, and needs no RNG state in checkpoints. Ranks pass ``sample_offset`` (the global
index of their first sample) so that sample ``i`` on any rank draws the same number it would in one process.

Kinds (``noise.kind``; R is the clean score, R~ what training sees):

    none           R~ = R
    flip           R~ = R XOR Bernoulli(p)                          (symmetric; J = 1 - 2p)
    asym_flip      P(R~=1 | R=0) = fp, P(R~=0 | R=1) = fn           (J = 1 - fp - fn)
    judge          a judge of accuracy acc reports the clean verdict: flip with p = 1 - acc, per sample
    gauss          R~ = R + N(0, sigma^2)                           (not binary; rates at threshold 0.5)
    majority_vote  R~ = verifier(response, majority answer of k samples of the initial policy)

Every kind logs ``noise/flip_rate``, ``noise/fp_rate``, ``noise/fn_rate`` and ``noise/youden_j`` = TPR - FPR,
realised on the step's batch from the clean and noisy binary verdicts.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # the tasks package imports torch-heavy modules; noise only needs the types
    from dvpo_lab.tasks import Problem, Task

log = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1
# Domain words: a per-sample draw, a per-group draw and the two Gaussian uniforms with the same number must not
# coincide.
_DOMAIN_SAMPLE, _DOMAIN_GROUP, _DOMAIN_GAUSS_R, _DOMAIN_GAUSS_THETA = 0x5A3F1E, 0x6B4C2D, 0x7C5D3E, 0x8D6E4F
GRANULARITIES = ("sample", "group")
# Gaussian scores are turned into verdicts at this threshold for the FP/FN statistics (midway between 0 and 1).
VERDICT_THRESHOLD = 0.5

# sampler(prompts, n, seed, temperature) -> n responses per prompt, prompt-major (len(prompts) * n texts)
Sampler = Callable[[list[str], int, int, float], list[str]]


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised splitmix64 finaliser on uint64 arrays (wrapping arithmetic is intended)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def counter_uniform(seed: int, step: int, index: np.ndarray, domain: int = _DOMAIN_SAMPLE) -> np.ndarray:
    """Uniform draws in [0, 1) that depend only on (domain, seed, step, index).

    Args:
        seed, step: run seed and training step (any Python ints; negatives wrap to 64 bits).
        index: ``[N]`` integer array of global indices.

    Returns:
        ``[N]`` float64 array; 10^5 draws take about a millisecond.
    """
    with np.errstate(over="ignore"):
        h = np.full(np.shape(index), domain & _MASK64, dtype=np.uint64)
        for word in (seed, step):
            h = _splitmix64(h ^ np.uint64(word & _MASK64))
        h = _splitmix64(h ^ np.asarray(index, dtype=np.int64).astype(np.uint64))
    # top 53 bits -> a double in [0, 1), each value equally likely
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _as_binary_numpy(clean: torch.Tensor) -> np.ndarray:
    """``[B]`` clean scores as a float32 numpy array (a view when already float32 on CPU), checked binary.

    The noise works on numpy copies: a reward vector is small, and per-op torch overhead on a busy CPU
    thread pool costs more than the copy.
    """
    if clean.dim() != 1:
        raise ValueError(f"clean scores must be [B], got shape {tuple(clean.shape)}")
    c = clean.detach().to("cpu", torch.float32).numpy()
    if not np.isin(c, (0.0, 1.0)).all():
        raise ValueError("flip noise needs binary clean scores in {0, 1}")
    return c


def noise_metrics(clean: np.ndarray, noisy: np.ndarray, fp: float, fn: float) -> dict[str, float]:
    """Realised rates on this batch; a class absent from the batch falls back to the configured rate.

    ``noise/fp_rate`` = P(noisy = 1 | clean = 0), ``noise/fn_rate`` = P(noisy = 0 | clean = 1), and
    ``noise/youden_j`` = TPR - FPR = 1 - fn_rate - fp_rate (learning needs J > 0; Rad et al. 2026).
    """
    neg, pos = clean == 0, clean == 1
    flipped = noisy != clean
    fp_rate = float(flipped[neg].mean()) if neg.any() else fp
    fn_rate = float(flipped[pos].mean()) if pos.any() else fn
    flip_rate = float(flipped.mean()) if flipped.size else 0.0
    return {
        "noise/flip_rate": flip_rate,
        "noise/youden_j": 1.0 - fp_rate - fn_rate,
        "noise/fp_rate": fp_rate,
        "noise/fn_rate": fn_rate,
    }


class RewardNoise(abc.ABC):
    """Maps clean ``[B]`` scores to the noisy scores training sees, plus metrics to log.

    Attributes:
        needs_policy_samples: the noise builds labels from samples of the initial policy; the training loop
            then calls :meth:`prepare` with the step's problems and a :data:`Sampler` before :meth:`apply`.
    """

    needs_policy_samples: bool = False

    def prepare(self, problems: Sequence[Problem], sampler: Sampler, *, seed: int) -> None:
        """Hook run before :meth:`apply` when :attr:`needs_policy_samples` is set; nothing by default.

        Args:
            problems: the step's distinct problems.
            sampler: draws responses from the frozen initial policy.
            seed: run seed.
        """
        return None  # noise that only transforms scores needs nothing from the policy

    @abc.abstractmethod
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
        """Corrupt a batch of clean scores.

        Args:
            clean: ``[B]`` float scores in ``{0, 1}``.
            seed: run seed.
            step: training step; draws differ between steps.
            group_index: ``[B]`` integer group (prompt) id of each sample, globally unique within a step
                (e.g. the prompt's global index), used by group-granularity noise.
            sample_offset: global index of this batch's first sample (DDP rank offset).
            responses: the ``B`` decoded responses (noise that re-runs the verifier needs them).
            problems: the ``B`` problems they answer, aligned with ``responses``.

        Returns:
            ``([B] noisy scores, same dtype and device as clean; metrics)``.
        """


class NoNoise(RewardNoise):
    """Identity: training sees the clean reward."""

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
        return clean.clone(), {
            "noise/flip_rate": 0.0,
            "noise/youden_j": 1.0,
            "noise/fp_rate": 0.0,
            "noise/fn_rate": 0.0,
        }


class AsymmetricFlipNoise(RewardNoise):
    """Flip a binary reward: 0 -> 1 with probability ``fp`` (rho_0), 1 -> 0 with probability ``fn`` (rho_1).

    E[R~ | R] = fp + (1 - fp - fn) R. With ``granularity="group"`` all samples of a group share one uniform
    draw (keyed by (seed, step, group id)), so a symmetric flip turns the whole group's rewards at once.
    """

    def __init__(self, fp: float, fn: float, granularity: str = "sample") -> None:
        for name, rate in (("fp", fp), ("fn", fn)):
            if not (isinstance(rate, (int, float)) and 0.0 <= rate <= 1.0):
                raise ValueError(f"noise.{name} must be a probability in [0, 1], got {rate!r}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"noise.granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.fp, self.fn, self.granularity = float(fp), float(fn), granularity

    def draws(
        self, n: int, *, seed: int, step: int, group_index: torch.Tensor, sample_offset: int
    ) -> np.ndarray:
        """``[n]`` uniforms for the batch, per sample or shared per group."""
        if self.granularity == "group":
            if group_index.shape != (n,):
                raise ValueError(f"group_index must be [{n}], got shape {tuple(group_index.shape)}")
            ids = group_index.detach().cpu().numpy().astype(np.int64)
            return counter_uniform(seed, step, ids, _DOMAIN_GROUP)
        return counter_uniform(seed, step, np.arange(sample_offset, sample_offset + n, dtype=np.int64))

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
        c = _as_binary_numpy(clean)
        u = self.draws(c.size, seed=seed, step=step, group_index=group_index, sample_offset=sample_offset)
        # one uniform per sample, compared with the rate of its clean class: flips never look at the response
        flip = u < np.where(c == 1, self.fn, self.fp)
        noisy = np.where(flip, np.float32(1) - c, c)
        out = torch.from_numpy(noisy).to(device=clean.device, dtype=clean.dtype)  # no copy for float32 CPU
        return out, noise_metrics(c, noisy, self.fp, self.fn)


class FlipNoise(AsymmetricFlipNoise):
    """Symmetric flip R~ = R XOR Bernoulli(p) (Lv et al. 2025): E[R~ | R] = p + (1 - 2p) R, J = 1 - 2p."""

    def __init__(self, p: float, granularity: str = "sample") -> None:
        if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
            raise ValueError(f"noise.p must be a probability in [0, 1], got {p!r}")
        super().__init__(fp=p, fn=p, granularity=granularity)
        self.p = float(p)


class JudgeNoise(AsymmetricFlipNoise):
    """An imperfect judge (reward model) of set accuracy: each sample's clean binary verdict is reported
    correctly with probability ``acc`` and inverted otherwise, independently per sample (the DVPO paper's
    dialogue regime, about 72%). Equivalent to a symmetric flip with p = 1 - acc; J = 2 acc - 1.

    Logs ``noise/judge_acc``, the realised fraction of verdicts reported correctly.
    """

    def __init__(self, acc: float) -> None:
        if not (isinstance(acc, (int, float)) and 0.0 <= acc <= 1.0):
            raise ValueError(f"noise.acc must be a judge accuracy in [0, 1], got {acc!r}")
        super().__init__(fp=1.0 - acc, fn=1.0 - acc, granularity="sample")
        self.acc = float(acc)

    def apply(self, clean: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, dict[str, float]]:
        noisy, metrics = super().apply(clean, **kwargs)
        metrics["noise/judge_acc"] = 1.0 - metrics["noise/flip_rate"]
        return noisy, metrics


def counter_normal(seed: int, step: int, index: np.ndarray) -> np.ndarray:
    """Standard normal draws ``[N]`` keyed by (seed, step, index): Box-Muller on two counter uniforms."""
    u_r = counter_uniform(seed, step, index, _DOMAIN_GAUSS_R)
    u_theta = counter_uniform(seed, step, index, _DOMAIN_GAUSS_THETA)
    return np.sqrt(-2.0 * np.log1p(-u_r)) * np.cos(2.0 * math.pi * u_theta)  # 1 - u_r in (0, 1]: log is finite


class GaussianNoise(RewardNoise):
    """R~ = R + N(0, sigma^2) per sample (reward dithering, ReDit arXiv 2506.18631), seeded like the flips.

    The noisy score is not binary. For the FP/FN statistics both scores become verdicts at
    ``VERDICT_THRESHOLD`` = 0.5: a clean 0 counts as a false positive when R~ >= 0.5, a clean 1 as a false
    negative when R~ < 0.5; for binary R both rates are 1 - Phi(0.5 / sigma) in expectation (J = 1 - 2 of it).
    Also logs the realised ``noise/gauss_mean`` and ``noise/gauss_sd`` of R~ - R.
    """

    def __init__(self, sigma: float) -> None:
        if not (isinstance(sigma, (int, float)) and sigma >= 0.0 and math.isfinite(sigma)):
            raise ValueError(f"noise.sigma must be a finite standard deviation >= 0, got {sigma!r}")
        self.sigma = float(sigma)
        # expected FP = FN rate for binary clean scores, the fallback when a class is absent from a batch
        self.verdict_flip = 0.5 * math.erfc(VERDICT_THRESHOLD / (self.sigma * math.sqrt(2))) if sigma > 0 else 0.0

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
        if clean.dim() != 1:
            raise ValueError(f"clean scores must be [B], got shape {tuple(clean.shape)}")
        c = clean.detach().to("cpu", torch.float64).numpy()
        if self.sigma == 0.0:
            delta = np.zeros_like(c)
        else:
            delta = self.sigma * counter_normal(seed, step, np.arange(sample_offset, sample_offset + c.size))
        noisy = c + delta
        metrics = noise_metrics((c >= VERDICT_THRESHOLD).astype(np.float32),
                                (noisy >= VERDICT_THRESHOLD).astype(np.float32), self.verdict_flip, self.verdict_flip)
        metrics["noise/gauss_mean"] = float(delta.mean()) if delta.size else 0.0
        metrics["noise/gauss_sd"] = float(delta.std()) if delta.size else 0.0
        return torch.from_numpy(noisy).to(device=clean.device, dtype=clean.dtype), metrics


@dataclass(frozen=True)
class PseudoLabel:
    """The majority-vote label of one prompt."""

    answer: str | None  # majority answer of the k samples; None when no sample gave an answer
    votes: int  # how many of the k samples gave it
    agrees: bool  # a sample with that answer passes the clean verifier of the true problem


def prompt_seed(seed: int, prompt: str) -> int:
    """A sampling seed that depends only on (run seed, prompt text), not on the batch the prompt came in."""
    digest = hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "little") ^ (seed * 0x9E3779B97F4A7C15)) & ((1 << 63) - 1)


class MajorityVoteNoise(RewardNoise):
    """Majority-vote pseudo-labels (the DVPO paper's noise for math and science, as in TTRL/VRPO): the reference
    answer of a prompt is replaced by the most common final answer (``task.extract_answer``) among ``k``
    samples of the **initial** policy at ``temperature``, and the noisy reward is the task's own verifier run
    against that label (``task.score_against``). Noise is therefore per question and correlated within a
    prompt's group, and it is wrong exactly where the initial policy's majority is wrong.

    Labels are computed once per prompt and cached (a dict keyed by the prompt text). Each prompt is sampled
    on its own with a seed from (run seed, prompt text), so its label never depends on which batch it came in:
    a resumed run (whose cache starts empty) recomputes the very same labels. Ties go to the answer seen
    first; a prompt whose samples give no answer at all gets no label and scores 0.

    Logs ``noise/mv_agreement``, the fraction of this batch's samples whose prompt label agrees with the true
    answer (all prompts have the same number of samples, so it is also the fraction of prompts), and
    ``noise/mv_cache_size``.
    """

    needs_policy_samples = True

    def __init__(self, task: Task, k: int = 8, temperature: float = 1.0) -> None:
        if task is None:
            raise ValueError("noise=majority_vote needs the task (its extract_answer and verifier)")
        from dvpo_lab.tasks.base import Task as _Task  # deferred: see the TYPE_CHECKING import above

        if type(task).extract_answer is _Task.extract_answer:  # fail at start, not at the first RL step
            raise ValueError(f"noise=majority_vote: task {task.name!r} does not implement extract_answer(), which "
                             "the vote needs; implement it or pick another noise")
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
            raise ValueError(f"noise=majority_vote: {len(missing)} prompts have no label yet (e.g. "
                             f"{missing[0]!r}); call prepare(problems, sampler, seed=...) before apply()")
        c = _as_binary_numpy(clean)
        labels = [self.cache[p.prompt] for p in problems]
        noisy = self.task.score_against(list(responses), list(problems), [lab.answer for lab in labels])
        n = noisy.to(torch.float32).numpy()
        metrics = noise_metrics(c, n, 0.0, 0.0)
        metrics["noise/mv_agreement"] = float(np.mean([lab.agrees for lab in labels])) if labels else 1.0
        metrics["noise/mv_cache_size"] = float(len(self.cache))
        return torch.from_numpy(n).to(device=clean.device, dtype=clean.dtype), metrics


def backward_correct(noisy: torch.Tensor, fp: float, fn: float) -> torch.Tensor:
    """Unbiased backward correction (Natarajan et al. 2013): R^ = (R~ - rho_0) / (1 - rho_0 - rho_1).

    E[R^ | R] = R. Undefined at J = 1 - rho_0 - rho_1 = 0, where the noisy reward carries no signal.
    """
    j = 1.0 - fp - fn
    if math.isclose(j, 0.0, abs_tol=1e-12):
        raise ValueError("backward correction is undefined when fp + fn = 1 (Youden's J = 0)")
    return (noisy - fp) / j


NOISES: dict[str, type[RewardNoise]] = {
    "none": NoNoise, "flip": FlipNoise, "asym_flip": AsymmetricFlipNoise, "judge": JudgeNoise,
    "gauss": GaussianNoise, "majority_vote": MajorityVoteNoise,
}
# The `noise` config fields each kind reads (majority_vote also takes the task, which is not a config field).
NOISE_PARAMS: dict[str, tuple[str, ...]] = {
    "none": (), "flip": ("p", "granularity"), "asym_flip": ("fp", "fn", "granularity"), "judge": ("acc",),
    "gauss": ("sigma",), "majority_vote": ("k", "temperature"),
}


def build_noise(kind: str, **kwargs: Any) -> RewardNoise:
    """Build a noise model by kind: ``none``, ``flip`` (``p``, ``granularity``), ``asym_flip`` (``fp``, ``fn``,
    ``granularity``), ``judge`` (``acc``), ``gauss`` (``sigma``), ``majority_vote`` (``task``, ``k``,
    ``temperature``)."""
    if kind not in NOISES:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {sorted(NOISES)}")
    return NOISES[kind](**kwargs)
