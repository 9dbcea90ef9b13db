"""A test callback that records, in each process of a distributed run, the sample seeds of every training batch
(one seed per sample and epoch, so they name the samples the process saw) and the weights it ends with."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import lightning as L
import torch


class RankRecorder(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.seeds: dict[int, list[int]] = defaultdict(list)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.seeds[trainer.current_epoch] += batch[2].tolist()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "seeds": dict(self.seeds),
                "state": pl_module.model.state_dict(),
                "world_size": trainer.world_size,
                "environment": type(getattr(trainer.strategy, "cluster_environment", None)).__name__,
            },
            self.out_dir / f"rank{trainer.global_rank}.pt",
        )
