"""Presets, one factory function each, in the style of timm: every argument can still be overridden."""

from __future__ import annotations

from typing import Any

from mae.models.mae import MaskedAutoencoderViT

_PAPER_DECODER = dict(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)


def mae_vit_base_patch16(**kwargs: Any) -> MaskedAutoencoderViT:
    """ViT-B/16 encoder (768 wide, 12 deep, 12 heads) with the paper's 512x8 decoder."""
    args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, **_PAPER_DECODER)
    return MaskedAutoencoderViT(**{**args, **kwargs})


def mae_vit_large_patch16(**kwargs: Any) -> MaskedAutoencoderViT:
    """ViT-L/16 encoder (1024 wide, 24 deep, 16 heads) with the paper's 512x8 decoder."""
    args = dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, **_PAPER_DECODER)
    return MaskedAutoencoderViT(**{**args, **kwargs})


def mae_vit_huge_patch14(**kwargs: Any) -> MaskedAutoencoderViT:
    """ViT-H/14 encoder (1280 wide, 32 deep, 16 heads) with the paper's 512x8 decoder."""
    args = dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16, **_PAPER_DECODER)
    return MaskedAutoencoderViT(**{**args, **kwargs})


def mae_vit_tiny_patch4(**kwargs: Any) -> MaskedAutoencoderViT:
    """CPU-sized: ViT-Ti width (192, 3 heads), 6 blocks, patch 4 for 28-32 px images; 128x2 decoder."""
    args = dict(
        img_size=32,
        patch_size=4,
        embed_dim=192,
        depth=6,
        num_heads=3,
        decoder_embed_dim=128,
        decoder_depth=2,
        decoder_num_heads=4,
    )
    return MaskedAutoencoderViT(**{**args, **kwargs})


def mae_vit_tiny_patch7(**kwargs: Any) -> MaskedAutoencoderViT:
    """CPU-sized for 28 px images (Fashion-MNIST): the tiny encoder on a 4x4 grid of 7x7 patches."""
    args = dict(
        img_size=28,
        patch_size=7,
        embed_dim=192,
        depth=6,
        num_heads=3,
        decoder_embed_dim=128,
        decoder_depth=2,
        decoder_num_heads=4,
    )
    return MaskedAutoencoderViT(**{**args, **kwargs})


def mae_vit_small_patch4(**kwargs: Any) -> MaskedAutoencoderViT:
    """CPU-sized: ViT-S width (384, 6 heads), 12 blocks, patch 4 for 28-32 px images; 256x4 decoder."""
    args = dict(
        img_size=32,
        patch_size=4,
        embed_dim=384,
        depth=12,
        num_heads=6,
        decoder_embed_dim=256,
        decoder_depth=4,
        decoder_num_heads=8,
    )
    return MaskedAutoencoderViT(**{**args, **kwargs})
