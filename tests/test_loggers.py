"""Experiment loggers per job (`dvpo_lab.loggers`): one W&B run per job in every launcher, finished whatever
happened to the job, holding the resolved config; `csv/metrics.csv` whatever `logger=` says; the same W&B run
continued on resume. W&B runs offline here: its `.wandb` file is read back record by record."""

from __future__ import annotations

import csv
import json
import math
import struct
import time
import zlib
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, read_write

from dvpo_lab.loggers import WANDB_ID, build_loggers, hyperparameters
from dvpo_lab.run import run_job
from tests.conftest import run_cli

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

ONE_STEP = ["total_steps=1", "eval_every=1"]  # evaluations at RL steps 0 and 1: enough rows to tell jobs apart


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """W&B offline, no key, nothing written outside tmp_path; no run left open for the next test."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield
    wandb.finish()


def _key(item) -> str:
    return "/".join(item.nested_key) or item.key


def wandb_run(path: Path, wait_s: float = 60) -> dict:
    """An offline run's `run-<id>.wandb` (a LevelDB-style log of protobuf records, 32 KiB blocks, 7-byte record
    headers) -> {"id", "config", "history" (one dict per `log` call), "summary", "exit_code"}.

    W&B's service process writes the file on after `finish()` returns (or the job's process exits): read it
    again until its exit record is there."""
    deadline = time.monotonic() + wait_s
    while (out := _read_wandb_file(path))["exit_code"] is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return out


def _read_wandb_file(path: Path) -> dict:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, buf, out = 7, b"", {"config": {}, "history": [], "summary": {}, "exit_code": None}
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (n == 0 and kind == 0):  # block padding
            pos += left
            continue
        piece = data[pos + 7 : pos + 7 + n]
        if len(piece) < n or zlib.crc32(bytes([kind]) + piece) != crc:  # still being written
            break
        buf, pos = buf + piece, pos + 7 + n
        if kind not in (1, 4):  # FIRST or MIDDLE piece of a record
            continue
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(buf)
        buf, what = b"", rec.WhichOneof("record_type")
        if what == "run":
            out["id"] = rec.run.run_id
        elif what == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in rec.config.update})
        elif what == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif what == "summary":
            out["summary"].update({_key(u): json.loads(u.value_json) for u in rec.summary.update})
        elif what == "exit":
            out["exit_code"] = rec.exit.exit_code
    return out


def wandb_runs(job_dir: Path) -> list[dict]:
    return [wandb_run(p) for p in sorted(job_dir.glob("wandb/offline-run-*/run-*.wandb"))]


def val_acc_rows(job_dir: Path) -> dict[int, float]:
    with (job_dir / "csv" / "metrics.csv").open() as f:
        return {int(float(r["step"])): float(r["val/acc"]) for r in csv.DictReader(f) if r.get("val/acc")}


def job_dirs(root: Path) -> dict[str, Path]:
    """A multirun's job folders under root, keyed by their `logger=`/`seed=` overrides."""
    jobs = {}
    for hydra_dir in root.rglob(".hydra"):
        over = [o for o in OmegaConf.load(hydra_dir / "overrides.yaml") if o.split("=")[0] in ("logger", "seed")]
        jobs[" ".join(sorted(over))] = hydra_dir.parent
    return jobs


def check_own_wandb_run(job: Path, seed: int) -> dict:
    """job has exactly one W&B run: its id saved in wandb_id.txt, the resolved config, only its own rows."""
    runs = wandb_runs(job)
    assert len(runs) == 1, f"{job}: {len(runs)} W&B runs"
    r = runs[0]
    assert r["id"] == (job / WANDB_ID).read_text().strip()
    assert r["config"]["seed"] == seed and r["config"]["algo"]["name"] == "dvpo"
    assert r["config"]["rollout"]["minibatch_size"] == 2  # debug=smoke's, resolved
    assert Path(r["config"]["paths"]["output_dir"]).resolve() == job.resolve()  # ${hydra:runtime.output_dir}
    assert "hydra" not in r["config"]
    logged = {int(h["trainer/global_step"]): h["val/acc"] for h in r["history"] if "val/acc" in h}
    assert logged == val_acc_rows(job)  # this job's evaluations, and none of another job's
    summary = json.loads((job / "summary.json").read_text())
    assert r["summary"]["final/val_acc"] == pytest.approx(summary["final/val_acc"])
    assert r["exit_code"] == 0
    return r


def test_multirun_gives_each_job_its_own_wandb_run(tmp_path, offline, cache_dir):
    """`-m debug=smoke logger=wandb seed=1,2` on Hydra's basic launcher: both jobs in one process."""
    res = run_cli(["debug=smoke", *ONE_STEP, "logger=wandb", "seed=1,2", "-m"], tmp_path, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = job_dirs(tmp_path / "smoke")
    assert sorted(jobs) == ["logger=wandb seed=1", "logger=wandb seed=2"]
    assert [len(wandb_runs(jobs[k])) for k in sorted(jobs)] == [1, 1]  # was [1, 0]: job 2 logged into job 1's
    ids = [check_own_wandb_run(jobs[f"logger=wandb seed={s}"], s)["id"] for s in (1, 2)]
    assert ids[0] != ids[1]


def test_joblib_multirun_every_logger_kind(tmp_path, offline, cache_dir):
    """The studies' joblib launcher (one process at n_jobs=1, as a reused worker): `many` and `wandb` each get
    their own run, `none` none; csv/metrics.csv in every job folder."""
    res = run_cli(
        [
            "debug=smoke",
            *ONE_STEP,
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=1",
            "seed=3",
            "logger=many,none,wandb",
            "-m",
        ],
        tmp_path,
        cache_dir,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = job_dirs(tmp_path / "smoke")
    assert sorted(jobs) == ["logger=many seed=3", "logger=none seed=3", "logger=wandb seed=3"]
    for job in jobs.values():
        assert val_acc_rows(job), f"no evaluation rows in {job / 'csv' / 'metrics.csv'}"
    assert not (jobs["logger=none seed=3"] / "wandb").exists()
    ids = {check_own_wandb_run(jobs[f"logger={k} seed=3"], 3)["id"] for k in ("many", "wandb")}
    assert len(ids) == 2


def test_wandb_alone_still_writes_csv_and_logs_the_config(smoke_cfg, offline):
    cfg = smoke_cfg("logger=wandb", *ONE_STEP, "seed=5")
    assert run_job(cfg) == pytest.approx(
        json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())["final/val_acc"]
    )
    assert wandb.run is None  # finished with the job
    check_own_wandb_run(Path(cfg.paths.output_dir), seed=5)


@pytest.mark.parametrize("how", ["ckpt_path=last", "resume=true"])
def test_resume_continues_the_same_wandb_run(smoke_cfg, offline, how):
    """`ckpt_path=last` in the same folder, or a sweep's rerun (`resume=true`) of a job killed after its last
    checkpoint: the W&B run id stays, so `wandb sync` extends one run."""
    args = ["logger=wandb", "total_steps=2", "eval_every=2", "ckpt_every=1"]
    first = smoke_cfg(*args, *(["resume=true"] if how == "resume=true" else []), name="job")
    out = Path(first.paths.output_dir)
    run_job(first)
    (out / "summary.json").unlink()  # as if killed after its last checkpoint
    run_job(smoke_cfg(*args, how, name="job"))
    runs = wandb_runs(out)
    assert len(runs) == 2 and runs[0]["id"] == runs[1]["id"] == (out / WANDB_ID).read_text().strip()
    assert all(r["exit_code"] == 0 for r in runs)
    fresh = smoke_cfg(*args, name="other")  # a new run of the same config elsewhere: a new W&B run
    run_job(fresh)
    assert wandb_runs(Path(fresh.paths.output_dir))[0]["id"] != runs[0]["id"]


def test_failed_and_interrupted_jobs_finish_their_wandb_run(smoke_cfg, offline, monkeypatch, tmp_path):
    """Jobs of one process that fail (multirun: recorded, NaN; single run: raised), are interrupted, or succeed:
    each W&B run is finished with its exit code and the next job starts its own."""
    import dvpo_lab.run as run_mod

    def job(cfg, exc):  # run() as far as the loggers: build them, log a row, then fail or return
        for lg in build_loggers(cfg, Path(cfg.paths.output_dir)):
            lg.log_metrics({"x": float(cfg.seed)}, step=0)
        if exc is not None:
            raise exc
        return 0.5

    cases = [
        (1, "multirun", RuntimeError("boom")),
        (2, "run", RuntimeError("boom")),
        (3, "run", KeyboardInterrupt()),
        (4, "multirun", None),
    ]
    for seed, mode, exc in cases:
        cfg = smoke_cfg("logger=many", f"seed={seed}", name=f"s{seed}")
        with read_write(cfg.hydra):
            cfg.hydra.mode = "MULTIRUN" if mode == "multirun" else "RUN"
        HydraConfig().set_config(cfg)
        monkeypatch.setattr(run_mod, "run", lambda c, exc=exc: job(c, exc))
        if mode == "multirun" and exc is not None:
            assert math.isnan(run_job(cfg))
        elif exc is not None:
            with pytest.raises(type(exc)):
                run_job(cfg)
        else:
            assert run_job(cfg) == 0.5
        assert wandb.run is None
    ids = set()
    for seed, _, exc in cases:
        out = tmp_path / f"s{seed}"
        (r,) = wandb_runs(out)
        assert r["exit_code"] == (0 if exc is None else 1)
        assert [h["x"] for h in r["history"]] == [seed]  # its own row only
        assert (out / "csv" / "metrics.csv").exists()
        ids.add(r["id"])
    assert len(ids) == len(cases)


def test_hyperparameters_resolve_everything_but_hydra(smoke_cfg):
    cfg = smoke_cfg("algo=grpo", "seed=7")
    h = hyperparameters(cfg)
    assert "hydra" not in h and h["seed"] == 7 and h["algo"]["name"] == "grpo"
    assert h["tags"][:1] == ["grpo"] and h["paths"]["output_dir"] == cfg.paths.output_dir
    assert "${" not in json.dumps(h)  # nothing left unresolved


def test_every_logger_kind_writes_the_csv(smoke_cfg, offline):
    for kind in ("none", "csv", "wandb", "many"):
        cfg = smoke_cfg(f"logger={kind}", name=kind)
        out = Path(cfg.paths.output_dir)
        loggers = build_loggers(cfg, out)
        csvs = [lg for lg in loggers if type(lg).__name__ == "CSVLogger"]
        assert len(csvs) == 1 and Path(csvs[0].log_dir).resolve() == (out / "csv").resolve(), kind
        assert any(type(lg).__name__ == "WandbLogger" for lg in loggers) == (kind in ("wandb", "many"))
        wandb.finish()
