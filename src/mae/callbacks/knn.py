"""kNN accuracy of the encoder being pre-trained, against the same architecture at random initialisation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from torch import nn

from mae.callbacks.reconstruction import check_every_n_epochs, epoch_is_due
from mae.evaluation.knn import check_pool, knn_top1, random_init_copy
from mae.evaluation.pixels import pixel_knn_top1
from mae.evaluation.sharded import sharded_features
from mae.runs.run_directory import merge_json
from mae.runs.torch_state import model_device_and_dtype, preserved_rng

log = logging.getLogger(__name__)


class KNNEvaluationCallback(L.Callback):
    """Weighted kNN top-1 accuracy of the encoder's features (see :mod:`mae.evaluation.knn`).

    At the end of training (features computed by all processes together, the vote run once on all of them, see
    :meth:`score`): the trained encoder's accuracy and, with
    ``compare_random_init``, that of a randomly initialised copy (the baseline that shows what pre-training
    added) and, with ``compare_pixels``, the raw pixels themselves under the same protocol (same bank, same
    queries, ``k`` and temperature; raw and per-pixel standardised, the better of the two being the baseline).
    All are printed, sent to every logger, and merged into ``<default_root_dir>/<results_file>`` under
    ``knn_top1_pretrained``, ``knn_top1_random_init``, ``knn_top1_pixels`` (with ``knn_top1_pixels_raw`` and
    ``knn_top1_pixels_standardized``), ``knn_k``, ``knn_temperature``, ``knn_pool``, ``knn_bank_size``,
    ``knn_num_queries`` and ``epochs_trained``.
    Every ``every_n_epochs`` epochs the trained encoder alone is scored and logged as ``knn/top1``.

    The images come from ``data`` when given (``knn_data=<group>``: a labelled set for a run whose training data
    has none), else from the trainer's datamodule; either must provide ``num_classes`` and ``knn_dataloaders() ->
    (train, val)``, and for the pixel baseline its normalisation ``mean`` and ``std``. Training data without
    labels and no ``data``: the evaluation is skipped, with one logged line and ``knn_skipped`` (the reason) in
    the results file.

    Args:
        every_n_epochs: interval of the per-epoch scores; ``None`` for the end of training only.
        k: neighbours per query.
        temperature: vote temperature.
        pool: ``"cls"`` or ``"mean"`` feature pooling.
        compare_random_init: also score the random-initialisation baseline at the end.
        compare_pixels: also score the raw-pixel baseline at the end.
        seed: seed of the baseline's initialisation (the training random stream is not touched).
        results_file: JSON file, relative to the run directory, that receives the final scores.
        data: a labelled data module to evaluate on instead of the trainer's (None: the trainer's).
    """

    def __init__(
        self,
        every_n_epochs: int | None = None,
        k: int = 20,
        temperature: float = 0.07,
        pool: str = "cls",
        compare_random_init: bool = True,
        compare_pixels: bool = True,
        seed: int = 0,
        results_file: str = "results.json",
        data: L.LightningDataModule | None = None,
    ) -> None:
        if k < 1:
            raise ValueError(f"k={k} must be at least 1")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be positive")
        self.every_n_epochs = check_every_n_epochs(every_n_epochs)
        self.k = k
        self.temperature = temperature
        self.pool = check_pool(pool)
        self.compare_random_init = compare_random_init
        self.compare_pixels = compare_pixels
        self.seed = seed
        self.results_file = results_file
        if data is not None and not getattr(data, "has_labels", True):
            raise ValueError(
                f"knn_data ({type(data).__name__}) has no labels for a kNN evaluation; choose a "
                "labelled data group, e.g. knn_data=fashion_mnist or knn_data=image_folder "
                "knn_data.root=<folder with one sub-folder per class>"
            )
        self.data = data
        self.skipped: str | None = None
        self.last_results: dict[str, Any] = {}

    def datamodule(self, trainer: L.Trainer):
        """Where the kNN bank and queries come from."""
        return self.data if self.data is not None else trainer.datamodule

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.data is None and not getattr(trainer.datamodule, "has_labels", True):
            self.skipped = (
                f"the training data ({type(trainer.datamodule).__name__}) has no labels and knn_data is "
                "not set; set knn_data=<a labelled data group> for kNN top-1"
            )
            log.info("kNN evaluation skipped: %s", self.skipped)

    def score(self, trainer: L.Trainer, model: nn.Module) -> float | None:
        """kNN top-1 of ``model`` on the datamodule's kNN loaders, without touching the global random state.

        Every process calls it: each encodes its share of the bank and the queries, the features are gathered in
        dataset order (:mod:`mae.evaluation.sharded`), and global rank 0 runs the vote a single process would run
        and returns its score; the other processes return None."""
        datamodule = self.datamodule(trainer)
        with preserved_rng(model_device_and_dtype(model)[0]):
            train_loader, val_loader = datamodule.knn_dataloaders()
            bank, bank_labels = sharded_features(trainer, model, train_loader, self.pool)
            queries, query_labels = sharded_features(trainer, model, val_loader, self.pool)
        if not trainer.is_global_zero:
            return None
        return knn_top1(
            bank, bank_labels, queries, query_labels, datamodule.num_classes, k=self.k, temperature=self.temperature
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.skipped or not epoch_is_due(self.every_n_epochs, trainer.current_epoch):
            return
        top1 = self.score(trainer, pl_module.model)
        if top1 is not None:
            self.last_results = {"knn/top1": top1, "epoch": trainer.current_epoch}
            log_to_all(trainer, {"knn/top1": top1})

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.skipped:
            if trainer.is_global_zero:
                merge_json(
                    Path(trainer.default_root_dir) / self.results_file,
                    {"knn_top1_pretrained": None, "knn_skipped": self.skipped},
                )
            return
        model = pl_module.model
        results: dict[str, Any] = {"knn_top1_pretrained": self.score(trainer, model)}
        if self.compare_random_init:
            results["knn_top1_random_init"] = self.score(trainer, random_init_copy(model, self.seed))
        if not trainer.is_global_zero:
            return
        if self.compare_pixels:
            results.update(self.pixel_scores(trainer))
        train_loader, val_loader = self.datamodule(trainer).knn_dataloaders()
        results.update(
            knn_data=type(self.datamodule(trainer)).__name__,
            knn_k=self.k,
            knn_temperature=self.temperature,
            knn_pool=self.pool,
            knn_bank_size=len(train_loader.dataset),
            knn_num_queries=len(val_loader.dataset),
            epochs_trained=trainer.current_epoch,
        )
        print(self.summary(results), flush=True)
        log_to_all(
            trainer,
            {
                f"knn/top1_{name}": results[f"knn_top1_{name}"]
                for name in ("pretrained", "random_init", "pixels")
                if f"knn_top1_{name}" in results
            },
        )
        merge_json(Path(trainer.default_root_dir) / self.results_file, results)
        self.last_results = results

    def pixel_scores(self, trainer: L.Trainer) -> dict[str, float]:
        """``knn_top1_pixels_raw``, ``knn_top1_pixels_standardized`` and their maximum ``knn_top1_pixels``."""
        datamodule = self.datamodule(trainer)
        with preserved_rng():
            train_loader, val_loader = datamodule.knn_dataloaders()
            scores = pixel_knn_top1(
                train_loader,
                val_loader,
                datamodule.num_classes,
                datamodule.mean,
                datamodule.std,
                k=self.k,
                temperature=self.temperature,
            )
        return {
            "knn_top1_pixels": max(scores.values()),
            **{f"knn_top1_pixels_{name}": value for name, value in scores.items()},
        }

    def summary(self, results: dict[str, Any]) -> str:
        """One line, e.g. ``kNN top-1 (k=20, cls features): pretrained 81.23% | random init 62.10% | raw pixels
        82.50% (raw 79.90%, standardized 82.50%)``."""
        line = f"kNN top-1 (k={self.k}, {self.pool} features): pretrained {results['knn_top1_pretrained']:.2%}"
        if "knn_top1_random_init" in results:
            line += f" | random init {results['knn_top1_random_init']:.2%}"
        if "knn_top1_pixels" in results:
            line += (
                f" | raw pixels {results['knn_top1_pixels']:.2%} (raw {results['knn_top1_pixels_raw']:.2%}, "
                f"standardized {results['knn_top1_pixels_standardized']:.2%})"
            )
        return line


def log_to_all(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    """Send ``metrics`` to every logger at the current optimiser step.

    Loggers are called directly rather than through ``LightningModule.log``: that is not allowed in
    ``on_train_end``, and in DDP it would wait on ranks that skip the evaluation.
    """
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
