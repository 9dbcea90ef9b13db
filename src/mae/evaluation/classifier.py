"""Top-1 / top-5 / loss of a classification module on a data module's validation and test splits, in one record."""

from __future__ import annotations

import lightning as L


def evaluate_split(trainer: L.Trainer, module: L.LightningModule, datamodule, split: str) -> dict:
    """Top-1 / top-5 (in percent, as the paper reports them) and loss over the whole ``split`` ("val" or "test"),
    whatever share of the validation split the training watched each epoch (``trainer.limit_val_batches``)."""
    trainer.limit_val_batches = 1.0
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    [metrics] = trainer.validate(module, dataloaders=loader, verbose=False)
    expected = len(loader.dataset)
    seen = int(metrics["val/num_images"])
    if seen != expected:
        raise RuntimeError(f"the evaluation covered {seen} of {expected} images; set trainer.limit_val_batches=1.0")
    return {
        "top1": 100.0 * float(metrics["val/top1"]),
        "top5": 100.0 * float(metrics["val/top5"]),
        "loss": float(metrics["val/loss"]),
        "num_images": seen,
    }


def evaluate_classifier(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule) -> dict:
    """The record a downstream run ends with: the test split's numbers (``top1``, ``top5``, ``loss``,
    ``num_images``, ``split``: which official split it is), evaluated once, here, and the validation split's as
    ``val_top1``, ... (what choices are made on), with ``validation_split`` saying what that split is."""
    test = evaluate_split(trainer, module, datamodule, "test")
    record = {**test, "split": getattr(datamodule, "eval_split", "val")}
    validation = getattr(datamodule, "validation_split", None)
    if validation is not None and not datamodule.splits.val_is_test:
        record.update(
            {f"val_{key}": value for key, value in evaluate_split(trainer, module, datamodule, "val").items()}
        )
    record["validation_split"] = validation() if validation is not None else None
    return record


def summary_line(results: dict) -> str:
    line = (
        f"top-1 {results['top1']:.2f}% | top-5 {results['top5']:.2f}% | loss {results['loss']:.4f} | "
        f"{results['num_images']} {results['split']} images"
    )
    if "val_top1" in results:
        line += f" (validation: top-1 {results['val_top1']:.2f}% on {results['val_num_images']} held-out images)"
    return line
