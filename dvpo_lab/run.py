"""Compose -> build -> fit / eval. Returns the metric a sweeper optimises (`optimized_metric`)."""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import shutil
import sys
import textwrap
import traceback
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from transformers.utils import logging as hf_logging

from dvpo_lab.callbacks import progress_settings
from dvpo_lab.checks import check_config, check_prompt_budget, check_trainer, model_context
from dvpo_lab.config import ConfigError
from dvpo_lab.data import RLDataModule
from dvpo_lab.export import best_step, export_run
from dvpo_lab.extensions import import_extra_modules
from dvpo_lab.loggers import build_loggers, finish_loggers, log_summary
from dvpo_lab.models.build import build_policy, build_tokenizer
from dvpo_lab.models.pretrained import convert_gguf
from dvpo_lab.module import RLModule
from dvpo_lab.resume import (
    FolderTaken,
    check_run_folder,
    config_fingerprint,
    is_secondary_rank,
    merge_resumed_metrics,
    prepare_resume,
    record_run,
    resolve_ckpt_path,
)
from dvpo_lab.sft import warm_start
from dvpo_lab.tasks import Task, instantiate_task

log = logging.getLogger("dvpo_lab")
FAILED = "failed.txt"  # a multirun job's traceback, in its folder


def make_task(cfg: DictConfig, tokenizer=None) -> Task:
    """The task of `cfg.task`, built by `hydra.utils.instantiate` from its `_target_` and arguments
    (`dvpo_lab.tasks.instantiate_task`): the run's keys (`name`, `sft_*`) are not passed, a constructor that
    takes `tokenizer` (chat templates) gets the model's, and `task.reward` is built into the reward function."""
    return instantiate_task(cfg.task, tokenizer)


def make_noise(cfg: DictConfig, task=None):
    """The noise model of `cfg.noise`, built by `hydra.utils.instantiate` from its `_target_` and arguments.

    `noise.name` labels the run (folder, tags, reports) and is not passed; a constructor that takes `task`
    (`MajorityVoteNoise`: its answer extraction and verifier) gets the run's task.

    Raises:
        ConfigError: a noise that reads binary scores (`needs_binary_scores`) with `task.reward=gcr`, or a
            constructor that refuses its arguments (its message, one line).
    """
    spec = {k: v for k, v in OmegaConf.to_container(cfg.noise, resolve=True).items() if k != "name"}
    target = hydra.utils.get_object(spec["_target_"])
    if getattr(target, "needs_binary_scores", True) and cfg.task.get("reward", "tcr") == "gcr":
        raise ConfigError(
            f"noise={cfg.noise.name} flips a binary reward but task.reward=gcr is a fraction; "
            "use task.reward=tcr or noise=none"
        )
    if "task" in spec:
        raise ConfigError("noise.task is not a config key: the run passes its own task to the noise; drop it")
    extra = {"task": task} if "task" in inspect.signature(target).parameters else {}
    try:
        return hydra.utils.instantiate(spec, **extra)
    except InstantiationException as e:
        cause = e.__cause__ or e
        raise ConfigError(f"noise={cfg.noise.name} ({spec['_target_']}): {' '.join(str(cause).split())}") from e


class _DropVendorTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def quiet_lightning() -> None:
    """Lightning adds its own console handler (on the `lightning` logger); Hydra already logs the root logger:
    print each line once, without the vendor's advertising tip."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
        lg.propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropVendorTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropVendorTips())
    # the reference model is frozen in eval mode on purpose
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # Lightning vs torch 2.13


def config_tree(cfg: DictConfig, choices: dict[str, Any]) -> str:
    """The composed config as a compact tree: one line per node, `key=value` leaves, group options named.

    E.g. ``  algo (dvpo): name=dvpo adv_estimator=dist_gae gamma=1.0 ...``; nested nodes are flattened with
    dots (``dist.kappa=0.02``). Values are resolved where they can be (a run folder that only Hydra's runtime
    knows stays as written)."""

    def leaves(node: Any, prefix: str = "") -> list[str]:
        if isinstance(node, dict):
            return [x for k, v in node.items() for x in leaves(v, f"{prefix}{k}.")]
        return [f"{prefix[:-1]}={node}"]

    lines = []
    for key in cfg:
        node = cfg._get_node(key)
        try:
            value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else cfg[key]
        except Exception:  # noqa: BLE001 - an interpolation only Hydra's runtime can resolve
            value = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node._value()
        option = choices.get(str(key))
        head = f"  {key}" + (f" ({option})" if isinstance(option, str) and option != str(key) else "")
        if isinstance(value, dict):
            body = " ".join(leaves(value)) or "{}"
            lines.append(textwrap.fill(body, width=118, initial_indent=f"{head}: ", subsequent_indent="      "))
        else:
            lines.append(f"{head}: {value}")
    return "\n".join(lines)


def run_job(cfg: DictConfig) -> float | None:
    """`run` as `python -m dvpo_lab` calls it.

    A user error (`ConfigError`: a bad value, bad data, a folder that is not this run's) is one line on the log
    and exit status 2 in a single run. In a multirun, a job that raises does not stop the sweep: its error (with
    the traceback when it is a bug) goes to `failed.txt` in its folder (the report lists it), nothing it wrote
    is removed, the sweeper gets NaN, and the sweep exits non-zero at the end naming the failed jobs
    (`dvpo_lab.hydra_callbacks`). `HYDRA_FULL_ERROR=1` raises everything as is. Ctrl-C is not caught."""
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    failed = Path(cfg.paths.output_dir) / FAILED
    try:
        result = run(cfg)
    except Exception as e:
        finish_loggers(failed=True)
        user_error = isinstance(e, ConfigError)
        if not multirun:
            if user_error and os.environ.get("DVPO_LAB_FULL_ERROR") != "1":
                log.error("%s", e)
                _drop_claimed_folder(Path(cfg.paths.output_dir))
                raise SystemExit(2) from None
            raise
        if not isinstance(e, FolderTaken):  # that folder is another run's: leave it as it is
            failed.parent.mkdir(parents=True, exist_ok=True)
            failed.write_text(f"{type(e).__name__}: {e}\n" + ("" if user_error else f"\n{traceback.format_exc()}"))
        log.error("job failed: %s: %s; the sweep goes on", type(e).__name__, e)
        return math.nan
    finally:  # the job's W&B run ends with it (also on Ctrl-C), so the next job in this process gets its own
        finish_loggers(failed=sys.exc_info()[0] is not None)
    failed.unlink(missing_ok=True)
    return result


def _drop_claimed_folder(out_dir: Path) -> None:
    """Remove the run folder Hydra's default name claimed for a run refused at start, when it holds nothing but
    that run's log (the error was printed): refused runs leave no near-empty folders. A folder the user named
    (`hydra.run.dir=`) is left as it is."""
    from dvpo_lab.hydra_callbacks import CLAIMED

    if str(out_dir) not in CLAIMED:
        return
    entries = list(out_dir.iterdir()) if out_dir.is_dir() else []
    if entries and all(p.is_file() and p.suffix == ".log" for p in entries):
        shutil.rmtree(out_dir, ignore_errors=True)


def finished_metric(cfg: DictConfig, out_dir: Path) -> float | None:
    """With `resume=true`: the metric of a run this folder already finished with this same config (None if
    there is none; `check_run_folder` has already refused a folder of another config)."""
    summ = out_dir / "summary.json"
    if not summ.exists():
        return None
    s = json.loads(summ.read_text())
    log.info("resume=true: %s already finished (final val/acc %.4f); skipping it", out_dir, s["final/val_acc"])
    return summary_metric(cfg, s)


def summary_metric(cfg: DictConfig, summary: dict) -> float | None:
    """The number a sweeper optimises (`optimized_metric`) out of a run's summary."""
    return summary["final/val_acc"] if cfg.optimized_metric == "val/acc" else summary.get(cfg.optimized_metric)


def run(cfg: DictConfig) -> float | None:
    """One run: checks, warm-start (cached), then RL (`mode=train`), only the warm-start (`sft`) or an
    evaluation (`eval`). Returns the metric a sweeper optimises.

    Raises:
        ConfigError: every config value that cannot work, before any data, warm-start or model is loaded.
    """
    quiet_lightning()
    hydra_on = HydraConfig.initialized()
    choices = dict(HydraConfig.get().runtime.choices) if hydra_on else {}
    overrides = list(HydraConfig.get().overrides.task) if hydra_on else []
    import_extra_modules(cfg.get("extra_modules"))  # the user's algorithms and _target_s, before the checks
    batch_line = check_config(cfg, choices, overrides)
    check_trainer(cfg)
    if progress_settings(cfg)[0] != "bar":
        # transformers 5 draws a tqdm bar in every from_pretrained ("Loading weights") and save_pretrained ("Writing
        # model shards"; both through transformers.utils.logging.tqdm): a run that reports progress as log lines
        # (piped, a file, CI) keeps them out of its output, as under transformers 4
        hf_logging.disable_progress_bar()
    fingerprint = config_fingerprint(cfg)  # before anything below fills in derived values
    out_dir = Path(cfg.paths.output_dir)
    check_run_folder(cfg, out_dir, fingerprint)
    if cfg.resume and cfg.mode == "train":
        done = finished_metric(cfg, out_dir)
        if done is not None:
            return done
        if cfg.ckpt_path is None and (out_dir / "checkpoints" / "last.ckpt").exists():
            cfg.ckpt_path = "last"  # resolve_ckpt_path takes the folder's own checkpoint first
    record_run(cfg, out_dir, fingerprint)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    os.environ.setdefault("WANDB_SILENT", "true")
    if not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")  # never prompt for a key
    log.info("run folder: %s", out_dir.resolve())
    log.info("config (full: .hydra/config.yaml in the run folder):\n%s", config_tree(cfg, choices))
    log.info(batch_line)
    if cfg.model.gguf_file and not cfg.model.name_or_path:  # offline pretrained weights (model=smollm2-135m)
        cfg.model.name_or_path = str(convert_gguf(cfg.model.gguf_file, cfg.paths.cache_dir))
    context = model_context(cfg)
    tokenizer = build_tokenizer(cfg.model)
    task = make_task(cfg, tokenizer)
    check_prompt_budget(cfg, task.max_response_len, context)
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
    loggers = build_loggers(cfg, out_dir)  # csv/metrics.csv always; W&B: this job's own run, config, id
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=callbacks,
        max_epochs=cfg.total_steps,
        check_val_every_n_epoch=cfg.eval_every,
        _convert_="partial",
    )
    if cfg.mode == "eval":
        ckpt = resolve_ckpt_path(cfg, out_dir)
        trainer.validate(module, dm, ckpt_path=ckpt, verbose=False)
        acc = module.history[-1]["val/acc"] if module.history else math.nan
        log.info("val/acc = %.4f on %d clean test problems", acc, len(module.eval_problems))
        return acc
    module.fingerprint = fingerprint
    ckpt = resolve_ckpt_path(cfg, out_dir, fingerprint)
    # rank 0 alone moves and merges metrics.csv (ddp, fsdp: the other ranks re-run this script, later)
    resumed_from = prepare_resume(ckpt, out_dir) if ckpt and not is_secondary_rank() else None
    if ckpt is None:
        trainer.validate(module, dm, verbose=False)  # initial clean accuracy, logged at step 0
    trainer.fit(module, dm, ckpt_path=ckpt)
    if not module.history or module.history[-1]["step"] != cfg.total_steps:
        trainer.validate(module, dm, verbose=False)
    if resumed_from is not None:
        merge_resumed_metrics(out_dir, resumed_from)
    export_run(cfg, module, out_dir, ckpt)  # hf/final/ (hf/best/ is written during training)
    return summarize(cfg, module, out_dir)


def summarize(cfg: DictConfig, module: RLModule, out_dir: Path) -> float:
    hist = module.history
    initial = hist[0]["val/acc"] if hist and hist[0]["step"] == 0 else math.nan
    final = hist[-1]["val/acc"] if hist else math.nan
    summary = {
        "algo": cfg.algo.name,
        "task": cfg.task.name,
        "noise": cfg.noise.name,
        "seed": cfg.seed,
        "total_steps": cfg.total_steps,
        "initial/val_acc": initial,
        "final/val_acc": final,
        "best/val_acc": max((h["val/acc"] for h in hist), default=math.nan),
        "best/step": best_step(hist),
        "history": hist,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    log_summary(module.loggers, summary)
    if module.trainer.is_global_zero:
        w = 26
        lines = [
            "",
            f"{'run':<{w}}{cfg.algo.name} | task={cfg.task.name} | noise={cfg.noise.name} | seed={cfg.seed}",
            f"{'clean greedy accuracy':<{w}}initial {initial:6.1%}  ->  final {final:6.1%}  "
            f"({100 * (final - initial):+.1f} points)",
            f"{'RL steps':<{w}}{cfg.total_steps}",
            f"{'run folder':<{w}}{out_dir}",
        ]
        if (out_dir / "hf" / "final").is_dir():
            lines.append(
                f"{'Hugging Face folders':<{w}}hf/final" + (" hf/best" if (out_dir / "hf" / "best").is_dir() else "")
            )
        lines.append("")
        log.info("\n".join(lines))
    return summary_metric(cfg, summary)
