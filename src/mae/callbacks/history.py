"""Per-epoch numbers kept in the run's ``results.json`` as well as in the loggers, so that a run without labels
(no kNN) still shows in one file whether it learns."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from mae.runs.run_directory import merge_json, read_json_object


class ValidationLossHistory(L.Callback):
    """After every epoch that validated, append ``{"epoch", "val_loss"}`` to ``val_loss_per_epoch`` in
    ``<default_root_dir>/<results_file>`` (global rank 0). Pre-training's validation loss is the reconstruction
    loss on held-out images with masks that are the same every epoch, so the entries compare across epochs."""

    def __init__(self, results_file: str = "results.json", metric: str = "val/loss") -> None:
        self.results_file, self.metric = results_file, metric

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if value is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        path = Path(trainer.default_root_dir) / self.results_file
        history = [
            entry
            for entry in read_json_object(path).get("val_loss_per_epoch", [])
            if entry.get("epoch") != trainer.current_epoch
        ]
        history.append({"epoch": trainer.current_epoch, "val_loss": round(float(value), 6)})
        merge_json(path, {"val_loss_per_epoch": history})
