"""kNN accuracy of the encoder being pre-trained, against the same architecture at random initialisation."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch import nn

from mae.callbacks.reconstruction import check_every_n_epochs, epoch_is_due
from mae.evaluation.knn import check_pool, knn_top1, random_init_model
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
    queries, ``k`` and temperature; raw and per-pixel standardised, the one better on the validation split being
    the baseline).
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

    def score(self, trainer: L.Trainer, model: nn.Module, splits: Sequence[str] = ("val",)) -> dict[str, float] | None:
        """kNN top-1 of ``model`` with the training images as the bank and each of ``splits`` ("val", "test") as
        the queries, without touching the global random state.

        Every process calls it: each encodes its share of the bank and the queries, the features are gathered in
        dataset order (:mod:`mae.evaluation.sharded`), and global rank 0 runs the vote a single process would run
        and returns ``{split: top-1}``; the other processes return None."""
        datamodule = self.datamodule(trainer)
        with preserved_rng(model_device_and_dtype(model)[0]):
            bank_loader, _ = datamodule.knn_dataloaders()
            bank, bank_labels = sharded_features(trainer, model, bank_loader, self.pool)
            queries = {
                split: sharded_features(trainer, model, query_loader(datamodule, split), self.pool) for split in splits
            }
        if not trainer.is_global_zero:
            return None
        return {
            split: knn_top1(
                bank, bank_labels, *queries[split], datamodule.num_classes, k=self.k, temperature=self.temperature
            )
            for split in splits
        }

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.skipped or not epoch_is_due(self.every_n_epochs, trainer.current_epoch):
            return
        scores = self.score(trainer, pl_module.model)  # the validation split: curves are for choosing
        if scores is not None:
            self.last_results = {"knn/top1": scores["val"], "epoch": trainer.current_epoch}
            log_to_all(trainer, {"knn/top1": scores["val"]})

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.skipped:
            if trainer.is_global_zero:
                merge_json(
                    Path(trainer.default_root_dir) / self.results_file,
                    {"knn_top1_pretrained": None, "knn_skipped": self.skipped},
                )
            return
        model = pl_module.model
        # The test split once, here, at the end; the validation split beside it (val_*), what choices read.
        splits = final_splits(self.datamodule(trainer))
        scores = {"pretrained": self.score(trainer, model, splits)}
        if self.compare_random_init:
            scores["random_init"] = self.score(trainer, random_init_model(model, self.seed), splits)
        if not trainer.is_global_zero:
            return
        if self.compare_pixels:
            scores.update(self.pixel_scores(trainer, splits))
        results: dict[str, Any] = {}
        for name, by_split in scores.items():
            for split, top1 in by_split.items():  # type: ignore[union-attr]
                results[f"{'val_' if split == 'val' else ''}knn_top1_{name}"] = top1
        datamodule = self.datamodule(trainer)
        bank_loader, query_loader_ = datamodule.knn_dataloaders("test")
        results.update(
            knn_data=type(datamodule).__name__,
            knn_k=self.k,
            knn_temperature=self.temperature,
            knn_pool=self.pool,
            knn_bank_size=len(bank_loader.dataset),
            knn_num_queries=len(query_loader_.dataset),
            knn_validation=datamodule.validation_split() if "val" in splits else None,
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

    def pixel_scores(self, trainer: L.Trainer, splits: Sequence[str]) -> dict[str, dict[str, float]]:
        """``{"pixels_raw": {split: top-1}, "pixels_standardized": ..., "pixels": the better of the two}``, the
        better one chosen on the validation split when it is among ``splits`` (its test number is then that
        variant's, not the larger test number)."""
        datamodule = self.datamodule(trainer)
        found: dict[str, dict[str, float]] = {}
        with preserved_rng():
            for split in splits:
                bank_loader, queries = datamodule.knn_dataloaders(split)
                scores = pixel_knn_top1(
                    bank_loader,
                    queries,
                    datamodule.num_classes,
                    datamodule.mean,
                    datamodule.std,
                    k=self.k,
                    temperature=self.temperature,
                )
                for name, value in scores.items():
                    found.setdefault(f"pixels_{name}", {})[split] = value
        chooser = "val" if "val" in splits else splits[0]
        better = max(found, key=lambda variant: found[variant][chooser])
        return {"pixels": dict(found[better]), **found}

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


def query_loader(datamodule, split: str):
    """The kNN queries of ``split``."""
    return datamodule.knn_dataloaders(split)[1]


def final_splits(datamodule) -> tuple[str, ...]:
    """The splits of the final evaluation: test, and validation when it is a split of its own."""
    splits = getattr(datamodule, "splits", None)
    return ("test",) if splits is None or splits.val_is_test else ("val", "test")


def log_to_all(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    """Send ``metrics`` to every logger at the current optimiser step.

    Loggers are called directly rather than through ``LightningModule.log``: that is not allowed in
    ``on_train_end``, and in DDP it would wait on ranks that skip the evaluation.
    """
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
