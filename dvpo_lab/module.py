"""The LightningModule: holds the policy, the critic and the reference; one RL step per Lightning epoch.

It orchestrates only (rollout -> reward -> noise -> scoring pass -> advantages -> update); the math lives
in `dvpo_lab.algos`. Randomness per step is keyed by (seed, step, rank), so a resumed run draws exactly
what an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel

from dvpo_lab import algos, fsdp, seeding
from dvpo_lab.algos.core import logprob_diff, rollout_is_weights
from dvpo_lab.config import ConfigError
from dvpo_lab.evaluate import greedy_scores, metric_sums
from dvpo_lab.export import export_best
from dvpo_lab.models.build import build_critic, build_reference
from dvpo_lab.multiturn import sample_for_task
from dvpo_lab.noise import RewardNoise
from dvpo_lab.rollout import (
    Rollout,
    as_sampler,
    fast_sampler_reason,
    prompt_budget,
    response_logprobs,
    response_values,
    sample,
)
from dvpo_lab.tasks import Task

SAMPLES_LOGGED = 16
SAMPLE_COLUMNS = ["step", "prompt", "response", "answer", "reward_clean", "reward_noisy"]
log = logging.getLogger(__name__)


class RLModule(L.LightningModule):
    def __init__(self, cfg: DictConfig, policy, tokenizer, task: Task, noise: RewardNoise) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.cfg, self.acfg, self.rcfg = cfg, cfg.algo, cfg.rollout
        self.tokenizer, self.task, self.noise = tokenizer, task, noise
        self.policy = policy
        self.spec = algos.get_algo(self.acfg.adv_estimator)  # what the algorithm needs and its two functions
        self.critic_spec = algos.critic_from(cfg.critic)  # the value head's shape and reading
        self.critic = (
            build_critic(policy, self.critic_spec.n_out, self.critic_spec.head_init_std)
            if self.critic_spec.kind != "none"
            else None
        )
        self.needs_ref = self.acfg.use_kl_in_reward or self.acfg.use_kl_loss
        # the frozen initial policy also serves noise that labels prompts from its samples (majority_vote)
        self.reference = build_reference(policy) if self.needs_ref or noise.needs_policy_samples else None
        if self.acfg.kl_ctrl == "adaptive":
            self.kl_ctrl = algos.AdaptiveKLController(self.acfg.kl_coef, self.acfg.kl_target, self.acfg.kl_horizon)
        else:
            self.kl_ctrl = algos.FixedKLController(self.acfg.kl_coef)
        self.max_new_tokens = self.rcfg.max_new_tokens or task.max_response_len
        self.max_prompt_len = prompt_budget(policy, self.max_new_tokens)
        self.eval_problems = task.test_problems()[: self.rcfg.eval_limit]
        self.sampler = as_sampler(self.rcfg.engine, self.rcfg.get("vllm"))  # the rollout engine (rollout.engine)
        self.reuse_logprobs = self.sampler_logprobs_exact() if self.rcfg.reuse_sampler_logprobs else False
        self.history: list[dict[str, float]] = []  # val/acc per evaluated step, saved in checkpoints
        self.fingerprint: str | None = None  # the run's config fingerprint (dvpo_lab.resume), saved in checkpoints
        self._val_scores: list[torch.Tensor] = []
        self._val_metrics: list[dict[str, torch.Tensor]] = []

    # ------------------------------------------------------------------ setup
    def configure_optimizers(self):
        a = self.acfg
        opts = [torch.optim.AdamW(self.policy.parameters(), lr=a.actor_lr, weight_decay=a.weight_decay)]
        if self.critic is not None:
            opts.append(torch.optim.AdamW(self.critic.parameters(), lr=a.critic_lr, weight_decay=a.weight_decay))
        return opts

    def configure_model(self) -> None:
        """trainer=fsdp (Lightning's ModelParallelStrategy): shard the policy, the critic and the reference over the
        data-parallel mesh (`dvpo_lab.fsdp.shard`), before the optimizers are built. Lightning calls this hook before
        every validate and fit; the modules are sharded once. Other strategies: nothing to do."""
        from lightning.pytorch.strategies import ModelParallelStrategy

        if not isinstance(self.trainer.strategy, ModelParallelStrategy) or fsdp.is_sharded(self.policy):
            return
        mesh = self.device_mesh["data_parallel"]
        for m in (self.policy, self.critic, self.reference):
            if m is not None:
                fsdp.shard(m, mesh)

    def sampler_logprobs_exact(self) -> bool:
        """Whether the fast sampler's log-probs stand in for the old-log-prob pass over the rollout.

        They are the same function of the same weights (the pass runs before any update of this step, in
        every ppo epoch), computed by a cached decode instead of one full forward: equal up to float32
        rounding. Not with dropout (the pass runs in train mode), low precision (rounding of the cached
        path differs visibly), dialogues (played with generate) or a model the fast sampler falls back on.
        """
        why = fast_sampler_reason(self.policy, self.sampler)
        if why is None and self.task.multi_turn:
            why = "multi-turn task"
        if why is None and any(p.dtype != torch.float32 for p in self.policy.parameters()):
            why = "policy is not float32"
        if why is None and (
            getattr(self.policy.config, "attention_dropout", 0.0)
            or any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in self.policy.modules())
        ):
            why = "policy has dropout"
        if why is not None:
            log.info("old log-probs: recomputed by a forward pass (%s)", why)
        return why is None

    @property
    def rl_step(self) -> int:
        return self.current_epoch

    def step_seed(self, salt: int = 0) -> int:
        """The seed of this step's draws on this rank (salt 0: rollout sampling, 1: the minibatch order)."""
        return seeding.step_seed(self.cfg.seed, self.rl_step, self.global_rank, salt)

    def prompt_indices(self) -> list[int]:
        """Train indices for this step and rank: a seeded permutation of the split, epoch after epoch."""
        B, world = self.rcfg.prompts_per_step, self.trainer.world_size
        start = (self.rl_step * world + self.global_rank) * B
        n = self.task.num_train()
        if n is None:  # generated task: a fresh stream
            return list(range(start, start + B))
        out = []
        for k in range(start, start + B):
            epoch, pos = divmod(k, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch))
            out.append(int(perm[pos]))
        return out

    # ------------------------------------------------------------------ one RL step
    def training_step(self, batch, batch_idx):
        # Under DDP the gradients are averaged explicitly in optimizer_step (actor and critic losses touch
        # disjoint parameters, which DDP's reducer cannot follow across several backward passes per step).
        ddp = self.trainer.strategy.model
        with ddp.no_sync() if isinstance(ddp, DistributedDataParallel) else nullcontext():
            self.rl_step_body()

    def policy_for_rollout(self):
        """The context a rollout of the policy runs in: `fsdp.gathered(policy)` (full weights held for the decode), a
        no-op with rollout.engine=vllm, whose engine holds its own copy: its push reads the sharded weights one
        tensor at a time (`fsdp.full_tensor`), so no full copy of the policy is gathered. Collective under FSDP."""
        return nullcontext() if self.sampler.holds_weights else fsdp.gathered(self.policy)

    def rl_step_body(self) -> None:
        a, G = self.acfg, self.rcfg.samples_per_prompt
        timing: dict[str, float] = {}
        t0 = time.perf_counter()
        problems = self.task.train_problems(self.prompt_indices())
        rep = [p for p in problems for _ in range(G)]
        # under autocast (trainer.precision=bf16-mixed) the cached decode and the full forward round differently
        reuse = self.reuse_logprobs and not torch.is_autocast_enabled(self.device.type)
        with self.policy_for_rollout():  # sharded (trainer=fsdp): decode with full weights, freed after
            t_sync = time.perf_counter()  # an engine with its own copy of the weights (vllm) takes the new ones
            self.sampler.update_weights(self.policy, self.global_step)
            timing["update_weights"] = time.perf_counter() - t_sync
            ro = sample_for_task(
                self.policy,
                self.tokenizer,
                self.task,
                rep,
                max_new_tokens=self.max_new_tokens,
                temperature=self.rcfg.temperature,
                top_k=self.rcfg.top_k,
                top_p=self.rcfg.top_p,
                seed=self.step_seed(),
                max_prompt_len=self.max_prompt_len,
                sampler=self.sampler,
                min_new_tokens=self.rcfg.min_new_tokens,
                # the engine's own log-probs: the old ones when reused, else compared with the trainer's below
                return_logprobs=self.sampler.provides_logprobs,
            )
        timing["gen"] = time.perf_counter() - t0 - timing["update_weights"]

        t1 = time.perf_counter()
        clean = self.task.score(ro.texts, rep).to(self.device)
        group_index = torch.arange(len(problems), device=self.device).repeat_interleave(G)
        offset = self.global_rank * len(rep)
        if self.noise.needs_policy_samples:
            self.noise.prepare(problems, self.sample_initial, seed=self.cfg.seed)
        score, noise_metrics = self.noise.apply(
            clean,
            seed=self.cfg.seed,
            step=self.rl_step,
            group_index=group_index + self.global_rank * len(problems),
            sample_offset=offset,
            responses=ro.texts,
            problems=rep,
        )
        score = score.to(self.device, torch.float32)
        timing["reward"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        mask = ro.response_mask
        with torch.no_grad():
            if reuse and ro.logprobs is not None:  # the engine's log-probs are the old ones: nothing to compare
                old_logp, rollout_logp = ro.logprobs, None
            else:  # the training forward recomputes them (as veRL), the engine's are compared with them
                old_logp, rollout_logp = response_logprobs(self.policy, ro, self.rcfg.temperature)[0], ro.logprobs
            mismatch, is_weights = self.rollout_mismatch(old_logp, rollout_logp, mask)
            ref_logp = response_logprobs(self.reference, ro, self.rcfg.temperature)[0] if self.needs_ref else None
            old_view = self.critic_spec.view(response_values(self.critic, ro)) if self.critic is not None else None
        values = self.critic_spec.estimator_values(old_view) if old_view is not None else None
        kl = algos.kl_penalty(old_logp, ref_logp, a.kl_penalty) if a.use_kl_in_reward else None
        token_rewards = algos.build_token_rewards(score, mask, kl, self.kl_ctrl.value)
        adv, returns = self.spec.estimator(token_rewards, mask, values=values, group_index=group_index, config=a)
        timing["old_log_prob"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        metrics = self.update(ro, old_logp, ref_logp, adv, returns, old_view, is_weights)
        timing["update"] = time.perf_counter() - t3
        if kl is not None:
            seq_kl = algos.masked_mean(kl, mask, dim=-1).mean()
            self.kl_ctrl.update(float(seq_kl), n_steps=len(rep))
            metrics["actor/reward_kl_penalty"] = float(seq_kl)
            metrics["actor/reward_kl_penalty_coeff"] = self.kl_ctrl.value

        n_tokens = float(mask.sum())
        resp_len, prompt_len = mask.sum(-1), ro.prompt_lengths.float()
        timing["step"] = time.perf_counter() - t0
        metrics.update(
            {
                "critic/score/mean": float(score.mean()),
                "critic/score_clean/mean": float(clean.mean()),
                "critic/advantages/mean": float(algos.masked_mean(adv, mask)),
                "critic/advantages/max": float(adv[mask.bool()].max()) if n_tokens else 0.0,
                "critic/advantages/min": float(adv[mask.bool()].min()) if n_tokens else 0.0,
                "critic/returns/mean": float(algos.masked_mean(algos.Critic.mean_value(returns), mask)),
                # trained tokens (a dialogue's assistant turns); clip_ratio: cut off by max_new_tokens before the end
                "response_length/mean": float(resp_len.mean()),
                "response_length/max": float(resp_len.max()),
                "response_length/min": float(resp_len.min()),
                "response_length/clip_ratio": float(ro.response_clipped.float().mean()),
                # prompt tokens after truncation; clip_ratio: prompts that lost their first tokens to the budget
                "prompt_length/mean": float(prompt_len.mean()),
                "prompt_length/max": float(prompt_len.max()),
                "prompt_length/min": float(prompt_len.min()),
                "prompt_length/clip_ratio": float(ro.prompt_clipped.float().mean()),
                "perf/tokens_per_s": n_tokens / timing["step"],
                **noise_metrics,
                **mismatch,
                **{f"timing_s/{k}": v for k, v in timing.items()},
            }
        )
        if values is not None:
            v_mean, r_mean = algos.Critic.mean_value(values), algos.Critic.mean_value(returns)
            metrics["critic/values/mean"] = float(algos.masked_mean(v_mean, mask))
            var_r = algos.masked_var(r_mean, mask)
            metrics["critic/vf_explained_var"] = float(1 - algos.masked_var(r_mean - v_mean, mask) / (var_r + 1e-8))
        if a.viz_every and self.global_rank == 0 and (self.rl_step % a.viz_every == 0):
            self.dump_advantages(ro, rep, clean, score, adv, values)
        if self.rl_step % self.cfg.eval_every == 0 and self.trainer.is_global_zero:
            self.log_samples(ro, rep, clean, score)
        self.log_rl(metrics)
        # the bar shows the (noisy) score the policy trains on and the clean one it is meant to improve
        self.log("reward", metrics["critic/score/mean"], prog_bar=True, logger=False)
        self.log("reward_clean", metrics["critic/score_clean/mean"], prog_bar=True, logger=False)

    def log_samples(self, ro: Rollout, rep, clean, score, n: int = SAMPLES_LOGGED) -> None:
        """A table of this step's first `n` generations with their clean and noisy (trained-on) reward, to every
        logger that takes tables (W&B: `samples`, one table per evaluation interval)."""
        loggers = [lg for lg in self.loggers if hasattr(lg, "log_table")]
        if not loggers:
            return
        rows = [
            [self.rl_step, rep[i].prompt, ro.texts[i], rep[i].answer, float(clean[i]), float(score[i])]
            for i in range(min(n, len(ro.texts)))
        ]
        for lg in loggers:
            lg.log_table(key="samples", columns=SAMPLE_COLUMNS, data=rows, step=self.rl_step)

    def dump_advantages(self, ro: Rollout, rep, clean, score, adv, values) -> None:
        """Per-token advantages of the first `algo.viz_samples` responses -> advantages/step_XXXXX.json
        (rendered by `python -m dvpo_lab.viz RUN_DIR ...`)."""
        n = min(self.acfg.viz_samples, ro.response_ids.shape[0])
        mean_v = algos.Critic.mean_value(values) if values is not None else None
        rows = []
        for i in range(n):
            pos = ro.response_mask[i].nonzero().squeeze(-1)  # trained tokens (a dialogue's assistant turns)
            row = {
                "prompt": rep[i].prompt,
                "answer": rep[i].answer,
                "tokens": [self.tokenizer.decode([t]) for t in ro.response_ids[i, pos].tolist()],
                "advantages": [round(float(x), 5) for x in adv[i, pos]],
                "reward": float(score[i]),
                "reward_clean": float(clean[i]),
            }
            if mean_v is not None:
                row["values"] = [round(float(x), 5) for x in mean_v[i, pos]]
            rows.append(row)
        out = Path(self.cfg.paths.output_dir) / "advantages"
        out.mkdir(parents=True, exist_ok=True)
        payload = {"algo": self.acfg.name, "step": self.rl_step, "seed": self.cfg.seed, "responses": rows}
        (out / f"step_{self.rl_step:05d}.json").write_text(json.dumps(payload))

    def sample_initial(self, prompts: list[str], n: int, seed: int, temperature: float) -> list[str]:
        """`n` responses per prompt (prompt-major) from the frozen initial policy: the noise's `Sampler`."""
        with fsdp.gathered(self.reference):
            return sample(
                self.reference,
                self.tokenizer,
                [p for p in prompts for _ in range(n)],
                max_new_tokens=self.max_new_tokens,
                temperature=temperature,
                seed=seed,
                max_prompt_len=self.max_prompt_len,
                sampler=self.sampler,
            ).texts

    def rollout_mismatch(
        self, old_logp: torch.Tensor, rollout_logp: torch.Tensor | None, mask: torch.Tensor
    ) -> tuple[dict[str, float], torch.Tensor | None]:
        """The engine-vs-trainer log-prob metrics and the `algo.rollout_is` weights of this rollout.

        Args:
            old_logp: [B, T] the training forward's log-probs (or the reused engine's), rollout_logp: [B, T] the
            engine's when they were not reused (None: reused, or an engine without log-probs), mask: [B, T].
        Returns:
            (metrics: `rollout/logprob_diff_{max,mean}` and with rollout_is `rollout_corr/rollout_is_*`, empty when
            there is nothing to compare, so that no dashboard shows a made-up 0; weights [B, T] or None).
        Raises:
            ConfigError: algo.rollout_is.enabled without engine log-probs here (a multi-turn task, or a fast sampler
            that fell back to generate); the start checks refuse the set-ups known from the config.
        """
        ris = self.acfg.rollout_is
        if rollout_logp is None:
            if ris.enabled:
                raise ConfigError(
                    f"algo.rollout_is.enabled=true: rollout.engine={self.sampler.name} returned no log-probs for this "
                    "rollout (a multi-turn task, or a model the engine falls back to generate for); set "
                    "algo.rollout_is.enabled=false"
                )
            return {}, None
        metrics = {f"rollout/{k}": float(v) for k, v in logprob_diff(old_logp, rollout_logp, mask).items()}
        if not ris.enabled:
            return metrics, None
        weights, is_m = rollout_is_weights(old_logp, rollout_logp, mask, ris.cap)
        return {**metrics, **{f"rollout_corr/{k}": float(v) for k, v in is_m.items()}}, weights

    def update(
        self, ro: Rollout, old_logp, ref_logp, adv, returns, old_view, is_weights: torch.Tensor | None = None
    ) -> dict[str, float]:
        """ppo_epochs x minibatches of actor and critic steps, one optimizer step each (the PPO update as veRL
        runs it). `is_weights` [B, T]: the `algo.rollout_is` weights of each token's policy-gradient loss."""
        a = self.acfg
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        actor_opt, critic_opt = opts[0], (opts[1] if len(opts) > 1 else None)
        n, mb = ro.input_ids.shape[0], self.rcfg.minibatch_size
        mask = ro.response_mask
        budget = self.max_new_tokens  # the Dr. GRPO modes' constant divisor (a dialogue's T is capped by it too)
        train_actor = self.rl_step >= a.critic_warmup
        sums: dict[str, float] = {}
        count = 0
        gen = torch.Generator().manual_seed(self.step_seed(salt=1))
        for _ in range(a.ppo_epochs):
            for rows in torch.randperm(n, generator=gen).to(self.device).split(mb):
                m = mask[rows]
                out: dict[str, torch.Tensor] = {}
                if train_actor:
                    logp, ent = response_logprobs(self.policy, ro, self.rcfg.temperature, with_entropy=True, rows=rows)
                    pg_loss, pg_m = algos.compute_policy_loss(
                        logp,
                        old_logp[rows],
                        adv[rows],
                        m,
                        a.clip_ratio_low,
                        a.clip_ratio_high,
                        a.clip_ratio_c,
                        a.loss_agg_mode,
                        budget,
                        rollout_is_weights=is_weights[rows] if is_weights is not None else None,
                    )
                    entropy = algos.agg_loss(ent, m, a.loss_agg_mode, budget)
                    loss = pg_loss - a.entropy_coeff * entropy
                    out.update(
                        {
                            "actor/pg_loss": pg_loss,
                            "actor/entropy": entropy,
                            "actor/pg_clipfrac": pg_m["pg_clipfrac"],
                            "actor/ppo_kl": pg_m["ppo_kl"],
                            "actor/pg_clipfrac_lower": pg_m["pg_clipfrac_lower"],
                        }
                    )
                    if a.use_kl_loss:
                        kl_loss = algos.agg_loss(
                            algos.kl_penalty(logp, ref_logp[rows], a.kl_loss_type), m, a.loss_agg_mode, budget
                        )
                        loss = loss + a.kl_loss_coef * kl_loss
                        out["actor/kl_loss"] = kl_loss
                    self.check_finite(out, ("actor/pg_loss", "actor/kl_loss", "actor/entropy"))
                    out["actor/grad_norm"] = self.optimizer_step(actor_opt, loss, self.policy)
                if critic_opt is not None:
                    view = self.critic_spec.view(response_values(self.critic, ro, rows=rows))
                    vf_loss, vf_m = self.spec.critic_loss(
                        view,
                        old_view[rows],
                        returns[rows],
                        m,
                        critic=self.critic_spec,
                        config=a,
                        loss_scale_factor=budget,
                    )
                    out.update({"critic/vf_loss": vf_loss.detach(), **{f"critic/{k}": v for k, v in vf_m.items()}})
                    self.check_finite(out, ("critic/vf_loss", *(k for k in out if k.startswith("critic/loss_"))))
                    out["critic/grad_norm"] = self.optimizer_step(critic_opt, vf_loss, self.critic)
                for k, val in out.items():
                    sums[k] = sums.get(k, 0.0) + float(val.detach() if torch.is_tensor(val) else val)
                count += 1
        metrics = {k: v / max(count, 1) for k, v in sums.items()}
        if "actor/kl_loss" in metrics:
            metrics["actor/kl"] = metrics["actor/kl_loss"]
        return metrics

    def optimizer_step(self, opt, loss: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        sharded = fsdp.is_sharded(module)  # FSDP already averaged (reduce-scattered) the gradients in backward
        if self.trainer.world_size > 1 and not sharded:  # every rank sampled its own rollouts: average their gradients
            self.all_reduce_grads(module)
        grad_norm = fsdp.grad_norm_value(torch.nn.utils.clip_grad_norm_(module.parameters(), self.acfg.grad_clip))
        if not torch.isfinite(grad_norm):
            raise FloatingPointError(
                f"non-finite gradient norm in {type(module).__name__} at RL step {self.rl_step}; "
                "the last good checkpoint is kept under checkpoints/; lower the learning rate"
            )
        opt.step()
        params = [p for p in module.parameters() if p.requires_grad]
        if not (fsdp.params_finite(params) if sharded else torch.stack(torch._foreach_norm(params)).isfinite().all()):
            raise FloatingPointError(
                f"{type(module).__name__} parameters became non-finite after the optimizer step at RL step "
                f"{self.rl_step} (learning rate too high?); training stopped before this step was checkpointed, "
                "the last good checkpoint is kept under checkpoints/"
            )
        return grad_norm

    def all_reduce_grads(self, module: torch.nn.Module) -> None:
        world = self.trainer.world_size
        for p in module.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(world)

    def check_finite(self, terms: dict[str, torch.Tensor], names: tuple[str, ...]) -> None:
        for name in names:
            if name in terms and not torch.isfinite(terms[name]).all():
                raise FloatingPointError(
                    f"{name} is {float(terms[name])} at RL step {self.rl_step}: training stopped before the "
                    "optimizer step; the last good checkpoint is kept under checkpoints/ (resume with "
                    "ckpt_path=last after lowering the learning rate)"
                )

    def log_rl(self, metrics: dict[str, float]) -> None:
        """Log against the RL step (Lightning's global_step counts optimizer steps of both optimizers)."""
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics["training/step"] = float(self.rl_step)
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(metrics, step=self.rl_step)

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch, batch_idx):
        problems = [self.eval_problems[i] for i in batch.tolist()]
        with self.policy_for_rollout():  # every rank has as many batches (Lightning pads the split)
            self.sampler.update_weights(self.policy, self.global_step)  # vllm: the weights just trained
            scores, texts = greedy_scores(
                self.policy,
                self.tokenizer,
                self.task,
                problems,
                len(problems),
                self.max_new_tokens,
                self.max_prompt_len,
                sampler=self.sampler,
            )
        self._val_scores.append(scores.to(self.device))
        self._val_metrics.append(self.task.metrics(texts, problems))  # e.g. dialogue TCR/ACR/GCR

    def on_validation_epoch_start(self) -> None:
        self._val_scores, self._val_metrics = [], []

    def on_validation_epoch_end(self) -> None:
        scores = torch.cat(self._val_scores) if self._val_scores else torch.zeros(0, device=self.device)
        total = torch.tensor([scores.sum().item(), float(len(scores))], device=self.device)
        if self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
        acc = float(total[0] / total[1]) if total[1] > 0 else math.nan
        step = self.rl_step + 1 if self.trainer.state.fn == "fit" else self.rl_step
        if self.trainer.state.fn == "fit" and self.trainer.sanity_checking:
            return
        names, sums = metric_sums(self._val_metrics)
        if self.trainer.world_size > 1 and names:
            sums = self.trainer.strategy.reduce(sums.to(self.device), reduce_op="sum").cpu()
        extra = {f"val/{k}": float(sums[j, 0] / sums[j, 1]) for j, k in enumerate(names) if sums[j, 1] > 0}
        if not self.history or self.history[-1]["step"] != step:
            self.history.append({"step": step, "val/acc": acc, **extra})
            export_best(self.cfg, self, step)  # hf/best/ when this evaluation beats every earlier one
        self.log("val/acc", acc, prog_bar=True, logger=False, sync_dist=False)
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics({"val/acc": acc, **extra}, step=step)

    # ------------------------------------------------------------------ checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["dvpo_lab"] = {
            "kl_ctrl": self.kl_ctrl.state_dict(),
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
            "fingerprint": self.fingerprint,
        }  # ckpt_path refuses another config's

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        extra = checkpoint.get("dvpo_lab", {})
        if "kl_ctrl" in extra:
            self.kl_ctrl.load_state_dict(extra["kl_ctrl"])
        self.history = list(extra.get("history", []))
        if "torch_rng" in extra:
            torch.set_rng_state(extra["torch_rng"])
