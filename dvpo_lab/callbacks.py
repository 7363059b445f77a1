"""Callbacks: a progress bar over RL steps."""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar


class RLProgressBar(TQDMProgressBar):
    """One bar for the whole run (an RL step is a Lightning epoch), showing step, reward and val/acc."""

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
