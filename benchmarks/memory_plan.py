"""Accelerator memory an RL run needs per model size: policy, critic, reference and rollout engine.

    python benchmarks/memory_plan.py [--gpus 1 8] [--tokens 8192] [--engine-util 0.3] [--gpu-gib 80] [--no-ckpt]

Parameter counts are exact: each architecture is built on the meta device from its published shape
(`config.json` of the hub release, copied below), so nothing is downloaded and no memory is used. Bytes per
parameter follow how dvpo_lab trains (`model.dtype=bfloat16`, `trainer=gpu|fsdp` with `bf16-mixed`, torch AdamW
whose two moments take the parameter's dtype):

- policy and critic (trained): weights + gradients + AdamW exp_avg + exp_avg_sq = 4 x 2 bytes per parameter in
  bf16 (`model.dtype=float32` doubles it); under FSDP (`trainer=fsdp`) divided by the number of GPUs.
- critic: the policy's decoder (no LM head) plus the value head (hidden x H*N outputs: DVPO's 3 x 200 quantiles).
- reference: bf16 weights, only with a KL term (`algo.use_kl_in_reward` or `algo.use_kl_loss`); none with LoRA
  (the policy with its adapters disabled) and none for GRPO/DVPO as configured here (KL off).
- engine (`rollout.engine=vllm`): a full bf16 copy of the policy's weights per GPU (tensor_parallel_size=1) plus
  the KV cache vLLM reserves (`rollout.vllm.gpu_memory_utilization` of the GPU, weights included); with sleep mode
  (`rollout.vllm.enable_sleep_mode=true`) both are released during the update phase.
- activations (the update phase): without recomputation tokens x layers x hidden x 34 bytes in bf16 per
  forward (Korthikanti et al. 2022, eq. 2 without the attention-score term, which SDPA/flash attention never
  stores); with `model.gradient_checkpointing=true` (the default here, `--no-ckpt` for without) each layer keeps
  only its bf16 input (2 bytes x hidden per token) and one layer at a time holds its full 34. For policy and
  critic each; the forward covers a whole minibatch (`rollout.minibatch_size` rows x (prompt + response)
  tokens): set that token count with `--tokens`.

These are planning figures, not measurements: allocator fragmentation, CUDA context (~0.5 GiB) and the
logits (`tokens x vocab x 4` bytes for the log-prob pass, in chunks of the minibatch) come on top.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

# the hub releases' config.json, shape fields only
ARCHS = {
    "Qwen2.5-0.5B-Instruct": Qwen2Config(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "Qwen3-1.7B": Qwen3Config(
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "Qwen3-8B": Qwen3Config(
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        tie_word_embeddings=False,
    ),
    "Qwen3-32B": Qwen3Config(
        hidden_size=5120,
        intermediate_size=25600,
        num_hidden_layers=64,
        num_attention_heads=64,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        tie_word_embeddings=False,
    ),
}
GIB = 2**30


def counts(config) -> tuple[int, int, int]:
    """(policy parameters, decoder parameters, layers x hidden) of `config`, built on the meta device."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    policy = sum(p.numel() for p in model.parameters())  # tied embeddings are counted once
    decoder = sum(p.numel() for p in model.get_decoder().parameters())
    return policy, decoder, config.num_hidden_layers * config.hidden_size


def plan(config, gpus: int, tokens: int, engine_util: float, gpu_gib: float, value_outputs: int, ckpt: bool) -> dict:
    """GiB per GPU of each part for one model on `gpus` GPUs (FSDP when gpus > 1)."""
    policy, decoder, layers_x_hidden = counts(config)
    critic = decoder + config.hidden_size * value_outputs + value_outputs
    trained = 4 * 2  # bf16 weights, grads, exp_avg, exp_avg_sq
    per_layer = tokens * config.hidden_size
    act = (per_layer * (2 * config.num_hidden_layers + 34) if ckpt else tokens * layers_x_hidden * 34) / GIB
    parts = {
        "policy_B": policy / 1e9,
        "policy": policy * trained / gpus / GIB,
        "critic": critic * trained / gpus / GIB,
        "reference": policy * 2 / gpus / GIB,
        "engine_weights": policy * 2 / GIB,
        "engine_total": max(engine_util * gpu_gib, policy * 2 / GIB),
        "activations": 2 * act,  # policy and critic, one micro-batch each
    }
    parts["train_phase"] = parts["policy"] + parts["critic"] + parts["reference"] + parts["activations"]
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 8])
    ap.add_argument(
        "--tokens", type=int, default=8192, help="tokens per forward (minibatch rows x (prompt + response))"
    )
    ap.add_argument("--no-ckpt", action="store_true", help="without model.gradient_checkpointing")
    ap.add_argument("--engine-util", type=float, default=0.3, help="rollout.vllm.gpu_memory_utilization")
    ap.add_argument("--gpu-gib", type=float, default=80.0)
    ap.add_argument("--value-outputs", type=int, default=600, help="critic outputs per token (DVPO: 3 x 200)")
    args = ap.parse_args()
    print(
        f"GiB per GPU; bf16 weights, AdamW, FSDP over the GPUs; engine util {args.engine_util} of "
        f"{args.gpu_gib:.0f} GiB; {args.tokens} tokens per forward; gradient checkpointing {not args.no_ckpt}"
    )
    head = (
        f"{'model':<22} {'params':>7} {'GPUs':>4} {'policy':>7} {'critic':>7} {'ref':>6} {'activ':>6} "
        f"{'train':>7} {'engine':>7} {'no sleep':>9} {'sleep':>7}"
    )
    print(head)
    for name, config in ARCHS.items():
        for g in args.gpus:
            p = plan(config, g, args.tokens, args.engine_util, args.gpu_gib, args.value_outputs, not args.no_ckpt)
            # without sleep mode the engine's reservation stays during the update; with it only one phase is resident
            awake = p["train_phase"] + p["engine_total"]
            asleep = max(p["train_phase"], p["engine_total"] + p["policy"] + p["critic"] + p["reference"])
            print(
                f"{name:<22} {p['policy_B']:>6.2f}B {g:>4} {p['policy']:>7.1f} {p['critic']:>7.1f} "
                f"{p['reference']:>6.1f} {p['activations']:>6.1f} {p['train_phase']:>7.1f} {p['engine_total']:>7.1f} "
                f"{awake:>9.1f} {asleep:>7.1f}"
            )


if __name__ == "__main__":
    main()
