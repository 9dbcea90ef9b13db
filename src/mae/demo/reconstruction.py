"""A checkpoint loaded for the demo, and one update of the page: the four views of an image and its loss."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from mae.demo.images import to_display
from mae.evaluation.reconstruction_grid import COLUMNS, reconstruct
from mae.model_files.loading import load
from mae.models import MaskedAutoencoderViT
from mae.models.masking import check_trainable_mask_ratio, num_kept, seeded_noise


@dataclass
class DemoModel:
    """An MAE with decoder and the normalisation of the data it was trained on."""

    model: MaskedAutoencoderViT
    path: str
    architecture_from: str
    mean: Sequence[float]
    std: Sequence[float]

    @property
    def geometry(self) -> tuple[int, int, int]:
        """(image size, patch size, channels): two models share masks and images only when these agree."""
        return self.model.img_size, self.model.patch_size, self.model.in_chans

    def describe(self) -> str:
        model = self.model
        return (
            f"{Path(self.path).name}: {model.img_size} px, {model.in_chans} channel(s), "
            f"patch {model.patch_size}, {model.embed_dim} wide x {len(model.blocks)} blocks, "
            f"decoder {model.decoder_embed.out_features} wide x {len(model.decoder_blocks)}, "
            f"norm_pix_loss={model.norm_pix_loss}"
        )


@dataclass
class DemoViews:
    """The page's pictures of one image under one mask, and the model's loss on it."""

    original: Image.Image
    masked: Image.Image
    reconstruction: Image.Image
    pasted: Image.Image
    loss: float
    num_masked: int
    num_patches: int

    def pictures(self) -> tuple[Image.Image, ...]:
        return tuple(getattr(self, name) for name in COLUMNS)


def load_demo_model(
    path: str | Path, mean: Sequence[float], std: Sequence[float], fallback=None, use_stated: bool = True
) -> DemoModel:
    """``path`` through :func:`mae.model_files.loading.load` with its decoder required (one-line errors otherwise)."""
    loaded = load(path, fallback=fallback, use_stated=use_stated, require_decoder=True)
    return DemoModel(loaded.model, str(path), loaded.architecture_from, tuple(mean), tuple(std))


def demo_views(demo: DemoModel, image: torch.Tensor, mask_ratio: float, seed: int, display_size: int) -> DemoViews:
    """Mask ``image`` (``(1, C, H, W)``, normalised) with the noise of ``seed`` and reconstruct it.

    The noise depends on the seed and the number of patches only, so every model of the same geometry hides the
    same patches. Under ``norm_pix_loss`` the prediction is put back into pixels with the target patches'
    statistics (:func:`mae.evaluation.reconstruction_grid.reconstruct`).
    """
    num_patches = demo.model.num_patches
    mask_ratio = float(mask_ratio)
    check_trainable_mask_ratio(mask_ratio, num_patches)
    noise = seeded_noise(1, num_patches, int(seed))
    views = reconstruct(demo.model, image, noise=noise, mask_ratio=mask_ratio)
    pictures = {name: to_display(getattr(views, name)[0], demo.mean, demo.std, display_size) for name in COLUMNS}
    return DemoViews(
        **pictures, loss=views.loss, num_masked=num_patches - num_kept(num_patches, mask_ratio), num_patches=num_patches
    )
