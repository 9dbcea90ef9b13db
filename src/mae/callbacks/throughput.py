"""Images per second, FLOP/s and (on a GPU Lightning knows) MFU, through Lightning's ``ThroughputMonitor``.

The FLOPs of a batch are the analytic count of :mod:`mae.benchmarking.flops` for the run's own model: its size
and, in pre-training, its mask ratio (the encoder sees only the kept patches). A training step counts
``TRAIN_FACTOR`` (3) times the forward (the backward pass costs about twice the forward); a validation step the
forward alone. Linear probing trains only the head: its frozen encoder counts once (forward only), the head three
times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage
from torch import nn

from mae.benchmarking.flops import (
    MAEShape,
    block_flops,
    linear_flops,
    mae_forward_flops,
    train_flops,
)

IMG_PER_S_KEY = "train/img_per_s"
"""Images per second over all processes, on the progress bar and in the loggers (the key the hand-timed logging of
pre-training wrote)."""


def batch_images(batch: Any) -> int:
    """Images in a batch: ``(imgs, ...)`` tuples or lists (every data module here), or a bare image tensor;
    ``imgs`` a stacked tensor or a list of images (detection)."""
    imgs = batch[0] if isinstance(batch, (tuple, list)) else batch
    return len(imgs) if isinstance(imgs, list) else int(imgs.shape[0])


def encoder_forward_flops(encoder: nn.Module) -> int:
    """Forward FLOPs of one image through a ViT encoder on all its patches (patch embedding and blocks), read off
    the module: an MAE (``forward_features``) or a timm ``VisionTransformer``."""
    proj = encoder.patch_embed.proj
    num_patches = encoder.patch_embed.num_patches
    width = proj.out_channels
    patch_dim = proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]
    tokens = num_patches + int(getattr(encoder, "num_prefix_tokens", 1))  # + the cls token
    blocks = list(encoder.blocks)
    mlp_ratio = blocks[0].mlp.fc1.out_features / width if blocks else 4.0
    return linear_flops(num_patches, patch_dim, width) + len(blocks) * block_flops(tokens, width, mlp_ratio)


def head_flops(head: nn.Module) -> int:
    """Forward FLOPs of the linear layers of a classification head, for one image."""
    return sum(
        linear_flops(1, layer.in_features, layer.out_features)
        for layer in head.modules()
        if isinstance(layer, nn.Linear)
    )


@dataclass(frozen=True)
class ImageFlops:
    """FLOPs of one image in a training step and in a validation (forward-only) step."""

    train: int
    eval: int


def image_flops(pl_module: L.LightningModule) -> ImageFlops | None:
    """The FLOPs per image of this project's modules (or any module with an MAE or a ViT classifier as ``model``,
    or a frozen ``encoder`` and a ``head``); None for a module of another kind."""
    encoder, head = getattr(pl_module, "encoder", None), getattr(pl_module, "head", None)
    if isinstance(encoder, nn.Module) and isinstance(head, nn.Module):  # linear probing: the encoder is frozen
        if not (hasattr(encoder, "patch_embed") and hasattr(encoder, "blocks")):
            return None  # not a ViT (the raw-pixel baseline's identity encoder): rates without FLOPs
        forward = encoder_forward_flops(encoder)
        return ImageFlops(train=forward + train_flops(head_flops(head)), eval=forward + head_flops(head))
    model = getattr(pl_module, "model", None)
    if not isinstance(model, nn.Module):
        return None
    model = getattr(model, "_orig_mod", model)
    if hasattr(model, "decoder_blocks"):  # pre-training: the MAE at its own mask ratio
        forward = mae_forward_flops(MAEShape.from_model(model))
    elif hasattr(model, "patch_embed") and hasattr(model, "blocks"):  # fine-tuning: the whole classifier trains
        head = getattr(model, "head", None)
        forward = encoder_forward_flops(model) + (head_flops(head) if isinstance(head, nn.Module) else 0)
    else:
        return None
    return ImageFlops(train=train_flops(forward), eval=forward)


class AnalyticThroughputMonitor(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` with the analytic FLOPs of the run's model as ``pl_module.flops_per_batch``.

    Logs (to the loggers, every ``trainer.log_every_n_steps``) ``train/samples``, ``train/time`` and, once
    ``window_size`` batches have passed, ``train/device/samples_per_sec`` (images per second per device),
    ``train/device/flops_per_sec`` and, on a GPU whose peak Lightning knows, ``train/device/mfu``; with several
    processes also the totals (``train/samples_per_sec``, ...). Validation gets the same under ``validate/``.
    Besides, ``train/img_per_s`` (all processes, over the same window, from the second batch on) goes to the
    progress bar and the loggers.

    Args:
        window_size: batches the rates average over.
        progress_bar: show ``train/img_per_s`` on the progress bar.
    """

    def __init__(self, window_size: int = 50, progress_bar: bool = True) -> None:
        if window_size < 2:
            raise ValueError(f"window_size={window_size} must be at least 2 (a rate needs two batches)")
        super().__init__(batch_size_fn=batch_images, window_size=window_size)
        self.window_size = window_size
        self.progress_bar = progress_bar
        self.image_flops: ImageFlops | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # Counted here, before the strategy wraps or shards the model (FSDP's sharded parameters have other shapes),
        # and kept for a later validate() of the same run, by when the model may be wrapped.
        if self.image_flops is None:
            self.image_flops = image_flops(pl_module)

    def _set_flops(self, pl_module: L.LightningModule, batch: Any, training: bool) -> None:
        if self.image_flops is None:
            return  # ThroughputMonitor warns once and logs rates without FLOPs
        per_image = self.image_flops.train if training else self.image_flops.eval
        pl_module.flops_per_batch = per_image * batch_images(batch)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._set_flops(pl_module, batch, training=True)

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._set_flops(pl_module, batch, training=False)

    def on_test_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._set_flops(pl_module, batch, training=False)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        rate = self.images_per_second(trainer)
        if rate is not None:
            pl_module.log(
                IMG_PER_S_KEY, rate, prog_bar=self.progress_bar, on_step=True, on_epoch=False, rank_zero_only=True
            )

    def images_per_second(self, trainer: L.Trainer) -> float | None:
        """Training images per second over all processes, over the last ``window_size`` batches (fewer at the
        start); None before two batches or off global rank 0 (the monitor counts there only)."""
        throughput = self._throughputs.get(RunningStage.TRAINING)
        if not trainer.is_global_zero or throughput is None or len(throughput._time) < 2:
            return None
        seconds = throughput._time[-1] - throughput._time[0]
        images = throughput._samples[-1] - throughput._samples[0]
        return images / max(seconds, 1e-9) * trainer.world_size


def flops_per_batch(pl_module: L.LightningModule, batch_size: int, training: bool = True) -> int:
    """What :class:`AnalyticThroughputMonitor` sets as ``pl_module.flops_per_batch`` for a batch of ``batch_size``
    images (``training``: a training step, else a forward-only step)."""
    flops = image_flops(pl_module)
    if flops is None:
        raise TypeError(f"{type(pl_module).__name__} has no MAE or ViT model whose FLOPs can be counted")
    return (flops.train if training else flops.eval) * batch_size


__all__ = [
    "IMG_PER_S_KEY",
    "AnalyticThroughputMonitor",
    "batch_images",
    "encoder_forward_flops",
    "flops_per_batch",
    "head_flops",
    "image_flops",
]
