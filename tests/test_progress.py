"""Progress on the newcomer's screen: a run piped to a file logs the warm-start and RL progress from the start; on a
terminal the warm-start bar counts SFT steps (not Lightning's "Epoch 0/-2")."""

from __future__ import annotations

import io
import logging
import re
import time
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from dvpo_lab import callbacks as cb
from dvpo_lab.config import ConfigError
from tests.conftest import compose_cfg, run_cli

STAMP = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]\[dvpo_lab\.callbacks\]\[INFO\] - "


def test_piped_run_logs_warm_start_and_rl_progress(tmp_path):
    """`python -m dvpo_lab` with stdout piped (not a terminal), cache under tmp_path so the warm-start trains:
    timestamped lines for every warm-start step and accuracy check and for every RL step (every_s=0)."""
    proc = run_cli(
        ["debug=smoke", "logger=csv", "sft.max_steps=6", "sft.eval_every=3", "callbacks.progress_bar.every_s=0"],
        tmp_path,
        cache_dir=tmp_path / "cache",
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Epoch" not in out and "it/s" not in out, out  # no tqdm bar in a file
    lines = out.splitlines()

    def index(pattern: str) -> int:
        hits = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert hits, f"no line matches {pattern!r}:\n{out[-4000:]}"
        return hits[0]

    start = index(STAMP + r"warm-start: step 0/6, an accuracy check every 3 steps")
    steps = [index(STAMP + rf"warm-start step {k}/6 \| sft/loss \d+\.\d{{4}} \| sft/acc ") for k in range(1, 7)]
    assert start < steps[0] and steps == sorted(steps)
    for k in (3, 6):  # accuracy checks: the accuracy measured at that step, with elapsed time and s/step
        assert re.search(r"sft/acc \d\.\d{3} \| \d+ s elapsed, \d+\.\d\d s/step$", lines[steps[k - 1]]), lines[
            steps[k - 1]
        ]
    assert "sft/acc -" in lines[steps[0]]  # step 1: not checked yet
    assert re.search(r"sft/acc \d\.\d{3} \(step 3\)", lines[steps[3]])  # step 4: the last check, with its step

    initial = index(STAMP + r"RL step 0/3 \| val/acc \d\.\d{4} \| evaluated in")
    rl = [
        index(STAMP + rf"RL step {k}/3 \| reward \d\.\d{{4}} \| reward_clean \d\.\d{{4}} \| .*s/step \| ETA ")
        for k in (1, 2, 3)
    ]
    assert steps[-1] < initial < rl[0] and rl == sorted(rl)
    assert "val/acc" not in lines[rl[0]] and re.search(r"val/acc \d\.\d{4}", lines[rl[2]])  # evaluated at step 3


def test_log_lines_throttled_by_wall_time(monkeypatch, caplog):
    """Between accuracy checks a warm-start line comes once every_s seconds have passed; the first step, each
    check and the last step always log. The RL loop: first, evaluated, last step, or after every_s seconds."""
    clock = [0.0]
    monkeypatch.setattr(cb.time, "monotonic", lambda: clock[0])
    caplog.set_level(logging.INFO, logger="dvpo_lab.callbacks")
    sft = cb.SFTProgressLog(every_s=30, check_every=10)
    module = SimpleNamespace(curve=[])
    trainer = SimpleNamespace(global_step=0, max_steps=40, should_stop=False, progress_bar_metrics={"sft/loss": 1.5})
    sft.on_train_start(trainer, module)
    logged = []
    for step in range(1, 41):
        clock[0] = 4.0 * step  # 4 s per step
        trainer.global_step = step
        if step % 10 == 0:
            module.curve.append((step, step / 100))
        n = len(caplog.records)
        sft.on_train_batch_end(trainer, module)
        if len(caplog.records) > n:
            logged.append(step)
    # 1: first (4 s); 9: 32 s after it; 10, 20, 30, 40: checks; 18: 32 s after step 10's line; 28, 38 likewise
    assert logged == [1, 9, 10, 18, 20, 28, 30, 38, 40]

    caplog.clear()
    rl = cb.RLProgressLog(every_s=30)
    trainer = SimpleNamespace(
        current_epoch=0,
        max_epochs=10,
        check_val_every_n_epoch=5,
        loggers=[],
        sanity_checking=False,
        state=SimpleNamespace(fn="fit"),
        progress_bar_metrics={"reward": 0.25, "reward_clean": 0.5},
    )
    clock[0] = 0.0
    rl.on_train_start(trainer, None)
    logged = []
    for step in range(1, 11):
        clock[0] = 7.0 * step
        trainer.current_epoch = step - 1
        if step % 5 == 0:
            trainer.progress_bar_metrics["val/acc"] = step / 10
            rl.on_validation_end(trainer, None)
        n = len(caplog.records)
        rl.on_train_epoch_end(trainer, None)
        if len(caplog.records) > n:
            logged.append(step)
            assert "reward 0.2500 | reward_clean 0.5000" in caplog.records[-1].getMessage()
            assert ("val/acc" in caplog.records[-1].getMessage()) == (step % 5 == 0)
    assert logged == [1, 5, 10]  # 7 s/step: 30 s never pass between those
    assert (
        "RL step 1/10 | reward 0.2500 | reward_clean 0.5000 | 7.00 s/step | ETA 1 min 03 s"
        in caplog.records[1].getMessage()
    )


def test_heartbeat_during_a_long_step(caplog):
    """A step longer than the line interval (a loaded machine, a large model) still shows progress: an 'in
    progress' line once nothing was logged for 1.5 x every_s; none after teardown."""
    caplog.set_level(logging.INFO, logger="dvpo_lab.callbacks")
    rl = cb.RLProgressLog(every_s=0.2)  # heartbeat after 0.3 s of silence
    trainer = SimpleNamespace(current_epoch=6, max_epochs=200, is_global_zero=True)
    rl.setup(trainer, None, "fit")
    rl.on_train_epoch_start(trainer, None)
    time.sleep(1.0)  # "RL step 7" takes 1 s
    rl.teardown(trainer, None, "fit")
    beats = [r.getMessage() for r in caplog.records if "in progress" in r.getMessage()]
    assert 2 <= len(beats) <= 4, beats
    assert re.fullmatch(r"RL step 7/200: in progress, \d s in", beats[0]), beats
    n = len(caplog.records)
    time.sleep(0.5)
    assert len(caplog.records) == n  # the thread stopped


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.w(batch).pow(2).mean()
        self.log("sft/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("n_batches", [3, 8])  # the loader shorter or longer than max_steps
def test_warm_start_bar_counts_sft_steps(n_batches, capsys):
    """Lightning's default bar reads 'Epoch 0/-2' under max_steps; the warm-start bar is 'warm-start n/max_steps'."""
    bar = cb.SFTProgressBar()
    trainer = L.Trainer(
        max_steps=5,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[bar],
    )
    trainer.fit(_Tiny(), DataLoader(torch.randn(n_batches, 2), batch_size=1))
    assert bar.train_progress_bar.total == 5
    assert bar.train_progress_bar.desc.startswith("warm-start")
    out = capsys.readouterr()
    assert "Epoch" not in out.out + out.err
    assert "5/5" in out.out and "sft/loss=" in out.out


def test_progress_mode(monkeypatch):
    """auto follows the terminal; DVPO_LAB_PROGRESS overrides the config; bad values name their key."""

    class Stream(io.StringIO):
        def __init__(self, tty):
            super().__init__()
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.delenv(cb.PROGRESS_ENV, raising=False)
    assert cb.resolve_mode("auto", Stream(True)) == "bar"
    assert cb.resolve_mode("auto", Stream(False)) == "log"
    assert cb.resolve_mode("log", Stream(True)) == "log"
    assert isinstance(cb.rl_progress("bar"), cb.RLProgressBar)
    assert cb.rl_progress("log").is_enabled and cb.rl_progress("off").is_disabled
    with pytest.raises(ConfigError, match=r"^callbacks\.progress_bar\.mode='fancy': expected auto \| bar"):
        cb.resolve_mode("fancy")
    with pytest.raises(ConfigError, match=r"^callbacks\.progress_bar\.every_s=-1"):
        cb.rl_progress("log", every_s=-1)
    monkeypatch.setenv(cb.PROGRESS_ENV, "bar")
    assert cb.resolve_mode("log", Stream(False)) == "bar"
    monkeypatch.setenv(cb.PROGRESS_ENV, "loud")
    with pytest.raises(ConfigError, match=r"^DVPO_LAB_PROGRESS='loud'"):
        cb.resolve_mode("auto")


def test_warm_start_follows_the_config(tmp_path, monkeypatch):
    """The warm-start reads the RL loop's `callbacks.progress_bar` settings (defaults where callbacks=none)."""
    monkeypatch.delenv(cb.PROGRESS_ENV, raising=False)
    cfg = compose_cfg(
        ["debug=smoke", "callbacks.progress_bar.mode=log", "callbacks.progress_bar.every_s=5"], tmp_path / "run"
    )
    made = cb.sft_progress(cfg)
    assert isinstance(made, cb.SFTProgressLog) and made.every_s == 5 and made.check_every == 2
    cfg = compose_cfg(["debug=smoke", "callbacks=none"], tmp_path / "run2")
    assert cb.progress_settings(cfg)[1] == cb.EVERY_S
    monkeypatch.setenv(cb.PROGRESS_ENV, "off")
    assert cb.sft_progress(cfg).is_disabled
