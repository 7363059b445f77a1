"""trainer=fsdp (FSDP2 `fully_shard` through Lightning's ModelParallelStrategy) on 2 CPU processes with gloo.

Real runs of `python -m dvpo_lab debug=smoke trainer=fsdp trainer.accelerator=cpu trainer.devices=2`: policy,
critic and reference sharded, 3 RL steps, a checkpoint per step, then an exact resume from the first one; the
slow test checks that the sharded run computes what the DDP run computes. `dvpo_lab.fsdp`'s gathering is checked
on a tiny Llama sharded over 2 spawned gloo processes.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli

FSDP_CPU = [
    "debug=smoke",
    "logger=csv",
    "algo=ppo",  # a critic, trained beside the policy
    "algo.use_kl_loss=true",  # so the reference is held (sharded too) and read every step
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
]


def _steps(run_dir: Path) -> dict[int, dict[str, str]]:
    """metrics.csv rows by RL step, without the timing columns."""
    with (run_dir / "csv" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("training/step")]
    return {
        int(float(r["training/step"])): {
            k: v for k, v in r.items() if v != "" and not k.startswith(("timing_s/", "perf/"))
        }
        for r in rows
    }


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> tuple[Path, Path]:
    """One 3-step FSDP run keeping every checkpoint: (tmp folder, run folder)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    run_dir = tmp / "fsdp"
    proc = run_cli(
        [*FSDP_CPU, "trainer=fsdp", "callbacks.model_checkpoint.save_top_k=-1", f"hydra.run.dir={run_dir}"],
        tmp,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return tmp, run_dir


def test_fsdp_two_cpu_processes_train_and_resume_exactly(fsdp_run):
    tmp, run_dir = fsdp_run
    log = (run_dir / "__main__.log").read_text()
    assert "falls back" not in log  # the sharded policy decodes with the fast sampler (gathered weights)
    steps = _steps(run_dir)
    assert sorted(steps) == [0, 1, 2]
    for row in steps.values():  # both models stepped, with finite gradients, the reference read (KL loss)
        for key in ("actor/grad_norm", "critic/grad_norm", "actor/kl_loss"):
            assert torch.isfinite(torch.tensor(float(row[key]))), (key, row[key])
        assert float(row["actor/grad_norm"]) > 0 and float(row["critic/grad_norm"]) > 0
    assert float(steps[2]["actor/kl_loss"]) != 0  # the policy moved away from the reference

    ckpt = torch.load(run_dir / "checkpoints" / "epoch_0.ckpt", weights_only=False, map_location="cpu")
    weights = ckpt["state_dict"]
    assert not any(type(t).__name__ == "DTensor" for t in weights.values())  # one file of full tensors
    assert any(k.startswith("reference.") for k in weights) and any(k.startswith("critic.") for k in weights)

    resumed = tmp / "resumed"
    proc = run_cli(
        [
            *FSDP_CPU,
            "trainer=fsdp",
            f"hydra.run.dir={resumed}",
            f"ckpt_path={run_dir}/checkpoints/epoch_0.ckpt",
        ],
        tmp,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "resuming after RL step 0" in (resumed / "__main__.log").read_text()
    again = _steps(resumed)
    for s in (1, 2):  # the steps run after the resume: every logged number equal
        assert again[s] == steps[s], f"step {s} differs after resume"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert json.loads((resumed / "summary.json").read_text())["history"] == summary["history"]


def test_fsdp_checkpoint_exports_to_a_hugging_face_folder(fsdp_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from dvpo_lab.export import export_checkpoint

    _, run_dir = fsdp_run
    out = export_checkpoint(run_dir / "checkpoints" / "last.ckpt", tmp_path / "hf", critic=True)
    policy = AutoModelForCausalLM.from_pretrained(out)
    weights = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")["state_dict"]
    for name, p in policy.named_parameters():
        assert torch.equal(p, weights[f"policy.{name}"]), name
    assert (out / "critic" / "value_head.safetensors").exists()


@pytest.mark.slow
def test_fsdp_computes_what_ddp_computes(fsdp_run):
    """The same 3 steps under trainer=ddp: every logged number within float32 rounding (both average the
    gradients of the 2 ranks' rollouts; FSDP reduce-scatters them, DDP all-reduces)."""
    tmp, run_dir = fsdp_run
    ddp = tmp / "ddp"
    proc = run_cli([*FSDP_CPU, "trainer=ddp", f"hydra.run.dir={ddp}"], tmp, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    a, b = _steps(run_dir), _steps(ddp)
    assert sorted(a) == sorted(b)
    for s in a:
        assert set(a[s]) == set(b[s])
        for k in a[s]:
            assert float(a[s][k]) == pytest.approx(float(b[s][k]), rel=1e-5, abs=1e-6), (s, k)


# --------------------------------------------------------------------------------------- dvpo_lab.fsdp on 2 ranks
def _gather_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import LlamaConfig, LlamaForCausalLM

    from dvpo_lab import fsdp
    from dvpo_lab.decode import decode

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    full = {k: v.clone() for k, v in model.named_parameters()}
    prompt = torch.tensor([[2, 5, 7, 9], [2, 11, 3, 4]])
    attn = torch.ones_like(prompt)
    kw = dict(max_new_tokens=6, eos_token_id=1, pad_token_id=0, do_sample=False)
    plain = decode(model, prompt, attn, **kw).tokens
    plain_items = dict(fsdp.gathered_state_dict_items(model))

    fsdp.shard(model, init_device_mesh("cpu", (world,)))
    sharded = [n for n, p in model.named_parameters() if type(p).__name__ == "DTensor"]
    items = dict(fsdp.gathered_state_dict_items(model))
    with fsdp.gathered(model):
        greedy = decode(model, prompt, attn, **kw).tokens  # calls the layers' sub-modules: no FSDP hook
        model(prompt)  # a forward inside must not free the gathered weights
        inside = type(model.model.layers[0].mlp.up_proj.weight).__name__
        greedy_again = decode(model, prompt, attn, **kw).tokens
    result = {
        "n_sharded": len(sharded),
        "n_params": len(full),
        "plain_same": all(plain_items[k] is not None and torch.equal(plain_items[k], full[k]) for k in full),
        "same_names": list(items) == list(full),
        "equal": all(torch.equal(items[k], full[k]) for k in full),
        "greedy_equal": torch.equal(greedy, plain) and torch.equal(greedy_again, plain),
        "inside": inside,
        "after": type(model.model.layers[0].mlp.up_proj.weight).__name__,
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def test_gathered_weights_of_a_model_sharded_over_two_processes(tmp_path):
    """`gathered_state_dict_items` yields every full parameter of a sharded model (equal to the unsharded one),
    and the fast decoder inside `gathered` gives the unsharded model's greedy tokens; weights are sharded again
    after. 2 processes, gloo."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gather_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["n_sharded"] == r["n_params"] > 0  # every parameter became a DTensor shard
        assert r["plain_same"] and r["same_names"] and r["equal"]
        assert r["greedy_equal"]
        assert r["inside"] == "Parameter" and r["after"] == "DTensor"
