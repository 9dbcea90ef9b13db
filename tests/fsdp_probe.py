"""A test callback that records, in each process of a distributed run, how the model's parameters are held while
it trains (whether each is a DTensor, sharded by FSDP2, and the shapes of its local shard and of the full tensor),
and the random-initialisation baseline that the kNN evaluation builds from the trained model."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from mae.evaluation import random_init_model


class ShardRecorder(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if trainer.global_step != 1:
            return
        # After the first optimiser step: the parameters the optimiser updates, as the module holds them then.
        params = {}
        for name, param in pl_module.model.named_parameters():
            local = param.to_local() if isinstance(param, DTensor) else param
            params[name] = {
                "dtensor": isinstance(param, DTensor),
                "local_shape": list(local.shape),
                "full_shape": list(param.shape),
            }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"params": params, "world_size": trainer.world_size, "strategy": type(trainer.strategy).__name__},
            self.out_dir / f"rank{trainer.global_rank}.pt",
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        baseline = random_init_model(pl_module.model, seed=0)  # every process: a sharded model is gathered
        torch.save(
            {"plain": all(type(p) is nn.Parameter for p in baseline.parameters()), "state": baseline.state_dict()},
            self.out_dir / f"baseline_rank{trainer.global_rank}.pt",
        )
