"""dvpo_lab's GRPO against TRL's GRPOTrainer on one workload, alternating A B A B in one process.

    pip install -e ".[bench]"     # trl, the peer (it leaves torch alone)
    OMP_NUM_THREADS=1 python benchmarks/vs_trl.py [--rounds 3 --steps 5 --warmup 2 --threads 1]

Workload (self-contained, so that nothing outside the repo is needed): a Llama of 4 layers, width 256, 4 heads, MLP
688, untied head (3.2M parameters), fp32, random init (seed 0), over a character tokenizer; prompts "Q: a+b=? A:"
with two-digit a, b; 8 prompts x 8 samples per step, exactly 32 new tokens each (EOS forbidden before: every step
has the same work), temperature 1; reward 1 if the completion contains a + b; group-normalised advantages, clip
0.2, token-level loss normalisation, no KL term and no reference model, AdamW at lr 1e-6, grad-norm clip 1; one
optimizer step per batch.

Both sides run their real training loop: dvpo_lab's RLModule under a Lightning Trainer (the code path of
`python -m dvpo_lab`), TRL's GRPOTrainer with its defaults otherwise (gradient checkpointing is on by
default in trl 1.x; `--trl-gradient-checkpointing off` turns it off). A step is the wall time between two
consecutive optimizer-step ends, everything included. Phases: generate (the sampler), score (reward), and
update (the rest: scoring passes, loss, backward, optimizer, framework overhead).

MFU counts the model FLOPs one GRPO step needs, identical for both sides: 2 N per token of the rollout
(prefill and decode) plus 6 N per token of the training forward and backward, N = parameters inside matrix
multiplies (embedding lookup excluded), attention scores ignored (< 3% here). It divides by the matmul peak
of the run's dtype (fp32, or bf16 with `--precision bf16-mixed`) measured at start, at the same thread count,
on this machine. Printed for the whole step, for the generate phase (2 N per rollout token) and for the update
phase (6 N per trained token: forward, backward and optimizer).

`--precision bf16-mixed` runs both sides with bf16 autocast and fp32 master weights (dvpo_lab:
`trainer.precision=bf16-mixed`; TRL: `bf16=True`).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

for _key, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("WANDB_MODE", "disabled"),
):
    os.environ.setdefault(_key, _value)

import torch  # noqa: E402

ALPHABET = "0123456789+-=?:. QAabcdefghijklmnopqrstuvwxyz#\n"
PHASES = ("gen", "score", "update", "step")


# ------------------------------------------------------------------ the shared workload
def make_tokenizer():
    """One token per character of ALPHABET, after four specials; left padding."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + list(ALPHABET))}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        padding_side="left",
    )


def make_model(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg)


def make_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(n)]
    return [(f"Q: {a}+{b}=? A:", str(a + b)) for a, b in pairs]


def matmul_params(model) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def matmul_peak(seconds: float = 1.0, dtype: torch.dtype = torch.float32) -> float:
    """Sustained GFLOP/s of the best of a few GEMM shapes (square and this model's MLP shapes) in `dtype`."""
    best = 0.0
    for m, k, n in ((1024, 1024, 1024), (4096, 256, 1024), (4096, 1024, 256)):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        out = torch.empty(m, n, dtype=dtype)
        torch.matmul(a, b, out=out)
        reps, t0 = 0, time.perf_counter()
        while (dt := time.perf_counter() - t0) < seconds / 3:
            torch.matmul(a, b, out=out)
            reps += 1
        best = max(best, 2.0 * m * k * n * reps / dt / 1e9)
    return best


# ------------------------------------------------------------------ dvpo_lab side
def run_dvpo(args, work_dir: str) -> list[dict[str, float]]:
    """`warmup + steps` GRPO steps of dvpo_lab's real loop; per-step phase seconds."""
    import lightning as L
    from omegaconf import open_dict

    from dvpo_lab.config import compose_config
    from dvpo_lab.data import RLDataModule
    from dvpo_lab.module import RLModule
    from dvpo_lab.noise import NoNoise
    from dvpo_lab.tasks.base import Problem, Task

    rows = make_rows(2000, args.seed)

    class Addition(Task):
        name = "addition_bench"
        max_response_len = args.new_tokens

        def train_problems(self, indices):
            return [Problem(*rows[i % len(rows)]) for i in indices]

        def num_train(self):
            return len(rows)

        def test_problems(self):
            return [Problem(*r) for r in rows[:8]]

        def sft_problems(self):
            return []

        def score(self, responses, problems):
            return torch.tensor([float(p.answer in r) for r, p in zip(responses, problems, strict=True)])

    total = args.warmup + args.steps
    cfg = compose_config(
        [
            "algo=grpo",
            "algo.use_kl_loss=false",
            "algo.loss_agg_mode=token-mean",
            f"algo.actor_lr={args.lr}",
            "algo.weight_decay=0.0",
            f"rollout.prompts_per_step={args.prompts}",
            f"rollout.samples_per_prompt={args.samples}",
            f"rollout.minibatch_size={args.prompts * args.samples}",
            f"rollout.max_new_tokens={args.new_tokens}",
            f"rollout.min_new_tokens={args.new_tokens}",
            f"rollout.engine={args.sampler}",
            f"rollout.reuse_sampler_logprobs={args.reuse_logprobs}",
            f"total_steps={total}",
            f"seed={args.seed}",
            "logger=none",
            "callbacks=none",
        ],
        work_dir,
    )
    with open_dict(cfg):
        cfg.trainer.enable_progress_bar = False
    tok = make_tokenizer()
    task = Addition()
    module = RLModule(cfg, make_model(tok, args.seed), tok, task, NoNoise())
    records: list[dict[str, float]] = []
    module.log_rl = records.append  # the step's metrics, timing_s/* included

    class StepClock(L.Callback):
        marks: list[float] = []

        def on_train_start(self, trainer, pl_module):
            self.marks.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.marks.append(time.perf_counter())

    clock = StepClock()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=args.precision,
        max_epochs=total,
        logger=False,
        callbacks=[clock],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=total + 1,
        default_root_dir=work_dir,
    )
    trainer.fit(module, RLDataModule(len(module.eval_problems), 8))
    steps = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    out = []
    for r, step in zip(records, steps, strict=True):
        gen, score = r["timing_s/gen"], r["timing_s/reward"]
        out.append(
            {
                "gen": gen,
                "score": score,
                "update": step - gen - score,
                "step": step,
                "tokens": r["response_length/mean"] * args.prompts * args.samples,
            }
        )
    return out[args.warmup :]


# ------------------------------------------------------------------ TRL side
def run_trl(args, work_dir: str) -> list[dict[str, float]]:
    """`warmup + steps` optimizer steps of TRL's GRPOTrainer; per-step phase seconds."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = make_tokenizer()
    model = make_model(tok, args.seed)
    rows = make_rows(2000, args.seed)
    ds = Dataset.from_list([{"prompt": p, "answer": a} for p, a in rows])
    clock = {"gen": 0.0, "score": 0.0, "tokens": 0}
    marks: list[float] = []
    out: list[dict[str, float]] = []

    def addition_reward(prompts, completions, answer, completion_ids=None, **kw):
        t0 = time.perf_counter()
        scores = [float(a in c) for c, a in zip(completions, answer, strict=True)]
        clock["tokens"] += sum(len(c) for c in completion_ids or [])
        clock["score"] += time.perf_counter() - t0
        return scores

    generate = model.generate

    def timed_generate(*a, **kw):  # TRL calls generate on this very object (one CPU process)
        t0 = time.perf_counter()
        res = generate(*a, **kw)
        clock["gen"] += time.perf_counter() - t0
        return res

    model.generate = timed_generate

    class StepClock(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            marks.append(time.perf_counter())

        def on_step_end(self, a, state, control, **kw):
            marks.append(time.perf_counter())
            step = marks[-1] - marks[-2]
            out.append(
                {
                    "gen": clock["gen"],
                    "score": clock["score"],
                    "update": step - clock["gen"] - clock["score"],
                    "step": step,
                    "tokens": clock["tokens"],
                }
            )
            clock.update(gen=0.0, score=0.0, tokens=0)

    extra = {}
    if args.trl_gradient_checkpointing != "default":
        extra["gradient_checkpointing"] = args.trl_gradient_checkpointing == "on"
    cfg = GRPOConfig(
        output_dir=os.path.join(work_dir, "trl"),
        per_device_train_batch_size=args.prompts * args.samples,
        gradient_accumulation_steps=1,
        num_generations=args.samples,
        max_completion_length=args.new_tokens,
        temperature=1.0,
        beta=0.0,
        learning_rate=args.lr,
        max_steps=args.warmup + args.steps,
        logging_steps=1,
        report_to="none",
        bf16=args.precision == "bf16-mixed",
        use_cpu=True,
        use_vllm=False,
        save_strategy="no",
        disable_tqdm=True,
        seed=args.seed,
        generation_kwargs={"min_new_tokens": args.new_tokens},
        **extra,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=addition_reward,
        args=cfg,
        train_dataset=ds,
        processing_class=tok,
        callbacks=[StepClock()],
    )
    trainer.remove_callback(PrinterCallback)  # its per-step log dicts would bury the table
    trainer.train()
    return out[args.warmup :]


# ------------------------------------------------------------------ the comparison
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="A B rounds (dvpo_lab then TRL)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps per run")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both sides")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampler", default="fast", help="dvpo_lab rollout.engine: fast | hf")
    ap.add_argument("--reuse-logprobs", default="true", help="dvpo_lab rollout.reuse_sampler_logprobs")
    ap.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    ap.add_argument("--trl-gradient-checkpointing", choices=["default", "on", "off"], default="default")
    args = ap.parse_args()
    try:
        import trl
    except ImportError:
        print("benchmarks/vs_trl.py needs trl, the peer: pip install -e '.[bench]'")
        return
    import logging

    import transformers

    torch.set_num_threads(args.threads)
    for name in ("lightning.pytorch", "lightning.fabric", "dvpo_lab", "transformers", "trl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    tok = make_tokenizer()
    n_mm = matmul_params(make_model(tok))
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else torch.float32
    peak = matmul_peak(dtype=dtype)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
        f"threads {torch.get_num_threads()}, precision {args.precision}; {str(dtype)[6:]} matmul peak "
        f"{peak:.1f} GFLOP/s (measured now)"
    )

    runs: dict[str, list[list[dict[str, float]]]] = {"dvpo_lab": [], "trl": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for side, fn in (("dvpo_lab", run_dvpo), ("trl", run_trl)):
                steps = fn(args, os.path.join(tmp, f"{side}_{r}"))
                runs[side].append(steps)
                print(
                    f"round {r} {side:9s} step median {statistics.median(s['step'] for s in steps):.3f} s "
                    f"(gen {statistics.median(s['gen'] for s in steps):.3f})",
                    flush=True,
                )

    B, T = args.prompts * args.samples, args.new_tokens
    P = max(len(p) for p, _ in make_rows(2000, args.seed))
    gen_flops, upd_flops = 2 * n_mm * B * (P + T), 6 * n_mm * B * (P + T)  # rollout; training fwd + bwd
    flops = gen_flops + upd_flops
    med = {side: {p: statistics.median(s[p] for rnd in rr for s in rnd) for p in PHASES} for side, rr in runs.items()}
    print(
        f"\n{args.rounds} rounds x {args.steps} timed steps, alternating dvpo_lab / TRL; {B} completions x {T} "
        f"tokens per step; {n_mm / 1e6:.2f}M matmul params; {flops / 1e9:.2f} model GFLOP per step"
    )
    print(
        f"  {'':10}" + "".join(f"{p + ' s':>10}" for p in PHASES) + f"{'tok/s':>10}{'MFU':>8}{'gen MFU':>9}"
        f"{'upd MFU':>9}"
    )
    for side, m in med.items():
        mfu = [f / s / (peak * 1e9) for f, s in ((flops, m["step"]), (gen_flops, m["gen"]), (upd_flops, m["update"]))]
        print(
            f"  {side:10}" + "".join(f"{m[p]:10.3f}" for p in PHASES) + f"{B * T / m['step']:10.0f}"
            f"{mfu[0]:8.1%}{mfu[1]:9.1%}{mfu[2]:9.1%}"
        )
    per_round = [
        statistics.median(s["step"] for s in t) / statistics.median(s["step"] for s in d)
        for d, t in zip(runs["dvpo_lab"], runs["trl"], strict=True)
    ]
    print(
        f"  TRL / dvpo_lab step time: {med['trl']['step'] / med['dvpo_lab']['step']:.2f} (pooled medians); "
        f"per round {', '.join(f'{x:.2f}' for x in per_round)}"
    )


if __name__ == "__main__":
    main()
