"""MAE models: the masked autoencoder, its presets and its pure building blocks."""

from mae.models.factory import (
    mae_vit_base_patch16,
    mae_vit_huge_patch14,
    mae_vit_large_patch16,
    mae_vit_small_patch4,
    mae_vit_tiny_patch4,
    mae_vit_tiny_patch7,
)
from mae.models.mae import MAEOutput, MaskedAutoencoderViT

__all__ = [
    "MAEOutput",
    "MaskedAutoencoderViT",
    "mae_vit_base_patch16",
    "mae_vit_huge_patch14",
    "mae_vit_large_patch16",
    "mae_vit_small_patch4",
    "mae_vit_tiny_patch4",
    "mae_vit_tiny_patch7",
]
