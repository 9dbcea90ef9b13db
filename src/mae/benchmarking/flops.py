"""Analytic FLOP count of one MAE pre-training image (forward), from a model's configuration.

A multiply-add counts as 2 FLOPs; only matrix products are counted (norms, softmax, GELU, the loss and the
masking are a few percent at most and left out, as in the paper's numbers). Per transformer
block with ``N`` tokens, width ``D`` and MLP ratio ``r``: qkv ``6ND^2``, output projection ``2ND^2``, MLP
``4rND^2`` and attention (``QK^T`` and ``AV``) ``4N^2D``, i.e. ``24ND^2 + 4N^2D`` at ``r = 4``.

MAE runs its encoder on the kept patches and the cls token only (``int(L * (1 - mask_ratio)) + 1`` tokens)
and its decoder on all ``L + 1``; the patch embedding sees all ``L`` patches. ViT-B/16 at 224 px with 75%
masking and the paper's 512x8 decoder: 19.56 GFLOP forward; training (forward + backward) is ~3x that.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mae.models.masking import num_kept

TRAIN_FACTOR = 3
"""Training FLOPs per forward FLOP: the backward pass costs about twice the forward."""


def block_flops(tokens: int, width: int, mlp_ratio: float = 4.0) -> int:
    """Forward FLOPs of one pre-norm ViT block on ``tokens`` tokens of ``width`` channels."""
    linear = (8 + 4 * mlp_ratio) * tokens * width**2  # qkv (3), proj (1), MLP (2 * mlp_ratio), x2 per MAC
    attention = 4 * tokens**2 * width  # Q K^T and attention @ V
    return int(round(linear + attention))


def linear_flops(tokens: int, fan_in: int, fan_out: int) -> int:
    """Forward FLOPs of a dense layer applied to ``tokens`` vectors."""
    return 2 * tokens * fan_in * fan_out


@dataclass(frozen=True)
class MAEShape:
    """The configuration numbers the FLOP count depends on."""

    num_patches: int
    patch_size: int
    in_chans: int
    embed_dim: int
    depth: int
    decoder_embed_dim: int
    decoder_depth: int
    mask_ratio: float
    mlp_ratio: float = 4.0

    @classmethod
    def from_model(cls, model: nn.Module, mask_ratio: float | None = None) -> MAEShape:
        """Read the numbers off a :class:`~mae.models.MaskedAutoencoderViT` (or a wrapper with ``.mae``)."""
        model = getattr(model, "mae", model)
        model = getattr(model, "_orig_mod", model)  # a torch.compile'd module
        first = model.blocks[0] if len(model.blocks) else None
        embed_dim = model.cls_token.shape[-1]
        mlp_ratio = first.mlp.fc1.out_features / embed_dim if first is not None else 4.0
        return cls(
            num_patches=model.num_patches,
            patch_size=model.patch_size,
            in_chans=model.in_chans,
            embed_dim=embed_dim,
            depth=len(model.blocks),
            decoder_embed_dim=model.mask_token.shape[-1],
            decoder_depth=len(model.decoder_blocks),
            mask_ratio=model.mask_ratio if mask_ratio is None else mask_ratio,
            mlp_ratio=mlp_ratio,
        )

    @property
    def patch_dim(self) -> int:
        """Values per patch: ``p * p * C``."""
        return self.patch_size**2 * self.in_chans


def _forward_flops(shape: MAEShape, encoder_tokens: int) -> int:
    length = shape.num_patches
    decoder_tokens = length + 1
    return (
        linear_flops(length, shape.patch_dim, shape.embed_dim)  # patch embedding, all L patches
        + shape.depth * block_flops(encoder_tokens, shape.embed_dim, shape.mlp_ratio)
        + linear_flops(encoder_tokens, shape.embed_dim, shape.decoder_embed_dim)  # decoder_embed
        + shape.decoder_depth * block_flops(decoder_tokens, shape.decoder_embed_dim, shape.mlp_ratio)
        + linear_flops(decoder_tokens, shape.decoder_embed_dim, shape.patch_dim)  # decoder_pred
    )


def mae_forward_flops(shape: MAEShape) -> int:
    """Forward FLOPs of one image through MAE: the encoder on kept patches + cls, the decoder on all + cls."""
    return _forward_flops(shape, num_kept(shape.num_patches, shape.mask_ratio) + 1)


def all_tokens_forward_flops(shape: MAEShape) -> int:
    """Forward FLOPs of one image through the SimMIM-style variant: the encoder on all ``L + 1`` tokens
    (mask tokens in place of the removed patches), followed by the same decoder."""
    return _forward_flops(shape, shape.num_patches + 1)


def train_flops(forward_flops: int) -> int:
    """FLOPs of one trained image (forward + backward) from its forward FLOPs."""
    return TRAIN_FACTOR * forward_flops
