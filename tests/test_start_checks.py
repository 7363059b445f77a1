"""What fails at start, and how: every value that cannot work, unknown keys whatever their prefix, presets
contradicted on the command line, run folders that are another run's, sweeps with failed jobs, and errors
printed as one line (a traceback only for bugs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf, open_dict

from dvpo_lab.checks import check_config, check_prompt_budget, model_context
from dvpo_lab.config import ConfigError
from dvpo_lab.hydra_callbacks import RunFolders, claim_folder
from dvpo_lab.resume import FolderTaken, check_run_folder, config_fingerprint, resolve_ckpt_path
from tests.conftest import ROOT, compose_cfg, run_cli

SMOKE = ["debug=smoke", "logger=csv"]


def check(overrides: list[str]) -> str:
    """What the command line checks: composing (the typed choices are Enums, refused there, as one line) and then
    the start checks."""
    from hydra.errors import ConfigCompositionException

    from dvpo_lab.api import one_line

    try:
        cfg = compose_cfg(overrides)
    except ConfigCompositionException as e:
        raise ConfigError(one_line(e)) from e
    return check_config(cfg, dict(cfg.hydra.runtime.choices), list(cfg.hydra.overrides.task))


# ----------------------------------------------------------------------------- values that cannot work
@pytest.mark.parametrize(
    "override",
    [
        "rollout.temperature=0",
        "rollout.temperature=-1",
        "rollout.temperature=nan",
        "rollout.temperature=inf",
        "rollout.top_k=-1",
        "rollout.top_p=0",
        "rollout.top_p=1.5",
        "rollout.max_new_tokens=0",
        "rollout.min_new_tokens=-1",
        "rollout.eval_batch_size=0",
        "rollout.eval_limit=0",
        "rollout.engine=beam",
        "algo.loss_agg_mode=seq-mean",
        "algo.kl_penalty=k4",
        "algo.kl_loss_type=kl2",
        "algo.kl_ctrl=pid",
        "algo.kl_coef=-0.1",
        "algo.kl_target=0",
        "algo.clip_ratio_low=1.0",
        "algo.clip_ratio_high=-0.1",
        "algo.clip_ratio_c=0.5",
        "algo.cliprange_value=0",
        "algo.gamma=1.5",
        "algo.lam=-0.1",
        "algo.ppo_epochs=0",
        "algo.actor_lr=-0.5",
        "algo.grad_clip=0",
        "algo.critic_warmup=-1",
        "algo.dist.risk_alpha=0",
        "algo.robust.rho=2",
        "algo.dist.weights.shape=-1",
        "algo.dist.margin_low=1",
        "noise.p=1.5",
        "noise.granularity=batch",
        "model.dtype=fp8",
        "model.tokenizer=bpe",
        "model.lora.r=0",
        "model.arch.num_heads=3",
        "sft.lr=0",
        "sft.batch_size=0",
        "sft.target_acc=1.5",
        "sft.eval_every=0",
        "sft.lr_schedule=linear",
        "sft.decay_steps=0",
        "sft.decay_below_loss=-0.1",
        "mode=serve",
        "seed=-1",
        "threads=0",
        "task.digits=0",
        "task.sft_label_noise=2",
        "total_steps=0",
        "ckpt_every=0",
        "algo.dist.qr_on=mean",
        "algo.robust.v_lo=min",
        "callbacks.progress_bar.mode=fancy",
        "callbacks.progress_bar.every_s=-1",
    ],
)
def test_every_value_that_cannot_work_fails_at_start_naming_key_and_value(override):
    key, value = override.split("=")
    with pytest.raises(ConfigError) as e:
        check([override])
    msg = str(e.value)
    assert key in msg and "\n" not in msg, msg
    if value not in ("nan", "inf"):
        assert value.lstrip("-").split(".")[0] in msg, msg


@pytest.mark.parametrize(
    "overrides",
    [
        ["noise=asym_fp0.1_fn0.3", "noise.fn=-0.2"],
        ["noise=rm0.72", "noise.acc=1.2"],
        ["noise=gauss0.3", "noise.sigma=-1"],
        ["noise=majority_vote", "noise.k=0"],
        ["noise=majority_vote", "noise.temperature=0"],
        ["task=gsm8k", "task.template=jinja"],
        ["task=sciqa", "task.n_choices=7"],
        ["task=dialogue", "task.max_turns=0"],
        ["rollout.max_new_tokens=4", "rollout.min_new_tokens=5"],
        ["task=arith_teacher", "task.teacher=random"],
        ["task=arith_teacher", "task.teacher_error_rate=1.5"],
    ],
)
def test_every_group_option_checks_its_own_knobs(overrides):
    with pytest.raises(ConfigError) as e:
        check(overrides)
    assert overrides[-1].split("=")[0] in str(e.value)


def test_the_shipped_defaults_pass():
    for algo in ("dvpo", "ppo", "rbppo", "grpo", "dr_grpo", "rloo", "reinforce_pp"):
        assert "responses/step" in check([f"algo={algo}"])
    check(["rollout.temperature=0.1", "rollout.top_p=1.0", "rollout.top_k=5", "algo.clip_ratio_c=null"])


def test_prompt_budget_is_refused_where_no_prompt_fits():
    cfg = compose_cfg(["rollout.max_new_tokens=600"])  # the tiny model's context is 512
    with pytest.raises(ConfigError) as e:
        check_prompt_budget(cfg, 17, model_context(cfg))
    assert "rollout.max_new_tokens=600" in str(e.value) and "512" in str(e.value)
    with open_dict(cfg):
        cfg.rollout.max_new_tokens = 512
    with pytest.raises(ConfigError):
        check_prompt_budget(cfg, 17, 512)
    cfg.rollout.max_new_tokens = None  # the task's response length
    assert check_prompt_budget(cfg, 17, 512) == 495
    with pytest.raises(ConfigError, match="max_new_tokens"):  # a task whose responses need the whole context
        check_prompt_budget(cfg, 512, 512)


# ----------------------------------------------------------------------------- unknown keys, any prefix
@pytest.mark.parametrize(
    "override, near",
    [
        ("+algo.gama=0.9", "algo.gamma"),
        ("++algo.gama=0.9", "algo.gamma"),
        ("+algo.dist.kapa=0.1", "algo.dist.kappa"),
        ("+algo.dist.use.shap=false", "algo.dist.use.shape"),
        ("+rollout.temprature=0.5", "rollout.temperature"),
        ("+task.digitz=4", "task.digits"),
        ("+model.arch.hiden_size=64", "model.arch.hidden_size"),
        ("+noise.pp=0.1", "noise.p"),
        ("+sft.max_step=3", "sft.max_steps"),
        ("+seeds=3", "seed"),
        ("+trainer.max_epoch=3", "trainer.max_epochs"),
        ("+logger.csv.flush_every=1", None),
        ("+callbacks.model_checkpoint.every_n_epoch=2", "callbacks.model_checkpoint.every_n_epochs"),
    ],
)
def test_unknown_keys_are_refused_whatever_their_prefix(override, near):
    with pytest.raises(ConfigError) as e:
        check([override])
    key = override.lstrip("+").split("=")[0]
    assert f"{key}=" in str(e.value)
    if near:
        assert f"did you mean {near}?" in str(e.value)


def test_extras_is_the_free_form_node():
    check(["+extras.my_note=hello", "+extras.nested.k=1"])


# ----------------------------------------------------------------------------- presets must not mislabel runs
@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=ablation_1_qr", "algo=ppo"],
        ["experiment=ablation_5_full", "algo=grpo"],
        ["experiment=quantiles_50", "algo=rbppo"],
        ["algo=grpo", "algo.adv_estimator=rloo"],
    ],
)
def test_a_run_named_after_something_else_is_refused(overrides):
    with pytest.raises(ConfigError) as e:
        check(overrides)
    assert overrides[-1] in str(e.value)


def test_presets_and_renamed_algorithms_that_say_what_runs_pass():
    check(["experiment=ablation_1_qr"])
    check(["experiment=ablation_1_qr", "algo=dvpo"])
    check(["algo=grpo", "algo.adv_estimator=rloo", "algo.name=grpo_rloo"])


# ----------------------------------------------------------------------------- run folders
def test_claim_folder_never_shares(tmp_path):
    a, b, c = (claim_folder(tmp_path / "2026-12-01_10-00-00_dvpo_flip0.2_s1") for _ in range(3))
    assert len({a, b, c}) == 3 and all(p.is_dir() for p in (a, b, c))
    assert b.name.endswith("_2") and c.name.endswith("_3")


def _hydra_cfg(tmp_path: Path, *overrides: str):
    cfg = compose_cfg([*SMOKE, f"paths.log_dir={tmp_path}", *overrides])
    return cfg


def test_two_runs_in_the_same_second_get_their_own_folders(tmp_path):
    """Hydra's default run folder is named to the second: two configs started in that second still get two."""
    from datetime import datetime

    first, second = _hydra_cfg(tmp_path), _hydra_cfg(tmp_path, "algo.actor_lr=0.0")
    sweeps = [_hydra_cfg(tmp_path, f"seed={s}") for s in (1, 2)]  # two multiruns started in that second
    named = _hydra_cfg(tmp_path, f"hydra.sweep.dir={tmp_path}/study")  # a named study resumes in place
    OmegaConf.clear_resolver("now")  # after composing (Hydra registers its own); folders resolve on access
    OmegaConf.register_new_resolver("now", lambda pattern: datetime(2026, 12, 1, 10, 0, 0).strftime(pattern))
    try:
        assert first.hydra.run.dir == second.hydra.run.dir  # the collision, before the callback
        RunFolders().on_run_start(first)
        RunFolders().on_run_start(second)
        for cfg in sweeps:
            RunFolders().on_multirun_start(cfg)
        assert sweeps[0].hydra.sweep.dir != sweeps[1].hydra.sweep.dir
        RunFolders().on_multirun_start(named)
        assert named.hydra.sweep.dir == f"{tmp_path}/study"
    finally:
        OmegaConf.clear_resolver("now")
        OmegaConf.register_new_resolver("now", lambda pattern: datetime.now().strftime(pattern), use_cache=True)
    assert first.hydra.run.dir != second.hydra.run.dir
    assert Path(first.hydra.run.dir).is_dir() and Path(second.hydra.run.dir).is_dir()


def test_a_folder_holding_a_run_refuses_another(tmp_path):
    cfg = compose_cfg(SMOKE)
    (tmp_path / "fingerprint.txt").write_text("0123456789abcdef\n")
    with pytest.raises(FolderTaken, match="another config"):
        check_run_folder(cfg, tmp_path, config_fingerprint(cfg))
    fp = config_fingerprint(cfg)
    (tmp_path / "fingerprint.txt").write_text(fp + "\n")
    with pytest.raises(FolderTaken, match="ckpt_path=last"):  # same config: continue it or go elsewhere
        check_run_folder(cfg, tmp_path, fp)
    for key, value in (("ckpt_path", "last"), ("resume", True)):
        again = compose_cfg(SMOKE)
        again[key] = value
        check_run_folder(again, tmp_path, fp)
    check_run_folder(cfg, tmp_path / "fresh", fp)


def failed_with(proc: subprocess.CompletedProcess, *words: str, status: int = 2) -> str:
    """A user error: exit status `status`, no traceback, one error line (plus at most a hint line)."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == status, f"rc={proc.returncode}:\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    errors = [ln for ln in out.splitlines() if ln.startswith("error:") or "][ERROR]" in ln]
    assert len(errors) == 1, out[-3000:]
    hints = [ln for ln in out.splitlines() if ln.startswith("hint:")]
    assert len(hints) <= 1
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


def test_a_second_config_never_writes_into_the_first_runs_folder(tmp_path):
    """The example: the same `hydra.run.dir=D` for two configs that differ in `algo.actor_lr`."""
    cache, run_dir = tmp_path / "cache", tmp_path / "D"
    first = run_cli([*SMOKE, "algo.actor_lr=1e-4", f"hydra.run.dir={run_dir}"], tmp_path, cache)
    assert first.returncode == 0, first.stderr[-3000:]
    screen = (first.stdout + first.stderr).splitlines()
    assert any(f"run folder: {run_dir}" in ln for ln in screen)  # the start screen: folder and config tree
    assert any(ln.startswith("  algo (dvpo): name=dvpo adv_estimator=dist_gae") for ln in screen)
    assert not any("Tip:" in ln or ln.startswith("INFO: ") for ln in screen)  # each line once, no vendor tip
    gpu_lines = [ln for ln in screen if "GPU available" in ln]
    assert len(gpu_lines) == 2  # one per Lightning Trainer (warm-start, RL), not doubled
    kept = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.suffix != ".log"}
    assert run_dir / ".hydra" / "overrides.yaml" in kept and run_dir / "csv" / "metrics.csv" in kept

    second = run_cli([*SMOKE, "algo.actor_lr=0.0", f"hydra.run.dir={run_dir}"], tmp_path, cache)
    failed_with(second, "another config", str(run_dir))
    resumed = run_cli([*SMOKE, "algo.actor_lr=0.0", f"hydra.run.dir={run_dir}", "ckpt_path=last"], tmp_path, cache)
    failed_with(resumed, "another config")
    for path, data in kept.items():
        assert path.read_bytes() == data, f"{path} changed"


def test_ckpt_path_refuses_another_configs_checkpoint(tmp_path, smoke_cfg):
    from dvpo_lab.run import run

    cfg = smoke_cfg("algo.actor_lr=1e-4", name="a")
    run(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    other = smoke_cfg("algo.actor_lr=0.0", name="b")
    other.ckpt_path = str(ckpt)
    with pytest.raises(ConfigError, match="another config"):
        resolve_ckpt_path(other, Path(other.paths.output_dir), config_fingerprint(other))
    same = smoke_cfg("algo.actor_lr=1e-4", name="c")
    same.ckpt_path = str(ckpt)
    assert resolve_ckpt_path(same, Path(same.paths.output_dir), config_fingerprint(same)) == str(ckpt)
    assert json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())["total_steps"] == 3


# ----------------------------------------------------------------------------- one-line errors, exit status
# One command per way a bad input is caught (a value check, a key the schema lacks with and without `+`, a group
# option Hydra cannot find, a preset against its algorithm); each check's other members are tested in-process
# above (temperature, loss_agg_mode, nested keys), without a ~5 s interpreter start each.
@pytest.mark.parametrize(
    "args, words",
    [
        (["rollout.minibatch_size=7"], ["rollout.minibatch_size=7", "divide"]),
        (["+algo.gama=0.9"], ["algo.gama=0.9", "algo.gamma"]),
        (["algo.gama=0.9"], ["algo.gama", "did you mean algo.gamma?"]),
        (["noise=flip0.25"], ["flip0.25", "flip0.2 | flip0.3"]),
        (["experiment=ablation_1_qr", "algo=ppo"], ["algo=ppo", "experiment=ablation_1_qr"]),
    ],
)
def test_user_errors_are_one_line_and_load_nothing(tmp_path, args, words):
    cache = tmp_path / "cache"
    failed_with(run_cli([*SMOKE, *args], tmp_path, cache), *words)
    assert not (cache / "warmstart").exists(), "the warm-start ran before the check"
    runs = tmp_path / "smoke" / "runs"
    assert not (runs.exists() and any(runs.iterdir())), "a refused run left its (log-only) folder behind"


def test_full_error_keeps_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    proc = run_cli([*SMOKE, "rollout.minibatch_size=7"], tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


@pytest.mark.slow  # its joblib twin runs by default: test_sweeps.py::test_sweep_survives_a_failing_job_then_...
def test_a_sweep_with_failed_jobs_exits_non_zero_naming_them(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli([*SMOKE, "rollout.minibatch_size=3,2", f"hydra.sweep.dir={sweep}", "-m"], tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    line = [ln for ln in out.splitlines() if ln.startswith("error:")][-1]  # after each job's own line
    assert "1 job(s)" in line and "0_dvpo_flip0.2_s1" in line and "resume=true" in line and "1_dvpo" not in line
    assert (sweep / "0_dvpo_flip0.2_s1" / "failed.txt").read_text().startswith("ConfigError: rollout.minibatch")
    assert (sweep / "1_dvpo_flip0.2_s1" / "summary.json").exists()  # every job ran


@pytest.mark.parametrize("what", ["job", "all"])
def test_printing_the_resolved_config_works(tmp_path, what):
    proc = subprocess.run(
        [sys.executable, "-m", "dvpo_lab", "--cfg", what, "--resolve"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = yaml.safe_load(proc.stdout)
    paths = printed["paths"] if what == "job" else printed["paths"]
    assert paths["output_dir"] is None and paths["log_dir"].endswith("outputs")
    assert OmegaConf.create(printed)["algo"]["name"] == "dvpo"


# ----------------------------------------------------------------------------- the machine and the model
@pytest.mark.parametrize(
    "overrides, words",
    [
        (["trainer.precision=bf17"], ["precision=bf17", "bf16-mixed"]),
        (["trainer.accelerator=tpu"], ["accelerator=tpu"]),
        (["+trainer.strategy=zero9"], ["strategy=zero9"]),
    ],
)
def test_a_trainer_this_machine_cannot_run_fails_at_start(overrides, words):
    from dvpo_lab.checks import check_trainer

    with pytest.raises(ConfigError) as e:
        check_trainer(compose_cfg(overrides))
    for w in words:
        assert w in str(e.value)
    check_trainer(compose_cfg([]))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU: trainer=gpu can run")
def test_trainer_gpu_without_a_gpu_fails_at_start():
    from dvpo_lab.checks import check_trainer

    with pytest.raises(ConfigError, match="accelerator=gpu"):
        check_trainer(compose_cfg(["trainer=gpu"]))


def test_a_model_path_that_does_not_load_fails_at_start(tmp_path):
    cfg = compose_cfg([f"model.name_or_path={tmp_path}/no_model", "model.tokenizer=auto"])
    with pytest.raises(ConfigError, match="model.name_or_path=.*no_model"):
        model_context(cfg)
