"""Reward-noise models: turn a task's clean score into the score training sees (docs/tasks_and_noise.md).

One base (`base.RewardNoise`), one module per model. Each ``conf/noise/*.yaml`` option names its class by
``_target_`` and is built with ``hydra.utils.instantiate``; a user's own model is a `RewardNoise` subclass in
their own package plus one YAML in their config folder on ``hydra.searchpath``.

Models (R is the clean score, R~ what training sees; options in ``conf/noise/``):

    NoNoise              none               R~ = R
    FlipNoise            flip0.1-0.3        R~ = R XOR Bernoulli(p)                       (symmetric; J = 1 - 2p)
    AsymmetricFlipNoise  asym_fp0.1_fn0.3   P(R~=1 | R=0) = fp, P(R~=0 | R=1) = fn        (J = 1 - fp - fn)
    JudgeNoise           rm0.72             a judge of accuracy acc: flip with p = 1 - acc, per sample
    GaussianNoise        gauss0.3           R~ = R + N(0, sigma^2)                (not binary; rates at 0.5)
    MajorityVoteNoise    majority_vote      R~ = verifier(response, majority answer of k initial-policy samples)

Every model logs ``noise/flip_rate``, ``noise/fp_rate``, ``noise/fn_rate`` and ``noise/youden_j`` = TPR - FPR,
realised on the step's batch from the clean and noisy binary verdicts. Seeded draws come from
`dvpo_lab.seeding`.
"""

from dvpo_lab.noise.base import RewardNoise, Sampler, as_binary_numpy, noise_metrics
from dvpo_lab.noise.flip import GRANULARITIES, AsymmetricFlipNoise, FlipNoise, backward_correct
from dvpo_lab.noise.gauss import VERDICT_THRESHOLD, GaussianNoise
from dvpo_lab.noise.judge import JudgeNoise
from dvpo_lab.noise.majority_vote import MajorityVoteNoise, PseudoLabel
from dvpo_lab.noise.none import NoNoise

__all__ = [
    "GRANULARITIES",
    "VERDICT_THRESHOLD",
    "AsymmetricFlipNoise",
    "FlipNoise",
    "GaussianNoise",
    "JudgeNoise",
    "MajorityVoteNoise",
    "NoNoise",
    "PseudoLabel",
    "RewardNoise",
    "Sampler",
    "as_binary_numpy",
    "backward_correct",
    "noise_metrics",
]
