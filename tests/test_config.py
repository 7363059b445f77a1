"""The config tree: every combination of options composes; bad keys, types and options fail at start."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import ValidationError

from dvpo_lab import algos
from dvpo_lab.checks import check_batch_sizes, check_config
from dvpo_lab.config import ConfigError
from tests.conftest import CONF, compose_cfg

GROUPS = ["algo", "task", "noise", "model", "trainer", "logger", "experiment", "debug"]


def options(group: str) -> list[str]:
    found = sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))
    assert found, f"conf/{group}/ has no options"
    return found + (["null"] if group in ("experiment", "debug") else [])


def walk(combos: list[tuple[str, ...]]) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for combo in combos:
            overrides = [f"{g}={o}" for g, o in zip(GROUPS, combo, strict=True) if o != "null"]
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
            with open_dict(cfg):
                cfg.hydra.runtime.output_dir = "outputs/x"
            HydraConfig().set_config(cfg)
            resolved = {
                k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                for k in cfg
                if k != "hydra"
            }
            assert resolved["noise"]["name"] == combo[2], overrides
            choices, task_overrides = dict(cfg.hydra.runtime.choices), list(cfg.hydra.overrides.task)
            if combo[6].startswith(("ablation_", "quantiles_")) and combo[0] != "dvpo":
                # those presets run algo=dvpo and name their runs after it: another algo contradicts them
                with pytest.raises(ConfigError, match=f"algo={combo[0]} contradicts experiment={combo[6]}"):
                    check_config(cfg, choices, task_overrides)
                continue
            assert resolved["algo"]["name"].startswith(combo[0]), overrides
            check_config(cfg, choices, task_overrides)  # no valid combination is refused


def test_every_combination_of_run_shaping_groups_composes():
    """algo x task in full; noise/model/trainer/logger/experiment/debug options rotate through it, so every
    option of every group composes (the full product is the slow test below)."""
    shaping = {g: options(g) for g in ("algo", "task")}
    rotating = {g: options(g) for g in ("noise", "model", "trainer", "logger", "experiment", "debug")}
    n = max(len(list(itertools.product(*shaping.values()))), *(len(o) for o in rotating.values()))
    product = list(itertools.product(*shaping.values()))
    combos = []
    for i in range(n):
        a, t = product[i % len(product)]
        no, m, tr, lg, e, d = (opts[i % len(opts)] for opts in rotating.values())
        combos.append((a, t, no, m, tr, lg, e, d))
    for g, opts in rotating.items():  # every rotating option is used
        assert {c[GROUPS.index(g)] for c in combos} == set(opts)
    walk(combos)


@pytest.mark.slow
def test_every_combination_composes():
    """The full product of all options of all groups (~1300 compositions, a few minutes)."""
    walk(list(itertools.product(*(options(g) for g in GROUPS))))


def test_dotted_option_name_composes():
    cfg = compose_cfg(["noise=flip0.2"])
    assert cfg.noise._target_ == "dvpo_lab.noise.FlipNoise" and cfg.noise.p == pytest.approx(0.2)


def test_default_is_dvpo_on_the_offline_testbed():
    cfg = compose_cfg([])
    assert (cfg.algo.name, cfg.task.name, cfg.model.name) == ("dvpo", "arith_teacher", "tiny")
    critic = algos.critic_from(cfg.critic)
    assert (critic.kind, critic.n_heads, critic.n_quantiles) == ("quantile", 3, 200)


@pytest.mark.parametrize(
    ("algo", "critic"),
    [
        ("dvpo", "quantile"),
        ("ppo", "scalar"),
        ("rbppo", "ensemble"),
        ("grpo", "none"),
        ("dr_grpo", "none"),
        ("rloo", "none"),
        ("reinforce_pp", "none"),
    ],
)
def test_each_algo_picks_its_critic(algo, critic):
    cfg = compose_cfg([f"algo={algo}"])
    assert algos.critic_from(cfg.critic).kind == critic == algos.get_algo(cfg.algo.adv_estimator).critic


def test_ablation_presets_switch_terms_on_cumulatively():
    rows = ["ablation_1_qr", "ablation_2_cons", "ablation_3_calib", "ablation_4_shift", "ablation_5_full"]
    on = [sum(bool(v) for v in compose_cfg([f"experiment={r}"]).algo.dist.use.values()) for r in rows]
    assert on == [0, 1, 3, 4, 6]
    assert compose_cfg(["experiment=quantiles_50"]).critic.n_quantiles == 50


def test_debug_smoke_shrinks_the_run():
    cfg = compose_cfg(["debug=smoke"])
    assert cfg.total_steps <= 5 and cfg.rollout.prompts_per_step <= 4 and cfg.sft.max_steps <= 10


def test_misspelt_key_names_the_key():
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(["algo.gama=0.9"])
    assert "gama" in str(e.value) + str(e.value.__cause__)


def test_misspelt_key_in_yaml_file_is_caught(tmp_path):
    """A typo inside an option file (not only on the command line) fails against the schema."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "algo" / "typo.yaml").write_text(
        "# @package _global_\ndefaults:\n  - ppo\n  - _self_\nalgo:\n  name: typo\n  lamda: 0.9\n"
    )
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigCompositionException) as e, initialize_config_dir(str(conf), version_base="1.3"):
        compose("config", overrides=["algo=typo"])
    assert "lamda" in str(e.value) + str(e.value.__cause__)


def test_wrong_type_names_the_key():
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose_cfg(["algo.lam=lots"])
    msg = str(e.value) + str(e.value.__cause__)
    assert "lam" in msg and "lots" in msg


def test_unknown_option_lists_choices():
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(["algo=ppoo"])
    msg = str(e.value)
    assert "ppoo" in msg and "ppo" in msg and "grpo" in msg


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["rollout.minibatch_size=5"], ["minibatch_size=5", "divide"]),
        (["rollout.prompts_per_step=0"], ["prompts_per_step=0"]),
        (["algo=grpo", "rollout.samples_per_prompt=1", "rollout.minibatch_size=1"], ["samples_per_prompt"]),
        (["algo=rloo", "rollout.samples_per_prompt=1", "rollout.minibatch_size=1"], ["samples_per_prompt"]),
    ],
)
def test_impossible_batch_sizes(overrides, words):
    cfg = compose_cfg(overrides)
    with pytest.raises(ConfigError) as e:
        check_batch_sizes(cfg)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["algo=dvpo", "critic=scalar"], ["algo=dvpo", "'quantile'", "critic=scalar"]),
        (["algo=ppo", "critic=quantile"], ["algo=ppo", "'scalar'"]),
        (["algo=grpo", "critic=scalar"], ["'none'"]),
        (["critic.tau_grid=edges"], ["critic.tau_grid", "mid", "paper"]),
        (["critic.monotone=isotonic"], ["critic.monotone", "cumsoftplus"]),
        (["algo.dist.actor_advantage=median"], ["algo.dist.actor_advantage", "cvar", "wang"]),
        (["algo.dist.kappa=-1"], ["algo.dist.kappa"]),
        (["algo.dist.tail_alpha=0"], ["algo.dist.tail_alpha"]),
        (["algo.dist.value_clip=both"], ["algo.dist.value_clip"]),
        (["algo=rbppo", "critic.head_init_std=0"], ["critic.head_init_std=0", "stay equal"]),
        (["algo=rbppo", "algo.robust.v_lo=min"], ["algo.robust.v_lo", "batch_min"]),
        (["critic.n_quantiles=0"], ["critic.n_quantiles=0"]),
        (["algo.adv_estimator=vtrace"], ["vtrace", "dist_gae"]),
    ],
)
def test_algorithm_and_critic_mismatches_fail_with_the_fix(overrides, words):
    from hydra.errors import ConfigCompositionException

    from dvpo_lab.api import one_line
    from dvpo_lab.checks import check_values

    with pytest.raises((ConfigError, ConfigCompositionException)) as e:  # Enum choices are refused when composing
        check_values(compose_cfg(overrides))
    for w in words:
        assert w in one_line(e.value), one_line(e.value)


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("noise.pp=0.3", "noise.p"),
        ("critic.n_quantile=3", "critic.n_quantiles"),
        ("trainer.max_epoch=3", "trainer.max_epochs"),
    ],
)
def test_a_misspelt_argument_of_a_target_node_gets_the_closest_spelling(override, hint):
    import dvpo_lab

    with pytest.raises(ConfigError, match=f"did you mean {hint}\\?"):
        dvpo_lab.compose([override])
