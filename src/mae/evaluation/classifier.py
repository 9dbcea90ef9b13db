"""Top-1 / top-5 / loss of a classification module on a data module's evaluation split, in one record."""

from __future__ import annotations

import lightning as L


def evaluate_classifier(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule) -> dict:
    """Run ``trainer.validate`` over the whole evaluation split; accuracies in percent, as the paper reports them.

    The whole split whatever share of it the training watched each epoch (``trainer.limit_val_batches``)."""
    trainer.limit_val_batches = 1.0
    [metrics] = trainer.validate(module, datamodule=datamodule, verbose=False)
    expected = len(datamodule.splits.val)
    seen = int(metrics["val/num_images"])
    if seen != expected:
        raise RuntimeError(f"the evaluation covered {seen} of {expected} images; set trainer.limit_val_batches=1.0")
    return {
        "top1": 100.0 * float(metrics["val/top1"]),
        "top5": 100.0 * float(metrics["val/top5"]),
        "loss": float(metrics["val/loss"]),
        "num_images": seen,
        "split": getattr(datamodule, "eval_split", "val"),
    }


def summary_line(results: dict) -> str:
    return (
        f"top-1 {results['top1']:.2f}% | top-5 {results['top5']:.2f}% | loss {results['loss']:.4f} | "
        f"{results['num_images']} {results['split']} images"
    )
