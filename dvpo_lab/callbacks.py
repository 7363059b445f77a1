"""Progress for the warm-start (SFT steps) and the RL loop (RL steps): a bar on a terminal, log lines elsewhere.

One setting drives both, `callbacks.progress_bar.mode` (conf/callbacks/default.yaml); the environment variable
`DVPO_LAB_PROGRESS`, when set, overrides it:

- `auto` (default): a tqdm bar when stdout (where Lightning draws it) is a terminal, log lines otherwise
  (`make run > file`, `| tee`, CI, SLURM), so a run piped to a file shows progress from the start;
- `bar`, `log`, `off`: that display whatever stdout is.

Log lines go to Python logging (logger `dvpo_lab.callbacks`), which Hydra prints with a timestamp and copies to
the run folder's `.log`. The warm-start logs its first step, every accuracy check, its last step, and otherwise
a line once `every_s` seconds of wall time have passed since the last one; the RL loop logs its first step,
every evaluated step, its last step, and likewise a line once `every_s` seconds have passed (`every_s=0`: a line
every step). Those lines come at step ends; when a step runs long (a loaded machine, a large model), a heartbeat
line ('RL step 7/200: in progress, 47 s in') comes once nothing was logged for 1.5 x every_s.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import TextIO

from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

from dvpo_lab.config import ConfigError

log = logging.getLogger(__name__)
PROGRESS_MODES = ("auto", "bar", "log", "off")
PROGRESS_ENV = "DVPO_LAB_PROGRESS"
EVERY_S = 30.0  # default seconds of wall time between log lines: progress at least about twice a minute


def resolve_mode(mode: str = "auto", stream: TextIO | None = None) -> str:
    """The display to use: 'bar', 'log' or 'off'. `DVPO_LAB_PROGRESS` overrides `mode`; 'auto' is 'bar' when
    `stream` (default: sys.stdout) is a terminal, else 'log'. Raises ConfigError for a value not in
    PROGRESS_MODES, naming the key it came from."""
    key = "callbacks.progress_bar.mode"
    if os.environ.get(PROGRESS_ENV):
        mode, key = os.environ[PROGRESS_ENV], PROGRESS_ENV
    if mode not in PROGRESS_MODES:
        raise ConfigError(f"{key}={mode!r}: expected {' | '.join(PROGRESS_MODES)}")
    if mode != "auto":
        return mode
    stream = sys.stdout if stream is None else stream
    try:
        return "bar" if stream.isatty() else "log"
    except (AttributeError, ValueError):  # replaced or closed stream
        return "log"


def check_every_s(every_s: float) -> float:
    """`every_s` as a float; raises ConfigError if it is negative or not a number."""
    try:
        value = float(every_s)
    except (TypeError, ValueError):
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"callbacks.progress_bar.every_s={every_s!r}: expected seconds >= 0 (0 = a line per step)")
    return value


def progress_settings(cfg: DictConfig) -> tuple[str, float]:
    """(display, every_s) of a composed config, from `callbacks.progress_bar` (defaults 'auto' and EVERY_S where
    that node is absent, e.g. callbacks=none). Raises ConfigError on a bad value: call it at start to fail early."""
    node = OmegaConf.select(cfg, "callbacks.progress_bar", default=None) or {}
    return resolve_mode(node.get("mode", "auto")), check_every_s(node.get("every_s", EVERY_S))


def format_seconds(s: float) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min'."""
    s = max(0, round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def format_items(items: dict) -> str:
    """'reward 0.4375 | val/acc 0.5620': 4 decimals for values below 1000 (rewards, accuracies), else 4 digits."""

    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1000 else f"{v:.4g}"
        return str(v)

    return " | ".join(f"{k} {fmt(v)}" for k, v in items.items())


# ---------------------------------------------------------------------------------------------------- bars
class RLProgressBar(TQDMProgressBar):
    """One bar for the whole run (an RL step is a Lightning epoch), showing step, reward and val/acc."""

    @property
    def train_description(self) -> str:
        return "RL step"

    def on_train_epoch_start(self, trainer, *_) -> None:
        bar = self.train_progress_bar
        if bar.total != trainer.max_epochs:
            bar.reset(total=trainer.max_epochs)
            bar.set_description("RL step")
        bar.n = trainer.current_epoch
        bar.refresh()

    def on_train_batch_end(self, trainer, pl_module, *_) -> None:
        bar = self.train_progress_bar
        bar.n = trainer.current_epoch + 1
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def init_validation_tqdm(self):
        bar = super().init_validation_tqdm()
        bar.disable = True  # evaluation is a few greedy batches; its result shows on the main bar
        return bar


class SFTProgressBar(TQDMProgressBar):
    """The warm-start's bar: 'warm-start  n/max_steps' (Lightning's default reads 'Epoch 0/-2' under max_steps),
    with the step's sft/loss and the last held-out sft/acc."""

    @property
    def train_description(self) -> str:
        return "warm-start"

    def on_train_epoch_start(self, trainer, *_) -> None:
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)  # not the epoch's batches: the loader may be longer or shorter
        bar.n = trainer.global_step
        bar.set_description("warm-start")

    def on_train_batch_end(self, trainer, pl_module, *_) -> None:
        bar = self.train_progress_bar
        if not bar.disable:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


# ----------------------------------------------------------------------------------------------- log lines
class _LogLines(ProgressBar):
    """A progress 'bar' that writes log lines (taking the bar's place, so Lightning adds no tqdm bar).

    Step-end lines carry the metrics. A step can take longer than `every_s` (a loaded machine, a large model,
    a long evaluation), so a heartbeat thread also writes '<where>: in progress, N s in' once no line of any kind
    has come for 1.5 x every_s (45 s by default; with every_s=0, 1.5 x EVERY_S): progress shows at least that
    often whatever a step costs, and never replaces a step-end line when steps are short."""

    def __init__(self, every_s: float = EVERY_S, enabled: bool = True) -> None:
        super().__init__()
        self.every_s = check_every_s(every_s)
        self.heartbeat_s = 1.5 * (self.every_s or EVERY_S)
        self._enabled = enabled
        self._t_start = self._t_line = self._t_any = self._t_where = time.monotonic()
        self._where = ""  # what is running now, e.g. "RL step 7/200", for the heartbeat
        self._stop: threading.Event | None = None

    def __getstate__(self) -> dict:  # a callback may be pickled (checkpoints, spawn): not its thread
        return {**self.__dict__, "_stop": None}

    def working_on(self, where: str) -> None:
        self._where, self._t_where = where, time.monotonic()

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(min(1.0, self.heartbeat_s / 4)):
            now = time.monotonic()
            if self._enabled and self._where and now - self._t_any >= self.heartbeat_s:
                self._t_any = now
                log.info("%s: in progress, %s in", self._where, format_seconds(now - self._t_where))

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # disables the display on ranks other than 0
        if self._enabled and self._stop is None:
            self._stop = threading.Event()
            self._t_any = time.monotonic()
            threading.Thread(target=self._beat, args=(self._stop,), name="dvpo_lab-progress", daemon=True).start()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        self._where = ""

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "")

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def due(self, now: float) -> bool:
        """True once `every_s` seconds have passed since the last line."""
        return now - self._t_line >= self.every_s

    def emit(self, msg: str, *args) -> None:
        self._t_line = self._t_any = time.monotonic()
        if self._enabled:
            log.info(msg, *args)


class SFTProgressLog(_LogLines):
    """Warm-start log lines: step/max_steps, sft/loss, the last sft/acc and its step, elapsed s and s/step.

    Reads `sft/loss` from the progress-bar metrics and the accuracy checks from `pl_module.curve`
    ([(step, acc)], SFTModule's record), so an accuracy check is logged at the step it happened."""

    def __init__(self, every_s: float = EVERY_S, enabled: bool = True, check_every: int | None = None) -> None:
        super().__init__(every_s, enabled)
        self.check_every = check_every
        self._n_checks = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._t_start = self._t_line = time.monotonic()
        self._n_checks = len(getattr(pl_module, "curve", []))
        checks = f"an accuracy check every {self.check_every} steps, " if self.check_every else ""
        self.emit(
            "warm-start: step 0/%d, %sa line about every %s", trainer.max_steps, checks, format_seconds(self.every_s)
        )

    def on_train_batch_start(self, trainer, *_) -> None:
        self.working_on(f"warm-start step {trainer.global_step + 1}/{trainer.max_steps}")

    def on_train_batch_end(self, trainer, pl_module, *_) -> None:
        now, step = time.monotonic(), trainer.global_step
        curve = getattr(pl_module, "curve", [])
        checked = len(curve) > self._n_checks
        self._n_checks = len(curve)
        if not (checked or step == 1 or step >= trainer.max_steps or trainer.should_stop or self.due(now)):
            return
        loss = trainer.progress_bar_metrics.get("sft/loss", float("nan"))
        acc = "sft/acc -"  # not checked yet
        if curve:
            acc = f"sft/acc {curve[-1][1]:.3f}" + ("" if checked else f" (step {curve[-1][0]})")
        elapsed = now - self._t_start
        self.emit(
            "warm-start step %d/%d | sft/loss %.4f | %s | %s elapsed, %.2f s/step",
            step,
            trainer.max_steps,
            loss,
            acc,
            format_seconds(elapsed),
            elapsed / max(step, 1),
        )


class RLProgressLog(_LogLines):
    """RL log lines: step/total, the progress-bar metrics (reward, reward_clean, ...), val/acc when evaluated at
    that step, s/step and ETA; also one line before and one after an evaluation outside training (step 0)."""

    def __init__(self, every_s: float = EVERY_S, enabled: bool = True) -> None:
        super().__init__(every_s, enabled)
        self._val: dict = {}
        self._t_val = self._t_fit = time.monotonic()
        self._step0 = 0

    def on_validation_start(self, trainer, pl_module) -> None:
        self._t_val = time.monotonic()
        if trainer.state.fn == "validate":
            self.working_on(f"RL step {trainer.current_epoch}/{trainer.max_epochs}: evaluating val/acc")
        if trainer.state.fn == "validate" and not trainer.sanity_checking:
            n = sum(trainer.num_val_batches)
            self.emit(
                "RL step %d/%d: evaluating val/acc (%d batch%s of greedy decoding)",
                trainer.current_epoch,
                trainer.max_epochs,
                n,
                "" if n == 1 else "es",
            )

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        val = {k: v for k, v in trainer.progress_bar_metrics.items() if k.startswith("val/")}
        if trainer.state.fn == "fit":
            self._val = val  # shown on this RL step's line
            return
        self.emit(
            "RL step %d/%d | %s | evaluated in %s",
            trainer.current_epoch,
            trainer.max_epochs,
            format_items(val) or "val/acc -",
            format_seconds(time.monotonic() - self._t_val),
        )

    def on_train_start(self, trainer, pl_module) -> None:
        self._t_fit = self._t_line = time.monotonic()
        self._step0 = trainer.current_epoch  # > 0 when resumed
        self._val = {}
        self.emit(
            "RL: steps %d-%d of %d, val/acc every %s steps, a line about every %s",
            self._step0 + 1,
            trainer.max_epochs,
            trainer.max_epochs,
            trainer.check_val_every_n_epoch,
            format_seconds(self.every_s),
        )

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.working_on(f"RL step {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # after this step's evaluation (Lightning validates before on_train_epoch_end), so val/acc is current
        now, step, total = time.monotonic(), trainer.current_epoch + 1, trainer.max_epochs
        val, self._val = self._val, {}
        if not (val or step == self._step0 + 1 or step >= total or self.due(now)):
            return
        items = {
            k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num" and not k.startswith("val/")
        }
        per_step = (now - self._t_fit) / max(step - self._step0, 1)
        self.emit(
            "RL step %d/%d | %s | %.2f s/step | ETA %s",
            step,
            total,
            format_items({**items, **val}),
            per_step,
            format_seconds(per_step * (total - step)),
        )


# ------------------------------------------------------------------------------------------------ factories
def rl_progress(mode: str = "auto", every_s: float = EVERY_S) -> ProgressBar:
    """The RL loop's progress callback (conf/callbacks/default.yaml `progress_bar`): RLProgressBar on a
    terminal, RLProgressLog otherwise (see the module docstring); 'off' gives a silent one, which still takes
    the bar's place so Lightning adds none."""
    shown = resolve_mode(mode)
    if shown == "bar":
        return RLProgressBar()
    return RLProgressLog(every_s, enabled=shown == "log")


def sft_progress(cfg: DictConfig) -> ProgressBar:
    """The warm-start's progress callback, from the same `callbacks.progress_bar` settings as the RL loop's."""
    shown, every_s = progress_settings(cfg)
    if shown == "bar":
        return SFTProgressBar()
    return SFTProgressLog(every_s, enabled=shown == "log", check_every=cfg.sft.eval_every)
