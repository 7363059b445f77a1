"""Named studies (`sweep=NAME`), fault-tolerant and resumable multiruns, the report, W&B grouping.

The multirun test is real: `python -m dvpo_lab -m sweep=noise_robustness debug=smoke ...` in a subprocess
through the study's joblib launcher, with one grid point that cannot run (a minibatch that does not divide
the batch), rerun to show the skip and the resume, then `dvpo_lab.report` on the folder.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dvpo_lab import report
from dvpo_lab.config import SWEEPS_DIR, compose_config
from dvpo_lab.run import run
from tests.conftest import run_cli

STUDIES = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


def test_the_named_studies_exist():
    assert {"noise_robustness", "ablation", "quantiles", "risk_weight", "dvpo_optuna"} <= set(STUDIES)
    spec = OmegaConf.load(SWEEPS_DIR / "wandb" / "noise_robustness.yaml")
    assert spec.metric.name == "final/val_acc" and spec.method == "grid"
    assert list(spec.parameters.algo["values"]) == ["ppo", "grpo", "rbppo", "dvpo"]


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_composes(name, tmp_path):
    cfg = compose_config([f"sweep={name}"], tmp_path)
    assert cfg.study == name and cfg.resume is True
    assert cfg.hydra.sweep.dir.endswith(f"sweeps/{name}")
    assert "override_dirname" in OmegaConf.to_container(cfg.hydra.sweep)["subdir"]
    assert cfg.hydra.sweeper.params, "a study sweeps something"
    if name == "dvpo_optuna":
        assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.sampler.seed == 1
    else:
        assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.threads == 1


def test_noise_robustness_grid_is_4_algos_x_5_noises_x_5_seeds(tmp_path):
    p = compose_config(["sweep=noise_robustness"], tmp_path).hydra.sweeper.params
    sizes = [len(str(p[k]).split(",")) for k in ("algo", "noise", "seed")]
    assert sizes == [4, 5, 5] and math.prod(sizes) == 100


def _job(root: Path, mb: int) -> Path:
    found = [p for p in root.glob("*/") if f"rollout.minibatch_size={mb}" in p.name]
    assert len(found) == 1, list(root.iterdir())
    return found[0]


def test_sweep_survives_a_failing_job_then_skips_and_resumes(tmp_path):
    args = [
        "sweep=noise_robustness",
        "debug=smoke",
        "algo=ppo",
        "noise=none",
        "seed=1",
        "rollout.minibatch_size=2,3",
        "-m",
    ]  # 3 does not divide the 4 responses of a smoke step
    first = run_cli(args, tmp_path)
    out = first.stdout + first.stderr
    assert first.returncode == 1 and "Traceback" not in out, out[-3000:]  # every job ran, then rc 1
    root = tmp_path / "smoke" / "sweeps" / "noise_robustness"
    good, bad = _job(root, 2), _job(root, 3)
    line = [ln for ln in out.splitlines() if ln.startswith("error:")][-1]  # after each job's own line
    assert "1 job(s)" in line and bad.name in line and good.name not in line and "resume=true" in line, line
    assert (good / "summary.json").exists()
    assert "minibatch_size" in (bad / "failed.txt").read_text()  # recorded in its folder, the sweep went on

    stamp = (good / "summary.json").stat().st_mtime_ns
    second = run_cli(args, tmp_path)  # the same command again
    assert second.returncode == 1, second.stderr[-3000:]  # the bad job fails again
    assert (good / "summary.json").stat().st_mtime_ns == stamp  # finished: skipped, not rerun
    assert "already finished" in (good / "__main__.log").read_text()
    assert (bad / "failed.txt").exists()  # retried, failed again, still recorded

    (good / "summary.json").unlink()  # as if the job had been killed after its last checkpoint
    third = run_cli(args, tmp_path)
    assert third.returncode == 1, third.stderr[-3000:]
    assert "resuming after RL step" in (good / "__main__.log").read_text()
    assert (good / "summary.json").exists()

    path = report.write_report([root], tmp_path / "report")
    text = path.read_text()
    assert "1 finished, 1 failed, 0 unfinished" in text and "minibatch_size" in text
    for png in ("accuracy_vs_noise.png", "learning_curves.png"):
        assert (tmp_path / "report" / png).stat().st_size > 10_000


def test_a_changed_study_does_not_overwrite_a_finished_run(smoke_cfg):
    cfg = smoke_cfg("algo=grpo", "resume=true")
    first = run(cfg)
    summary = Path(cfg.paths.output_dir) / "summary.json"
    stamp = summary.stat().st_mtime_ns
    assert run(cfg) == first and summary.stat().st_mtime_ns == stamp  # skipped, the stored metric returned
    changed = smoke_cfg("algo=grpo", "resume=true", "algo.actor_lr=3e-4")
    with pytest.raises(ValueError, match="another config"):
        run(changed)


def test_report_statistics():
    xs = [0.80, 0.82, 0.84, 0.86, 0.88]
    m, lo, hi = report.t_interval(xs)
    assert m == pytest.approx(0.84) and lo == pytest.approx(0.84 - 2.7764 * statistics.stdev(xs) / 5**0.5, abs=1e-4)
    assert hi == pytest.approx(2 * m - lo)
    a, b = report.bootstrap_interval([0.01, 0.03, -0.01, 0.02, 0.04])
    assert (a, b) == report.bootstrap_interval([0.01, 0.03, -0.01, 0.02, 0.04])  # seeded
    assert -0.01 <= a < 0.018 < b <= 0.04
    assert math.isnan(report.t_interval([0.5])[1])


def test_report_on_hand_made_runs(tmp_path):
    """Cells, paired differences and the per-seed table from summary files written the way run() writes them."""
    import json

    for algo, base in (("ppo", 0.70), ("dvpo", 0.74)):
        for seed in (1, 2, 3):
            for noise, drop in (("none", 0.0), ("flip0.2", 0.05)):
                d = tmp_path / f"{algo}_{noise}_{seed}"
                d.mkdir()
                final = base - drop + 0.01 * seed
                hist = [
                    {"step": 0, "val/acc": 0.5},
                    {"step": 10, "val/acc": final - 0.02},
                    {"step": 20, "val/acc": final},
                ]
                (d / "summary.json").write_text(
                    json.dumps(
                        {
                            "algo": algo,
                            "task": "arith",
                            "noise": noise,
                            "seed": seed,
                            "total_steps": 20,
                            "initial/val_acc": 0.5,
                            "final/val_acc": final,
                            "best/val_acc": final,
                            "history": hist,
                        }
                    )
                )
    (tmp_path / "ppo_flip0.3_1").mkdir()
    (tmp_path / "ppo_flip0.3_1" / "fingerprint.txt").write_text("x\n")  # started, never finished
    (tmp_path / "ppo_flip0.3_2").mkdir()
    (tmp_path / "ppo_flip0.3_2" / "failed.txt").write_text("ValueError: boom\n")  # raised
    text = report.write_report([tmp_path], tmp_path / "out").read_text()
    assert "| arith | dvpo | flip0.2 | 3 | 20 | 50.0 | 71.0 [68.5, 73.5] | 1.0 |" in text
    assert "| arith | flip0.2 | dvpo | 3 | +4.0 | [+4.0, +4.0] | [+4.0, +4.0] | 0.0 | ahead | 3 of 3 |" in text
    assert "| arith | none | 2 | 76.0 | 72.0 |" in text
    assert "unfinished" in text and "ppo_flip0.3_1" in text

    ledger = tmp_path / "out" / report.LEDGER  # the committed form: the same report from one file
    table = report.summary_table(report.load([tmp_path]))
    assert report.summary_table(report.load([ledger])) == table
    from_ledger = report.write_report([ledger], tmp_path / "b").read_text()
    assert "| arith | dvpo | flip0.2 | 3 | 20 | 50.0 | 71.0" in from_ledger
    # line by line the same report, the failed and unfinished jobs named alike, except the line naming the source
    assert "| failed | ppo_flip0.3_2 | 0 of 0 | ValueError: boom |" in text
    assert [x for i, x in enumerate(from_ledger.splitlines()) if i != 2] == [
        x for i, x in enumerate(text.splitlines()) if i != 2
    ]
    assert report.restore(ledger, tmp_path / "restored") == 12  # finished jobs only
    assert report.summary_table(report.load([tmp_path / "restored"])) == table


def test_restored_jobs_keep_the_run_time_measured_where_they_ran(tmp_path):
    """A study resumed on another machine from a committed ledger: the restored jobs have no fingerprint.txt, so
    their run time must come from the ledger, not be lost (the report sums run time over all jobs)."""
    import json
    import os

    d = tmp_path / "sweep" / "algo=ppo,seed=1"
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("- algo=ppo\n- seed=1\n")
    (d / "fingerprint.txt").write_text("x\n")
    hist = [{"step": 0, "val/acc": 0.5}, {"step": 10, "val/acc": 0.75}]
    summary = {"algo": "ppo", "task": "arith", "noise": "none", "seed": 1, "total_steps": 10, "history": hist}
    (d / "summary.json").write_text(json.dumps(summary))
    os.utime(d / "fingerprint.txt", (1000.0, 1000.0))
    os.utime(d / "summary.json", (1137.0, 1137.0))  # 137 s of RL
    report.write_report([tmp_path / "sweep"], tmp_path / "out")
    assert report.restore(tmp_path / "out" / report.LEDGER, tmp_path / "elsewhere") == 1
    (restored,) = report.load([tmp_path / "elsewhere"])
    assert not (tmp_path / "elsewhere" / "algo=ppo,seed=1" / "fingerprint.txt").exists()
    assert restored.wall_s == pytest.approx(137.0) and restored.final == 0.75
    text = report.write_report([tmp_path / "elsewhere"], tmp_path / "out2").read_text()
    assert "137 s per run on average" in text


def test_wandb_offline_groups_tags_and_logs_sample_tables(smoke_cfg, monkeypatch, tmp_path):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = smoke_cfg("algo=grpo", "noise=flip0.2", "seed=4", "logger=wandb", "eval_every=1", "study=mystudy")
    try:
        acc = run(cfg)
        r = wandb.run
        assert r.group == "mystudy/arith_teacher/flip0.2" and r.job_type == "grpo"
        assert {"grpo", "arith_teacher", "flip0.2", "seed4", "mystudy"} <= set(r.tags)
        assert r.summary["final/val_acc"] == pytest.approx(acc)
    finally:
        wandb.finish()
    tables = list(Path(cfg.paths.output_dir).rglob("media/table/samples_*.table.json"))
    assert len(tables) == 3  # one per RL step at eval_every=1
    import json

    t = json.loads(tables[0].read_text())
    assert t["columns"] == ["step", "prompt", "response", "answer", "reward_clean", "reward_noisy"]
    assert len(t["data"]) == 4  # a smoke step has 4 responses


@pytest.mark.slow
def test_optuna_study_replays_on_rerun(tmp_path):
    """The seeded TPE proposes the same points again and finished trials return their stored result, so
    rerunning an interrupted Optuna study continues it instead of starting over."""
    args = ["sweep=dvpo_optuna", "debug=smoke", "hydra.sweeper.n_trials=2", "-m"]
    first = run_cli(args, tmp_path)
    assert first.returncode == 1 and "1 job(s)" in first.stderr, first.stderr[-3000:]  # every job ran, then rc 1
    root = tmp_path / "smoke" / "sweeps" / "dvpo_optuna"
    trials = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert len(trials) == 2 and (root / "optimization_results.yaml").exists()
    second = run_cli(args, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == trials
    assert all("already finished" in (root / t / "__main__.log").read_text() for t in trials)


def test_report_names_methods_without_shared_overrides_in_study_order(tmp_path):
    """A study run with `trainer=gpu` on every job: methods read `dvpo_qr`, `--baseline dvpo_qr` pairs, the shared
    override is stated once, and ablation rows follow their presets (1_qr before 2_cons), numbers sort as numbers."""
    import json

    import yaml

    for preset, algo, acc in (("ablation_2_cons", "dvpo_cons", 0.80), ("ablation_1_qr", "dvpo_qr", 0.78)):
        for seed in (1, 2):
            d = tmp_path / f"{preset}_{seed}"
            (d / ".hydra").mkdir(parents=True)
            (d / ".hydra" / "overrides.yaml").write_text(
                yaml.safe_dump([f"experiment={preset}", f"seed={seed}", "noise=flip0.2", "trainer=gpu"])
            )
            hist = [{"step": 0, "val/acc": 0.5}, {"step": 10, "val/acc": acc + 0.01 * seed}]
            (d / "summary.json").write_text(
                json.dumps(
                    {
                        "algo": algo,
                        "task": "arith",
                        "noise": "flip0.2",
                        "seed": seed,
                        "total_steps": 10,
                        "history": hist,
                    }
                )
            )
    text = report.write_report([tmp_path], tmp_path / "out", baseline="dvpo_qr").read_text()
    assert "left out of the method names): `trainer=gpu`" in text
    assert "| arith | flip0.2 | dvpo_cons | 2 | +2.0 |" in text
    assert text.index("| arith | dvpo_qr |") < text.index("| arith | dvpo_cons |")
    assert "--baseline dvpo_qr" in text
    names = ["dvpo critic.n_quantiles=500", "dvpo critic.n_quantiles=50", "dvpo critic.n_quantiles=200"]
    assert sorted(names, key=report.natural_key) == [names[1], names[2], names[0]]
