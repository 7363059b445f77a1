"""Compose -> build -> fit / eval. Returns the metric a sweeper optimises (`optimized_metric`)."""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import sys
import traceback
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from dvpo_lab import algos
from dvpo_lab.config import ConfigError
from dvpo_lab.data import RLDataModule
from dvpo_lab.models.build import build_policy, build_tokenizer
from dvpo_lab.models.pretrained import convert_gguf
from dvpo_lab.module import RLModule
from dvpo_lab.noise import NOISE_PARAMS, build_noise
from dvpo_lab.resume import (
    config_fingerprint,
    merge_resumed_metrics,
    prepare_resume,
    resolve_ckpt_path,
)
from dvpo_lab.sft import warm_start
from dvpo_lab.tasks import TASKS, build_task

log = logging.getLogger("dvpo_lab")
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo")
FAILED = "failed.txt"  # a multirun job's traceback, in its folder


def check_batch_sizes(cfg: DictConfig) -> str:
    r = cfg.rollout
    for key in ("prompts_per_step", "samples_per_prompt", "minibatch_size"):
        if r[key] < 1:
            raise ConfigError(f"rollout.{key}={r[key]} must be >= 1")
    n = r.prompts_per_step * r.samples_per_prompt
    if n % r.minibatch_size:
        raise ConfigError(
            f"rollout.minibatch_size={r.minibatch_size} does not divide the {n} responses per step "
            f"(rollout.prompts_per_step={r.prompts_per_step} x rollout.samples_per_prompt="
            f"{r.samples_per_prompt}); pick a divisor of {n}")
    if cfg.algo.adv_estimator in GROUP_ESTIMATORS and r.samples_per_prompt < 2:
        raise ConfigError(f"algo={cfg.algo.name} needs rollout.samples_per_prompt >= 2 (a group of one has no "
                          "baseline)")
    if cfg.total_steps < 1 or cfg.eval_every < 1 or cfg.ckpt_every < 1:
        raise ConfigError("total_steps, eval_every and ckpt_every must be >= 1")
    return (f"batch: {r.prompts_per_step} prompts/step x {r.samples_per_prompt} samples/prompt = {n} responses"
            f"/step per rank; minibatch {r.minibatch_size} -> {n // r.minibatch_size} optimizer steps per "
            f"model per PPO epoch x {cfg.algo.ppo_epochs} epochs; {cfg.total_steps} RL steps")


def check_algo(cfg: DictConfig) -> None:
    """The algorithm, its critic and their knobs fit together; each failure names the key and the fix."""
    a, c = cfg.algo, cfg.critic
    if a.adv_estimator not in algos.ADV_ESTIMATORS:
        raise ConfigError(f"algo.adv_estimator={a.adv_estimator!r} is not registered; choices: "
                          f"{sorted(algos.ADV_ESTIMATORS)}")
    needed = algos.ESTIMATOR_CRITICS.get(a.adv_estimator)
    if c.kind not in algos.CRITIC_KINDS:
        raise ConfigError(f"critic.kind={c.kind!r}; choices: {list(algos.CRITIC_KINDS)}")
    if needed is not None and c.kind != needed:
        raise ConfigError(f"algo={a.name} (adv_estimator={a.adv_estimator}) reads a critic of kind {needed!r}, "
                          f"but critic={c.kind}; drop the critic override or use critic={needed}")
    if c.n_heads < 1 or c.n_quantiles < 1:
        raise ConfigError(f"critic.n_heads={c.n_heads} and critic.n_quantiles={c.n_quantiles} must be >= 1")
    for key, value, allowed in (("critic.tau_grid", c.tau_grid, algos.TAU_GRIDS),
                                ("critic.monotone", c.monotone, algos.MONOTONE_MODES),
                                ("algo.actor_advantage", a.actor_advantage, algos.ACTOR_ADVANTAGES),
                                ("algo.dist.qr_on", a.dist.qr_on, ("heads", "ensemble")),
                                ("algo.dist.value_clip", a.dist.value_clip, ("mean", "quantile", "none")),
                                ("algo.robust.v_lo", a.robust.v_lo, ("zero", "batch_min"))):
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}; choices: {list(allowed)}")
    for key in ("tail_alpha", "tail_beta"):
        if not 0.0 < a.dist[key] <= 1.0:
            raise ConfigError(f"algo.dist.{key}={a.dist[key]} must be in (0, 1]")
    if a.dist.kappa < 0:
        raise ConfigError(f"algo.dist.kappa={a.dist.kappa} must be >= 0 (0 = pinball loss)")
    if a.actor_advantage != "mean" and a.adv_estimator != "dist_gae":
        raise ConfigError(f"algo.actor_advantage={a.actor_advantage} needs a value distribution (algo=dvpo)")
    if c.kind == "ensemble" and c.n_heads > 1 and c.head_init_std == 0:
        raise ConfigError("critic=ensemble with critic.head_init_std=0: identical zero-initialised heads stay equal "
                          "forever and the pessimism term is inert; set critic.head_init_std > 0 (e.g. 0.01)")
    if c.kind == "quantile" and c.n_heads > 1 and c.head_init_std == 0:
        raise ConfigError("critic=quantile with several heads and critic.head_init_std=0: identical heads stay "
                          "equal forever; set critic.head_init_std > 0 (e.g. 0.01)")


def make_task(cfg: DictConfig, tokenizer=None):
    """The task of `cfg.task`; tasks whose constructor takes `tokenizer` (chat templates) get the model's."""
    if cfg.task.name not in TASKS:
        raise ConfigError(f"task.name={cfg.task.name!r} is not registered; choices: {sorted(TASKS)}")
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.task, resolve=True).items()
              if k not in ("name", "sft_max_steps", "sft_batch_size", "sft_target_acc")}
    params = inspect.signature(TASKS[cfg.task.name].__init__).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ConfigError(f"task {cfg.task.name!r} does not take {unknown}; it takes {sorted(set(params) - {'self'})}")
    if "tokenizer" in params:
        kwargs["tokenizer"] = tokenizer
    return build_task(cfg.task.name, **kwargs)


def make_noise(cfg: DictConfig, task=None):
    """The noise of `cfg.noise`; `majority_vote` also wraps the task (its answer extraction and verifier)."""
    n = cfg.noise
    if n.kind != "none" and cfg.task.get("reward", "tcr") == "gcr":
        raise ConfigError(f"noise={n.name} flips a binary reward but task.reward=gcr is a fraction; "
                          "use task.reward=tcr or noise=none")
    if n.kind not in NOISE_PARAMS:
        raise ConfigError(f"noise.kind={n.kind!r}: expected {' | '.join(NOISE_PARAMS)}")
    kwargs = {key: n[key] for key in NOISE_PARAMS[n.kind]}
    if n.kind == "majority_vote":
        kwargs["task"] = task
    return build_noise(n.kind, **kwargs)


def quiet_lightning() -> None:
    """Lightning adds its own console handler; Hydra already logs the root logger: print each line once."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
        lg.propagate = True
    # the reference model is frozen in eval mode on purpose
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")


def run_job(cfg: DictConfig) -> float | None:
    """`run` as `python -m dvpo_lab` calls it. In a multirun, a job that raises does not stop the sweep: its
    traceback goes to `failed.txt` in its folder (the report lists it), nothing it wrote is removed, and the
    sweeper gets NaN. A single run raises as usual. Ctrl-C is not caught."""
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    failed = Path(cfg.paths.output_dir) / FAILED
    try:
        result = run(cfg)
    except Exception as e:
        if not multirun:
            raise
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(f"{type(e).__name__}: {e}\n\n{traceback.format_exc()}")
        log.error("job failed: %s: %s; recorded in %s; the sweep goes on", type(e).__name__, e, failed)
        if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
            sys.modules["wandb"].finish(exit_code=1)
        return math.nan
    failed.unlink(missing_ok=True)
    return result


def finished_metric(cfg: DictConfig, out_dir: Path) -> float | None:
    """With `resume=true`: the metric of a run this folder already finished with this same config (None if
    there is none). A finished run of another config in the folder is an error, not something to overwrite."""
    summ, fp_file = out_dir / "summary.json", out_dir / "fingerprint.txt"
    fp = config_fingerprint(cfg)
    if fp_file.exists() and fp_file.read_text().strip() != fp:
        raise ConfigError(
            f"{out_dir} holds a run of another config (fingerprint {fp_file.read_text().strip()}, this job's "
            f"{fp}): the sweep's file or overrides changed since it ran. Keep both: point this sweep at a new "
            "folder (hydra.sweep.dir=...), or delete that folder to rerun it")
    if not summ.exists():
        return None
    s = json.loads(summ.read_text())
    log.info("resume=true: %s already finished (final val/acc %.4f); skipping it", out_dir, s["final/val_acc"])
    return summary_metric(cfg, s)


def summary_metric(cfg: DictConfig, summary: dict) -> float | None:
    """The number a sweeper optimises (`optimized_metric`) out of a run's summary."""
    return summary["final/val_acc"] if cfg.optimized_metric == "val/acc" else summary.get(cfg.optimized_metric)


def run(cfg: DictConfig) -> float | None:
    quiet_lightning()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.resume and cfg.mode == "train":
        done = finished_metric(cfg, out_dir)
        if done is not None:
            return done
        if cfg.ckpt_path is None and (out_dir / "checkpoints" / "last.ckpt").exists():
            cfg.ckpt_path = "last"  # resolve_ckpt_path takes the folder's own checkpoint first
    os.environ.setdefault("WANDB_SILENT", "true")
    if not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")  # never prompt for a key
    batch_line = check_batch_sizes(cfg)
    check_algo(cfg)
    log.info(batch_line)
    if cfg.model.gguf_file and not cfg.model.name_or_path:  # offline pretrained weights (model=smollm2-135m)
        cfg.model.name_or_path = str(convert_gguf(cfg.model.gguf_file, cfg.paths.cache_dir))
    tokenizer = build_tokenizer(cfg.model)
    task = make_task(cfg, tokenizer)
    noise = make_noise(cfg, task)

    path = None
    if cfg.model.warm_start:
        path = str(warm_start(cfg, task))
        tokenizer = build_tokenizer(cfg.model, path) if cfg.model.tokenizer == "auto" else tokenizer
    policy = build_policy(cfg.model, tokenizer, path)
    if cfg.mode == "sft":
        return None

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = RLModule(cfg, policy, tokenizer, task, noise)
    dm = RLDataModule(len(module.eval_problems), cfg.rollout.eval_batch_size)
    loggers = [hydra.utils.instantiate(c) for c in (cfg.logger or {}).values() if c is not None]
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                                      max_epochs=cfg.total_steps, check_val_every_n_epoch=cfg.eval_every,
                                      _convert_="partial")
    if cfg.mode == "eval":
        ckpt = resolve_ckpt_path(cfg, out_dir)
        trainer.validate(module, dm, ckpt_path=ckpt, verbose=False)
        acc = module.history[-1]["val/acc"] if module.history else math.nan
        log.info("val/acc = %.4f on %d clean test problems", acc, len(module.eval_problems))
        return acc
    if cfg.mode != "train":
        raise ConfigError(f"mode={cfg.mode!r}: expected train | sft | eval")

    (out_dir / "fingerprint.txt").write_text(config_fingerprint(cfg) + "\n")
    ckpt = resolve_ckpt_path(cfg, out_dir)
    resumed_from = prepare_resume(ckpt, out_dir) if ckpt else None
    if ckpt is None:
        trainer.validate(module, dm, verbose=False)  # initial clean accuracy, logged at step 0
    trainer.fit(module, dm, ckpt_path=ckpt)
    if not module.history or module.history[-1]["step"] != cfg.total_steps:
        trainer.validate(module, dm, verbose=False)
    if resumed_from is not None:
        merge_resumed_metrics(out_dir, resumed_from)
    return summarize(cfg, module, out_dir)


def summarize(cfg: DictConfig, module: RLModule, out_dir: Path) -> float:
    hist = module.history
    initial = hist[0]["val/acc"] if hist and hist[0]["step"] == 0 else math.nan
    final = hist[-1]["val/acc"] if hist else math.nan
    summary = {"algo": cfg.algo.name, "task": cfg.task.name, "noise": cfg.noise.name, "seed": cfg.seed,
               "total_steps": cfg.total_steps, "initial/val_acc": initial, "final/val_acc": final,
               "best/val_acc": max((h["val/acc"] for h in hist), default=math.nan), "history": hist}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    for lg in module.loggers:  # the numbers a W&B sweep or dashboard reads (sweeps/wandb/*.yaml: final/val_acc)
        if isinstance(lg, WandbLogger):
            lg.experiment.summary.update({k: v for k, v in summary.items() if "/" in k})
    if module.trainer.is_global_zero:
        w = 26
        lines = ["", f"{'run':<{w}}{cfg.algo.name} | task={cfg.task.name} | noise={cfg.noise.name} | seed={cfg.seed}",
                 f"{'clean greedy accuracy':<{w}}initial {initial:6.1%}  ->  final {final:6.1%}  "
                 f"({100 * (final - initial):+.1f} points)",
                 f"{'RL steps':<{w}}{cfg.total_steps}", f"{'run folder':<{w}}{out_dir}", ""]
        log.info("\n".join(lines))
    return summary_metric(cfg, summary)
