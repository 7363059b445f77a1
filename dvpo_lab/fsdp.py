"""Fully sharded data parallel (FSDP2, `torch.distributed.fsdp.fully_shard`) for the RL module (`trainer=fsdp`).

`trainer=fsdp` runs Lightning's `ModelParallelStrategy` with a 1-D data-parallel mesh (tensor parallel size 1):
`RLModule.configure_model` shards the policy, the critic and the frozen reference with `shard` (one FSDP unit per
decoder layer, plus the root for embeddings, final norm and heads), so each rank holds 1/world of every weight,
gradient and AdamW state. The same code runs on GPUs (NCCL) and on CPU processes (gloo; `tests/test_fsdp.py`).

What the RL step needs beyond a training forward:

- Rollouts and greedy evaluation run the fast decoder, which calls the layers' sub-modules directly (no FSDP
  hook fires there), and `generate`, whose number of forward passes differs between ranks. Both run inside
  `gathered(...)`: the modules' parameters are all-gathered once, held for the whole generation (no collective
  inside it, so ranks may decode different lengths), and freed on exit. Peak memory there is one full copy of
  the module (as veRL's rollout under FSDP without an inference engine).
- Gradients are reduce-scattered (averaged over ranks) by FSDP in backward; the module's explicit all-reduce of
  the DDP path is skipped (`is_sharded`).
- An inference engine (or an export) reads full weights one parameter at a time with
  `gathered_state_dict_items`, which works for sharded and plain modules alike.
- Checkpoints are one file with full (gathered) states (`save_distributed_checkpoint: false`), so `ckpt_path`,
  `python -m dvpo_lab.export` and resume read them as they read single-process checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def _fsdp_module_cls():
    from torch.distributed.fsdp import FSDPModule

    return FSDPModule


def is_sharded(module: nn.Module | None) -> bool:
    """Whether `module` (or one of its sub-modules) was sharded with `fully_shard`."""
    if module is None:
        return False
    cls = _fsdp_module_cls()
    return any(isinstance(m, cls) for m in module.modules())


def _block_classes(module: nn.Module) -> set[str]:
    """Class names of the repeated blocks (decoder layers): every transformers model in `module` lists them in
    `_no_split_modules` (what accelerate and FSDP auto-wrapping read, e.g. `LlamaDecoderLayer`)."""
    names: set[str] = set()
    for m in module.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return names


def shard(module: nn.Module, mesh) -> nn.Module:
    """Shard `module` in place over the 1-D device `mesh`: each decoder layer is one FSDP unit (all-gathered for
    its own forward and backward only), the rest (embeddings, final norm, LM or value head) the root unit.

    Parameters are sharded on dim 0 as DTensors; `named_parameters()` keeps the plain names. Every unit reshards
    after forward (`reshard_after_forward=True`, the root included), which `gathered` relies on to restore it.
    A frozen module (the reference) is sharded the same way and never gets gradients. Returns `module`."""
    from torch.distributed.fsdp import fully_shard

    blocks = _block_classes(module)
    for m in list(module.modules()):
        if m is not module and type(m).__name__ in blocks:
            fully_shard(m, mesh=mesh, reshard_after_forward=True)
    fully_shard(module, mesh=mesh, reshard_after_forward=True)
    return module


@contextmanager
def gathered(*modules: nn.Module | None) -> Iterator[None]:
    """Hold the full parameters of sharded `modules` for the body (a rollout, a greedy evaluation); a no-op for
    plain modules and None. Collective: every rank must enter and leave it together (one all-gather per FSDP
    unit on entry, none inside, frees on exit)."""
    cls = _fsdp_module_cls()
    units = [m for mod in modules if mod is not None for m in mod.modules() if isinstance(m, cls)]
    if not units:
        yield
        return
    for u in units:  # forwards inside (generate) must neither free nor re-gather
        u.set_reshard_after_forward(False, recurse=False)
        u.unshard()
    try:
        yield
    finally:
        for u in units:
            u.reshard()
            u.set_reshard_after_forward(True, recurse=False)


def gathered_state_dict_items(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """`(name, full tensor)` for every parameter of `module`, one at a time, in `named_parameters()` order.

    Under FSDP2 each sharded parameter (a DTensor) is all-gathered with `full_tensor()` just before it is
    yielded, so at most one full parameter beyond the shards is alive if the caller copies and drops it
    (a vLLM `load_weights`, a safetensors writer). Plain modules yield their parameters as they are (no copy).
    Names are the plain module's (`model.layers.0.self_attn.q_proj.weight`). Tensors are detached, on the
    parameter's device and dtype.

    Collective under FSDP: every rank must iterate the generator to the end, in the same order."""
    from torch.distributed.tensor import DTensor

    for name, p in module.named_parameters():
        t = p.full_tensor() if isinstance(p, DTensor) else p
        yield name, t.detach()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """`t` itself, or the full tensor of a sharded one (a DTensor under FSDP2: all-gathered, collective)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def grad_norm_value(norm: torch.Tensor) -> torch.Tensor:
    """`clip_grad_norm_`'s total norm as a plain tensor (a replicated DTensor when the gradients are sharded)."""
    from torch.distributed.tensor import DTensor

    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def params_finite(params: list[torch.Tensor]) -> bool:
    """Whether every parameter is finite, on every rank: sharded parameters are checked shard by shard and the
    verdict is all-reduced, so all ranks raise together (a rank that raised alone would hang the others)."""
    from torch.distributed.tensor import DTensor

    local = [p.to_local() if isinstance(p, DTensor) else p for p in params]
    local = [t for t in local if t.numel()]
    total = torch.stack(torch._foreach_norm(local)).sum() if local else torch.zeros((), device=params[0].device)
    if any(isinstance(p, DTensor) for p in params) and torch.distributed.is_initialized():
        total = total.to(torch.float32)
        torch.distributed.all_reduce(total)
    return bool(torch.isfinite(total))
