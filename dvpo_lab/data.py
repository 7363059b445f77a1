"""Lightning data plumbing. One training "batch" is one RL step: the module draws that step's prompts
from the task by (seed, step, rank), so data order needs no state beyond the step counter. Validation
batches are index ranges into the task's clean test problems (DistributedSampler splits them by rank)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader


class RLDataModule(L.LightningDataModule):
    def __init__(self, num_eval: int, eval_batch_size: int) -> None:
        super().__init__()
        self.num_eval, self.eval_batch_size = num_eval, eval_batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.zeros(1), batch_size=1)  # one RL step per Lightning epoch

    def val_dataloader(self) -> DataLoader:
        return DataLoader(torch.arange(self.num_eval), batch_size=self.eval_batch_size)
