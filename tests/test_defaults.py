"""One source for every default: the typed schema (`dvpo_lab/config.py`, the algorithms' own nodes) holds them, and
the YAML files that make the default run (`conf/config.yaml`, each algorithm's and model's option) never restate
one. Presets (`experiment/`, `debug/`, `sweeps/`) pin values on purpose and are not checked. `_target_` nodes
(critic, noise, task, trainer, ...) are the other way round: the YAML option holds every argument's value and the
class declares none (see test_target_options_hold_every_argument)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from dvpo_lab.config import CONF_DIR, Config

SCHEMA = OmegaConf.structured(Config)
FREE = ("defaults", "hydra", "tags")  # Hydra's own keys; tags is an interpolation, not a default


def restated(node: DictConfig, path: str) -> list[str]:
    """Keys of a YAML node whose value equals the schema default at the same place."""
    out = []
    for key in node.keys():
        full = f"{path}{key}"
        if full in FREE:
            continue
        value = node._get_node(key)._value() if not isinstance(node[key], DictConfig) else None
        schema = OmegaConf.select(SCHEMA, full, default=None, throw_on_missing=False)
        if isinstance(node[key], DictConfig):
            if isinstance(schema, DictConfig) and OmegaConf.get_type(schema) is not dict:  # a typed sub-node
                out += restated(node[key], f"{full}.")
            continue
        if (
            OmegaConf.is_missing(SCHEMA, full)
            if OmegaConf.select(SCHEMA, full.rpartition(".")[0] or "", default=None) is not None
            else False
        ):
            continue
        if schema is not None and not isinstance(schema, DictConfig) and value == schema:
            out.append(f"{full}={value}")
    return out


def option_files() -> list[tuple[Path, str]]:
    files = [(CONF_DIR / "config.yaml", "")]
    for group in ("algo", "model"):
        for f in sorted((CONF_DIR / group).glob("*.yaml")):
            text = f.read_text()
            files.append((f, "" if "@package _global_" in text else f"{group}."))
    return files


@pytest.mark.parametrize(("path", "prefix"), option_files(), ids=lambda x: x.name if isinstance(x, Path) else x)
def test_no_option_restates_a_schema_default(path: Path, prefix: str):
    node = OmegaConf.load(path)
    if prefix:
        node = OmegaConf.create({prefix.rstrip("."): node})
    assert restated(node, "") == [], f"{path.relative_to(CONF_DIR)} restates schema defaults (dvpo_lab/config.py)"


TARGET_GROUPS = ("critic",)


@pytest.mark.parametrize(
    "path",
    [f for g in TARGET_GROUPS for f in sorted((CONF_DIR / g).glob("*.yaml"))],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_target_options_hold_every_argument(path: Path):
    """A `_target_` option lists every constructor argument, and the constructor gives none a default: the YAML
    value is the only one, and every argument can be overridden from the command line (`critic.n_quantiles=50`)."""
    node = OmegaConf.load(path)
    params = {
        k: p
        for k, p in inspect.signature(get_object(node._target_)).parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    assert set(params) == {k for k in node if not str(k).startswith("_")}, path.name
    assert all(p.default is inspect.Parameter.empty for p in params.values()), path.name


def test_the_check_can_fail():
    """A restated default is caught (the check above is not vacuous)."""
    assert restated(OmegaConf.create({"sft": {"lr": 2e-3, "max_steps": 7}}), "") == ["sft.lr=0.002"]
    assert restated(OmegaConf.create({"algo": {"dist": {"kappa": 0.02}}}), "") == ["algo.dist.kappa=0.02"]
