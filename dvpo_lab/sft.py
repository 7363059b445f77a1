"""Supervised warm-start: train the policy on the task's worked solutions, cache it on disk.

The cache folder is keyed by everything that changes the result (model, task, SFT settings), so a run
reuses an earlier warm-start and parallel jobs wait on a file lock instead of training it twice. The
checkpoint is a plain `save_pretrained` folder, loaded back with `from_pretrained` like any hub model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import lightning as L
import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, RandomSampler

from dvpo_lab.callbacks import sft_progress
from dvpo_lab.config import ConfigError
from dvpo_lab.evaluate import greedy_scores
from dvpo_lab.models.build import build_policy, build_tokenizer
from dvpo_lab.models.pretrained import savable
from dvpo_lab.multiturn import encode_dialogue_demo
from dvpo_lab.rollout import prompt_budget
from dvpo_lab.tasks import Problem, Task, task_arguments

log = logging.getLogger(__name__)
CACHE_VERSION = 1
# The wsd trigger's smoothing: an EMA of the per-batch loss with a ~20-step window. At batch 64 on arith_teacher the
# per-batch loss scatters by ~30 % around its trend, too much to compare one batch with a threshold.
LOSS_EMA = 0.95


def target_acc(cfg: DictConfig) -> float | None:
    """The warm-start's stopping accuracy: the task's `sft_target_acc` if set, else `sft.target_acc`."""
    task_target = cfg.task.get("sft_target_acc")
    return task_target if task_target is not None else cfg.sft.target_acc


def sft_max_steps(cfg: DictConfig) -> int:
    """The warm-start's step budget: the task's own (`task.sft_max_steps`) when it sets one, else `sft.max_steps`."""
    return cfg.task.get("sft_max_steps") or cfg.sft.max_steps


def warm_start_key(cfg: DictConfig) -> str:
    """Hash of the config fields that determine the warm-started weights."""
    spec = {
        "v": CACHE_VERSION,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "task": task_arguments(cfg.task),  # every constructor argument, defaults included (one key per task)
        "sft": OmegaConf.to_container(cfg.sft, resolve=True),
    }
    spec["model"].pop("warm_start", None)
    spec["model"].pop("gradient_checkpointing", None)  # the same weights either way
    # Fields added after caches existed are left out at their defaults, so those caches stay valid.
    for key, default in (("gguf_file", None), ("dtype", "float32")):
        if spec["model"].get(key, default) == default:
            spec["model"].pop(key, None)
    if not spec["model"].get("lora", {}).get("enabled", False):
        spec["model"].pop("lora", None)
    for key, default in (("lr_schedule", "constant"), ("min_lr_ratio", 0.0), ("weight_decay", 0.0)):
        if spec["sft"].get(key, default) == default:
            spec["sft"].pop(key, None)
    if spec["sft"].get("lr_schedule") != "wsd":  # the decay phase's keys only act under wsd
        spec["sft"].pop("decay_steps", None)
        spec["sft"].pop("decay_below_loss", None)
    for key in ("sft_batch_size", "sft_target_acc"):
        if spec["task"].get(key) is None:
            spec["task"].pop(key, None)
    if cfg.rollout.max_new_tokens is not None:  # the accuracy checks see the RL run's prompt budget
        spec["rollout_max_new_tokens"] = cfg.rollout.max_new_tokens
    blob = json.dumps(spec, sort_keys=True).encode()
    return f"{cfg.task.name}-{cfg.model.name}-{hashlib.sha256(blob).hexdigest()[:12]}"


def _encode_demos(
    tokenizer, task: Task, demos: list[Problem], context: int | None = None
) -> list[tuple[list[int], list[int]]]:
    """(token ids, loss mask) per demonstration: the loss covers the response (a multi-turn task's
    assistant turns only, not the simulated user's).

    A demonstration longer than the model's `context` keeps its last tokens, as RL prompts do (the prompt's
    start goes first; a response longer than the context alone is cut at its end); how many were cut is
    logged once as a warning."""
    if task.multi_turn:
        return [encode_dialogue_demo(tokenizer, task, p) for p in demos]
    out, cut = [], 0
    for p in demos:
        prompt = tokenizer(p.prompt, add_special_tokens=False)["input_ids"]
        resp = tokenizer(p.solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if context is not None and len(prompt) + len(resp) > context:
            cut += 1
            resp = resp[:context]
            prompt = prompt[len(prompt) - (context - len(resp)) :] if context > len(resp) else []
        out.append((prompt + resp, [0] * len(prompt) + [1] * len(resp)))
    if cut:
        log.warning(
            "warm-start: %d of %d demonstrations exceed the model's %d-token context and were cut "
            "(prompt start first); use a model with a longer context or shorter demonstrations",
            cut,
            len(demos),
            context,
        )
    return out


def _collate(pad_id: int):
    def collate(batch: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad_id)
        labels = torch.full((len(batch), width), -100)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (seq, loss_mask) in enumerate(batch):  # right padding: positions start at 0 for every row
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, : len(seq)] = torch.where(torch.tensor(loss_mask, dtype=torch.bool), ids[i, : len(seq)], -100)
            attn[i, : len(seq)] = 1
        return {"input_ids": ids, "attention_mask": attn, "labels": labels}

    return collate


def lr_factor(step: int, *, sft: DictConfig, max_steps: int, decay_start: int | None = None) -> float:
    """The warm-start's learning rate at optimizer step `step` (0-based) as a fraction of `sft.lr`.

    A linear warmup over `sft.warmup_steps`, then:
    - `constant`: 1;
    - `cosine`: a cosine from 1 to `sft.min_lr_ratio` at `max_steps`;
    - `wsd` (warmup-stable-decay, Hu et al. 2024, arXiv 2404.06395): 1 until `decay_start`, then a cosine from 1 to
      `sft.min_lr_ratio` over `sft.decay_steps`, and the floor after. `decay_start` is the step the loss trigger
      fired (`sft.decay_below_loss`); None = not fired (yet), which decays at `max_steps - sft.decay_steps`.
    """
    warmup = max(1, sft.warmup_steps)
    if step + 1 < warmup:
        return (step + 1) / warmup
    schedule = sft.get("lr_schedule", "constant")
    floor = sft.get("min_lr_ratio", 0.0)
    if schedule == "cosine":
        progress = min(1.0, (step + 1 - warmup) / max(1, max_steps - warmup))
    elif schedule == "wsd":
        start = decay_start if decay_start is not None else max(warmup, max_steps - sft.decay_steps)
        if step < start:
            return 1.0
        progress = min(1.0, (step - start + 1) / sft.decay_steps)
    else:
        return 1.0
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class SFTModule(L.LightningModule):
    """Next-token loss on response tokens only; stops early once greedy accuracy reaches `sft.target_acc`, or
    `sft.decay_steps` after the wsd schedule's loss trigger (`sft.decay_below_loss`)."""

    def __init__(self, policy, tokenizer, task: Task, cfg: DictConfig, max_steps: int) -> None:
        super().__init__()
        self.policy, self.tokenizer, self.task, self.cfg = policy, tokenizer, task, cfg
        self.max_steps = max_steps
        self.eval_problems = task.test_problems()[: cfg.sft.eval_limit]
        self.last_acc = float("nan")
        self.curve: list[tuple[int, float]] = []  # (SFT step, greedy accuracy), saved in warmstart.json
        self.loss_ema = float("nan")  # the smoothed training loss the wsd trigger watches
        self.decay_start: int | None = None  # wsd: the first decay step, once the loss trigger has fired

    def training_step(self, batch, batch_idx):
        loss = self.policy(**batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"sft/loss is {loss.item()} at step {self.global_step}; lower sft.lr")
        self.log("sft/loss", loss, prog_bar=True)
        step = self.global_step + 1
        sft = self.cfg.sft
        stop_at = self._wsd_stop_at(loss.item(), step) if sft.get("lr_schedule") == "wsd" else self.max_steps
        if step % sft.eval_every == 0 or step == stop_at:
            self.last_acc = self.accuracy()
            self.curve.append((step, self.last_acc))
            self.log("sft/acc", self.last_acc, prog_bar=True)
            target = target_acc(self.cfg)
            if target is not None and self.last_acc >= target:
                log.info("warm-start reached acc %.3f >= target %.3f at step %d", self.last_acc, target, step)
                self.trainer.should_stop = True
        if step == stop_at < self.max_steps:
            self.trainer.should_stop = True
        return loss

    def _wsd_stop_at(self, loss: float, step: int) -> int:
        """Update the smoothed loss (EMA with `LOSS_EMA`), fire the wsd trigger once it falls below
        `sft.decay_below_loss` in the stable phase, and return the step the warm-start stops at: `sft.decay_steps`
        after the trigger, else `max_steps`. `step` is 1-based (optimizer steps done, this one included)."""
        sft = self.cfg.sft
        self.loss_ema = loss if self.loss_ema != self.loss_ema else LOSS_EMA * self.loss_ema + (1 - LOSS_EMA) * loss
        trigger = sft.get("decay_below_loss")
        if (
            trigger is not None
            and self.decay_start is None
            and sft.warmup_steps <= step < self.max_steps - sft.decay_steps  # only in the stable phase
            and self.loss_ema < trigger
        ):
            self.decay_start = step  # the next optimizer step (0-based index `step`) is the first decay step
            log.info(
                "warm-start: loss EMA %.4f < sft.decay_below_loss=%g at step %d: decaying for %d steps",
                self.loss_ema,
                trigger,
                step,
                sft.decay_steps,
            )
        if self.decay_start is None:
            return self.max_steps
        return min(self.max_steps, self.decay_start + sft.decay_steps)

    def accuracy(self) -> float:
        # the RL run's budgets, so this accuracy and RL step-0 val/acc see the same (possibly truncated) prompts
        max_new_tokens = self.cfg.rollout.max_new_tokens or self.task.max_response_len
        scores, _ = greedy_scores(
            self.policy,
            self.tokenizer,
            self.task,
            self.eval_problems,
            batch_size=256,
            max_new_tokens=max_new_tokens,
            max_prompt_len=prompt_budget(self.policy, max_new_tokens),
        )
        return float(scores.mean()) if len(scores) else float("nan")

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            self.policy.parameters(), lr=self.cfg.sft.lr, weight_decay=self.cfg.sft.get("weight_decay", 0.0)
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, sft=self.cfg.sft, max_steps=self.max_steps, decay_start=self.decay_start)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def warm_start(cfg: DictConfig, task: Task) -> Path:
    """Return the folder of the warm-started policy, training it first if the cache has none."""
    folder = Path(cfg.paths.cache_dir) / "warmstart" / warm_start_key(cfg)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "warmstart.json").exists():
            info = json.loads((folder / "warmstart.json").read_text())
            log.info("warm-start: reusing %s (acc %.3f after %d steps)", folder, info["acc"], info["steps"])
            _warn_if_short_of_teacher(cfg, task, info["acc"])
            return folder
        max_steps = sft_max_steps(cfg)
        batch_size = cfg.task.get("sft_batch_size") or cfg.sft.batch_size
        log.info("warm-start: training %s for up to %d steps (cached for later runs)", folder.name, max_steps)
        tokenizer = build_tokenizer(cfg.model)
        policy = build_policy(cfg.model, tokenizer)
        demos = [p for p in task.sft_problems() if p.solution]
        if not demos:
            raise ConfigError(
                f"task {cfg.task.name!r} has no demonstrations for the warm-start (no problem has a "
                "solution); set model.warm_start=false"
            )
        gen = torch.Generator().manual_seed(cfg.sft.seed)
        loader = DataLoader(
            _encode_demos(tokenizer, task, demos, getattr(policy.config, "max_position_embeddings", None)),
            batch_size=batch_size,
            sampler=RandomSampler(
                range(len(demos)), replacement=True, num_samples=max_steps * batch_size, generator=gen
            ),
            collate_fn=_collate(tokenizer.pad_token_id),
        )
        module = SFTModule(policy, tokenizer, task, cfg, max_steps)
        trainer = L.Trainer(
            max_steps=max_steps,
            accelerator="cpu" if cfg.trainer.accelerator == "cpu" else "auto",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            gradient_clip_val=1.0,
            callbacks=[sft_progress(cfg)],
            num_sanity_val_steps=0,
        )
        t0 = time.perf_counter()
        L.seed_everything(cfg.sft.seed, verbose=False)
        trainer.fit(module, train_dataloaders=loader)
        if module.last_acc != module.last_acc:  # nan: never evaluated (tiny max_steps)
            module.last_acc = module.accuracy()
        tmp = folder.with_name(folder.name + ".tmp")
        savable(policy).save_pretrained(tmp)  # LoRA adapters merged into a plain model
        tokenizer.save_pretrained(tmp)
        info = {
            "acc": module.last_acc,
            "steps": trainer.global_step,
            "seconds": time.perf_counter() - t0,
            "demos": len(demos),
            "curve": module.curve,
        }
        if cfg.sft.get("lr_schedule") == "wsd":
            info["decay_start"] = module.decay_start  # None: the loss trigger never fired (or none was set)
            info["loss_ema"] = module.loss_ema
            trigger = cfg.sft.get("decay_below_loss")
            if module.decay_start is None and trigger is not None and max_steps > cfg.sft.decay_steps:
                log.warning(
                    "warm-start: the smoothed loss (%.4f) never fell below sft.decay_below_loss=%g within "
                    "sft.max_steps=%d, so the decay ran over the last sft.decay_steps=%d steps instead; raise "
                    "sft.max_steps or try another sft.seed",
                    module.loss_ema,
                    cfg.sft.decay_below_loss,
                    max_steps,
                    cfg.sft.decay_steps,
                )
        (tmp / "warmstart.json").write_text(json.dumps(info, indent=1))
        tmp.rename(folder)
        log.info(
            "warm-start: acc %.3f after %d steps, %.0f s -> %s", info["acc"], info["steps"], info["seconds"], folder
        )
        _warn_if_short_of_teacher(cfg, task, info["acc"])
        return folder


def _warn_if_short_of_teacher(cfg: DictConfig, task: Task, acc: float, margin: float = 0.1) -> bool:
    """Warn (and return True) when a warm-start run to a fixed step count (no `sft.target_acc`) ends more than
    `margin` below the accuracy its imperfect teacher converges to (`task.teacher_accuracy()`, tasks that have
    one, on the same `sft.eval_limit` test problems): the accuracy jump has not come yet, so the run starts RL
    far below the plateau its figures assume. On `task=arith_teacher` the jump comes at step ~400 to ~1300 with
    the seed and the float path under its wsd recipe (docs/testbed.md); a fixed budget can end before it."""
    teacher = getattr(task, "teacher_accuracy", None)
    if teacher is None or target_acc(cfg) is not None or acc != acc:
        return False
    level = teacher(task.test_problems()[: cfg.sft.eval_limit])
    if level >= 1.0 or acc >= level - margin:
        return False
    log.warning(
        "warm-start: greedy accuracy %.1f %% is far below the %.1f %% its teacher's demonstrations converge to: "
        "the accuracy jump has not come within sft.max_steps=%d on this seed and float path, so RL starts below "
        "the plateau; rerun with another sft.seed (e.g. sft.seed=%d) or a larger sft.max_steps",
        100 * acc,
        100 * level,
        sft_max_steps(cfg),
        cfg.sft.seed + 1,
    )
    return True
