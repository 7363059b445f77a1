"""Hugging Face folders out of a run: the policy with its tokenizer, and the critic beside it.

Every training run writes `<run>/hf/final/` (the policy after the last RL step) and, with `export.best`,
`<run>/hf/best/` (the policy at the evaluation with the highest `val/acc`, the initial one included);
`python -m dvpo_lab.export CKPT OUT` writes the same from any checkpoint a run left (`<run>/checkpoints/last.ckpt`).
One folder holds:

    config.json, generation_config.json, model.safetensors   the policy: AutoModelForCausalLM.from_pretrained(folder)
      (export.lora=adapter: adapter_config.json + adapter_model.safetensors, loaded the same way with peft installed)
    tokenizer.json, tokenizer_config.json, ...                AutoTokenizer.from_pretrained(folder)
    export.json                                               what was written: RL step, val/acc, LoRA mode, source
    critic/                                                   the value model, loaded by `load_critic(folder/critic)`:
      config.json, model.safetensors                            its transformer backbone (AutoModel)
      value_head.safetensors, critic.json                       the linear head and how its outputs are read

Loading the policy needs `transformers` only (no dvpo_lab import); the tiny model's character tokenizer is a
`PreTrainedTokenizerFast` and reloads as one. A LoRA policy is written merged into a plain model by default
(`export.lora=merged`, the same weights `merge_and_unload` gives, computed without touching the training model) or
as the adapter alone (`adapter`), whose `base_model_name_or_path` names the base it was trained on (the
warm-start folder, or `model.name_or_path`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from dvpo_lab import algos
from dvpo_lab.config import ConfigError
from dvpo_lab.models.pretrained import is_lora

log = logging.getLogger(__name__)
LORA_MODES = ("merged", "adapter")
EXPORT_FILE = "export.json"  # what a folder holds and where it came from
CRITIC_DIR = "critic"
HEAD_FILE = "value_head.safetensors"
CRITIC_FILE = "critic.json"


# ----------------------------------------------------------------------------------------------- writing
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of `model` (a transformers model with `peft` LoRA layers injected, e.g. a PeftModel's base
    model or a LoRA critic backbone) with every adapter folded in: `W + get_delta_weight()` under the plain key
    (`...q_proj.weight`), no `lora_*` entries. The same numbers as `merge_and_unload`, but `model` is left as it
    was (a run goes on training it); the merged tensors are new CPU tensors, one adapted layer at a time.

    Raises:
        NotImplementedError: a LoRA variant whose merge is not `W + delta` (DoRA).
    """
    from peft.tuners.lora import LoraLayer

    state = {k: v for k, v in model.state_dict().items() if ".lora_" not in k}
    for name, mod in model.named_modules():
        if not isinstance(mod, LoraLayer):
            continue
        if any(mod.use_dora.get(a, False) for a in mod.active_adapters):
            raise NotImplementedError(f"{name}: DoRA adapters cannot be merged here; use export.lora=adapter")
        prefix = f"{name}." if name else ""
        weight = mod.get_base_layer().weight
        with torch.no_grad():
            delta = sum(mod.get_delta_weight(a) for a in mod.active_adapters if a in mod.lora_A)
            state[f"{prefix}base_layer.weight"] = (weight + delta).to(weight.dtype).cpu()
    return {k.replace(".base_layer.", "."): v for k, v in state.items()}


def save_policy(policy: nn.Module, tokenizer, folder: Path, lora: str = "merged") -> str:
    """Write `policy` and `tokenizer` into `folder` with `save_pretrained`; returns the form written: `plain`,
    `merged` (LoRA folded in) or `adapter` (LoRA adapter only; a base built at random has no name to point
    to, so it is written merged, with a warning)."""
    if lora not in LORA_MODES:
        raise ConfigError(f"export.lora={lora!r} must be one of {' | '.join(LORA_MODES)}")
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    if not is_lora(policy):
        policy.save_pretrained(folder)
        return "plain"
    base = policy.peft_config["default"].base_model_name_or_path
    if lora == "adapter" and base:
        policy.save_pretrained(folder)
        if Path(base).exists():  # a local base (the warm-start folder): an absolute path loads from anywhere
            cfg_file = folder / "adapter_config.json"
            spec = json.loads(cfg_file.read_text())
            spec["base_model_name_or_path"] = str(Path(base).resolve())
            cfg_file.write_text(json.dumps(spec, indent=2))
        return "adapter"
    if lora == "adapter":
        log.warning(
            "export.lora=adapter: the LoRA base was built at random (no model.name_or_path, no "
            "warm-start folder), so no adapter can point to it; writing the merged model instead"
        )
    policy.get_base_model().save_pretrained(folder, state_dict=merged_state_dict(policy.get_base_model()))
    return "merged"


def save_critic(critic: nn.Module, spec: algos.Critic, folder: Path) -> None:
    """Write a `ValueModel` critic into `folder`: its backbone with `save_pretrained` (LoRA merged), the head in
    `value_head.safetensors` and, in `critic.json`, how the head's outputs are read: the critic's `_target_` and
    constructor arguments (kind, heads, quantiles, levels), read back by `load_critic`."""
    folder.mkdir(parents=True, exist_ok=True)
    backbone = critic.backbone
    has_lora = any(".lora_" in k for k in backbone.state_dict())
    backbone.save_pretrained(folder, state_dict=merged_state_dict(backbone) if has_lora else None)
    head = {k: v.detach().cpu().contiguous() for k, v in critic.head.state_dict().items()}
    save_file(head, str(folder / HEAD_FILE))
    target = f"{type(spec).__module__}.{type(spec).__qualname__}"
    info = {
        "_target_": target,
        **spec.config(),
        "kind": spec.kind,
        "n_out": spec.n_out,
        "taus": spec.taus.tolist() if spec.taus is not None else None,
    }
    (folder / CRITIC_FILE).write_text(json.dumps(info, indent=1))


def write_export(
    folder: Path,
    policy: nn.Module,
    tokenizer,
    critic: nn.Module | None = None,
    critic_spec: algos.Critic | None = None,
    lora: str = "merged",
    meta: dict[str, Any] | None = None,
) -> Path:
    """One export folder (layout in the module docstring), written beside it first and then moved in place, so
    an interrupted write leaves the earlier folder whole. `meta` goes to `export.json`. Returns `folder`."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    form = save_policy(policy, tokenizer, tmp, lora)
    with_critic = critic is not None and critic_spec is not None
    if with_critic:
        save_critic(critic, critic_spec, tmp / CRITIC_DIR)
    info = {**(meta or {}), "policy": form, "critic": with_critic}
    (tmp / EXPORT_FILE).write_text(json.dumps(info, indent=1, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def export_module(cfg: DictConfig, module, folder: Path, meta: dict[str, Any]) -> Path | None:
    """Write the RL module's policy (and critic, with `export.critic`) into `folder` as `cfg.export` says; rank 0
    only. Under FSDP the weights are sharded: nothing is written (a warning names the CLI for `last.ckpt`)."""
    if not module.trainer.is_global_zero:
        return None
    from dvpo_lab.fsdp import is_sharded

    if is_sharded(module.policy):  # trainer=fsdp; the checkpoint holds the full (gathered) weights
        if folder.name == "best":  # no checkpoint keeps the best step's weights
            log.warning(
                "export: the policy is sharded under FSDP; %s is not written (checkpoints keep the newest step "
                "only, not the best one; hf/best is written by runs without FSDP)",
                folder,
            )
        else:
            log.warning(
                "export: the policy is sharded under FSDP; write %s with python -m dvpo_lab.export "
                "<run>/checkpoints/last.ckpt %s",
                folder.name,
                folder,
            )
        return None
    e = cfg.export
    critic = module.critic if e.critic else None
    return write_export(folder, module.policy, module.tokenizer, critic, module.critic_spec, e.lora, meta)


def best_step(history: list[dict[str, float]]) -> int | None:
    """The step of the highest finite `val/acc` in `history` (rows `{"step", "val/acc"}`), the earliest among
    equal accuracies (a later step must beat it strictly); None if there is none."""
    best = None
    for h in history:
        if math.isfinite(h["val/acc"]) and (best is None or h["val/acc"] > best["val/acc"]):
            best = h
    return None if best is None else best["step"]


def export_best(cfg: DictConfig, module, step: int) -> Path | None:
    """`<run>/hf/best/` := the module's policy (and critic) now, when the evaluation of `step` is a new best
    (it is the `best_step` of the history so far); in training runs with `export.enabled` and `export.best` only.

    The folder is written at that moment rather than kept in memory: no copy of the weights stays resident (a
    CPU copy of an 8B policy in bf16 is 16 GB, its critic as much again) and the best survives a crash; the cost
    is one `save_pretrained` per improvement (16 GB written for that 8B policy; 0.02 s for the tiny model with
    its critic on a 2-core AMD EPYC)."""
    e = cfg.export
    if cfg.mode != "train" or not (e.enabled and e.best) or best_step(module.history) != step:
        return None
    acc = next(h["val/acc"] for h in module.history if h["step"] == step)
    return export_module(cfg, module, Path(cfg.paths.output_dir) / "hf" / "best", {"step": step, "val/acc": acc})


def export_run(cfg: DictConfig, module, out_dir: Path, ckpt: str | None = None) -> Path | None:
    """The end of a training run: `<run>/hf/final/` (with `export.enabled`). A run resumed from another run
    folder's checkpoint whose best evaluation came before the interruption gets that folder's `hf/best/`."""
    if not cfg.export.enabled:
        return None
    hist = module.history
    final = export_module(
        cfg,
        module,
        out_dir / "hf" / "final",
        {"step": cfg.total_steps, "val/acc": hist[-1]["val/acc"] if hist else math.nan},
    )
    best = out_dir / "hf" / "best"
    if cfg.export.best and ckpt and final is not None and not best.exists():
        earlier = Path(ckpt).resolve().parents[1] / "hf" / "best"
        if earlier.is_dir():
            shutil.copytree(earlier, best)
    return final


# ----------------------------------------------------------------------------------------------- reading
class ExportedCritic(nn.Module):
    """A critic read back from an export folder (`load_critic`): the backbone, the linear head and the reading
    of its outputs, as the run used them.

    Attributes:
        kind: scalar | ensemble | quantile. taus: `[N]` quantile levels (quantile critics), else None.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear, spec: algos.Critic) -> None:
        super().__init__()
        self.backbone, self.head, self.spec = backbone, head, spec
        self.kind, self.taus = spec.kind, spec.taus

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Values of every position of `input_ids` `[B, L]` (left padding marked 0 in `attention_mask` `[B, L]`):
        `[B, L]` (scalar), `[B, L, K]` (ensemble) or `[B, L, H, N]` (quantile). `values[:, t]` is the value of the
        prefix that ends with token t; the run reads a response token's value at the position before it."""
        from dvpo_lab.rollout import positions_from_mask

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        h = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state
        return self.spec.view(self.head(h.float()))


def load_critic(folder: str | Path, device: str | torch.device = "cpu") -> ExportedCritic:
    """The critic an export wrote, as a module giving values for token ids (`ExportedCritic.forward`), in eval
    mode. `folder` is the export folder or its `critic/` subfolder.

    Raises:
        FileNotFoundError: no `critic.json` there (the export was written without its critic).
    """
    from transformers import AutoModel

    folder = Path(folder)
    if (folder / CRITIC_DIR / CRITIC_FILE).exists():
        folder = folder / CRITIC_DIR
    if not (folder / CRITIC_FILE).exists():
        raise FileNotFoundError(
            f"{folder}: no {CRITIC_FILE}; export with the critic (export.critic=true, or "
            "python -m dvpo_lab.export ... --critic)"
        )
    info = json.loads((folder / CRITIC_FILE).read_text())
    drop = ("n_out", "taus") + (("kind",) if "_target_" in info else ())
    spec = algos.critic_from(OmegaConf.create({k: v for k, v in info.items() if k not in drop}))
    backbone = AutoModel.from_pretrained(folder, dtype="auto")  # the dtype it was trained in
    head = nn.Linear(backbone.config.hidden_size, info["n_out"])
    head.load_state_dict(load_file(str(folder / HEAD_FILE)))
    return ExportedCritic(backbone, head, spec).to(device).eval()


# ----------------------------------------------------------------------------------------------- any checkpoint
def _run_config(ckpt: Path) -> tuple[Path, DictConfig]:
    """The checkpoint file and its run's config (`<run>/.hydra/config.yaml`, the run folder being the one above
    `checkpoints/`); a run folder stands for its `checkpoints/last.ckpt`."""
    if ckpt.is_dir():
        ckpt = ckpt / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise ConfigError(f"checkpoint {ckpt} does not exist; give a run's checkpoints/last.ckpt (or its folder)")
    for run_dir in dict.fromkeys((ckpt.absolute().parents[1], ckpt.resolve().parents[1])):
        if (run_dir / ".hydra" / "config.yaml").is_file():
            return ckpt, OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    raise ConfigError(
        f"{ckpt} is not a run's checkpoint: no .hydra/config.yaml in {ckpt.absolute().parents[1]} "
        "(export reads the run's config from the folder above checkpoints/)"
    )


def _rebuild(cfg: DictConfig) -> tuple[nn.Module, Any]:
    """The run's policy and tokenizer as `dvpo_lab.run` built them (weights to be overwritten by the checkpoint's):
    from the warm-start folder when this machine still has it (a LoRA adapter then names it as its base)."""
    from dvpo_lab.models.build import build_policy, build_tokenizer
    from dvpo_lab.models.pretrained import convert_gguf
    from dvpo_lab.sft import warm_start_key

    m = cfg.model
    if m.gguf_file and not m.name_or_path:
        m.name_or_path = str(convert_gguf(m.gguf_file, cfg.paths.cache_dir))
    path = None
    if m.warm_start:
        try:
            found = Path(cfg.paths.cache_dir) / "warmstart" / warm_start_key(cfg)
            path = str(found) if (found / "config.json").exists() else None
        except Exception:  # noqa: BLE001 - an unresolvable cache path: build from the config instead
            path = None
    try:
        tokenizer = build_tokenizer(m, path) if m.tokenizer == "auto" else build_tokenizer(m)
        return build_policy(m, tokenizer, path), tokenizer
    except OSError as e:  # a hub id without the hub, a folder since deleted
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"model.name_or_path={m.name_or_path} (the run's base model, needed for its architecture) "
            f"cannot be loaded: {first[:200]}"
        ) from e


def export_checkpoint(ckpt: str | Path, out: str | Path, critic: bool = False, lora: str = "merged") -> Path:
    """`python -m dvpo_lab.export CKPT OUT`: rebuild the run's policy (and critic) from its `.hydra/config.yaml`,
    load the checkpoint's `state_dict` (`policy.*`, `critic.*`) and write an export folder at `out`.

    Raises:
        ConfigError: a missing file, a file that is not a run's checkpoint, weights that do not fit the run's
            config, `critic` for a run without one, or `out` holding something other than an export.
    """
    from dvpo_lab.models.build import build_critic

    ckpt, cfg = _run_config(Path(ckpt))
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / EXPORT_FILE).exists():
        raise ConfigError(f"{out} exists and is not an export folder; give a new or empty folder")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's
        raise ConfigError(f"{ckpt} cannot be read as a checkpoint ({type(e).__name__}: {e})") from e
    weights = state.get("state_dict", {}) if isinstance(state, dict) else {}
    parts = {p: {k[len(p) + 1 :]: v for k, v in weights.items() if k.startswith(p + ".")} for p in ("policy", "critic")}
    if not parts["policy"]:
        raise ConfigError(f"{ckpt} holds no policy.* weights: not a checkpoint of a dvpo_lab training run")
    policy, tokenizer = _rebuild(cfg)
    spec = None
    modules = [("policy", policy)]
    if critic:
        from dvpo_lab.extensions import import_extra_modules

        import_extra_modules(cfg.get("extra_modules"))  # a critic class of the user's
        spec = algos.critic_from(cfg.critic)
        if spec.kind == "none" or not parts["critic"]:
            raise ConfigError(f"--critic: the run of {ckpt} has no critic (critic={spec.kind}); drop --critic")
        modules.append(("critic", build_critic(policy, spec.n_out, spec.head_init_std)))
    for name, mod in modules:
        missing, unexpected = mod.load_state_dict(parts[name], strict=False)
        if missing or unexpected:
            raise ConfigError(
                f"{ckpt}: its {name} weights do not fit the run's config (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}); was .hydra/config.yaml edited?"
            )
    hist = state.get("dvpo_lab", {}).get("history", [])
    step = int(state.get("epoch", -1)) + 1  # the checkpoint of RL step index e holds the state after e + 1 steps
    acc = next((h["val/acc"] for h in hist if h["step"] == step), None)
    return write_export(
        out,
        policy,
        tokenizer,
        modules[1][1] if critic else None,
        spec,
        lora,
        {"step": step, "val/acc": acc, "source": str(ckpt.absolute())},
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m dvpo_lab.export CKPT OUT [--critic] [--lora merged|adapter]`; a user error is one line on
    stderr and exit status 2."""
    p = argparse.ArgumentParser(
        prog="python -m dvpo_lab.export",
        description="Write a Hugging Face folder (policy + tokenizer, optionally the critic) from a run's checkpoint.",
    )
    p.add_argument("ckpt", help="a run's checkpoint (<run>/checkpoints/last.ckpt) or its run folder")
    p.add_argument("out", help="the folder to write (AutoModelForCausalLM.from_pretrained(OUT) loads it)")
    p.add_argument("--critic", action="store_true", help="also write the critic to OUT/critic (load_critic)")
    p.add_argument(
        "--lora",
        choices=LORA_MODES,
        default="merged",
        help="a LoRA policy: merged into a plain model (default) or the adapter alone",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        folder = export_checkpoint(args.ckpt, args.out, critic=args.critic, lora=args.lora)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info("wrote %s", folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
