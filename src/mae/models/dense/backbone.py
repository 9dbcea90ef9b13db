"""The MAE encoder as a dense backbone: feature maps from chosen blocks, as torchvision and Detectron2 expect.

Follows MMSegmentation's ``MAE`` backbone (``mmseg/models/backbones/mae.py``): features of the given blocks with the
cls token dropped and no final norm, the absolute position embedding resized to the training crop at load time,
and optionally BEiT's relative position bias, zero-initialised as MAE transfers it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import torch
from timm.layers import resample_abs_pos_embed
from timm.layers.attention import Attention
from timm.models.beit import gen_relative_position_index
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from mae.models.dense.sizes import size_pair
from mae.models.mae import MaskedAutoencoderViT

# MAE encoder weights the backbone leaves out on purpose: mmseg's MAE backbone has final_norm=False.
_DROPPED_PREFIXES = ("norm.",)
# Parameters that MAE pre-training does not have: layer scales (the relative position tables come after loading).
_NEW_SUFFIXES = (".ls1.gamma", ".ls2.gamma")


class FeatureShape(NamedTuple):
    """One feature map's description, Detectron2's ``ShapeSpec`` reduced to what a neck needs."""

    channels: int
    stride: int
    """Input pixels per feature-map pixel."""


class RelativePositionAttention(Attention):
    """timm's self-attention plus BEiT's relative position bias on the logits, one table per block.

    The bias of query ``i`` and key ``j`` is ``relative_position_bias_table[relative_position_index[i, j]]`` (one
    value per head): one entry per 2-D offset between patches, and three for cls-to-patch, patch-to-cls and
    cls-to-cls. The table starts at zero (MAE's transfer setting; BEiT's own start is trunc-normal), so a new block
    computes exactly what plain attention does. ``qkv`` and ``proj`` keep timm's names, so MAE weights load
    unchanged, and the bias reaches ``F.scaled_dot_product_attention`` as its additive ``attn_mask``.

    Args:
        dim: token width.
        num_heads: attention heads.
        grid_size: ``(rows, cols)`` of patches the table is for; the sequence must be cls + these patches.
        qkv_bias: learn biases of the query, key and value projections (MAE: yes).
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: tuple[int, int],
        qkv_bias: bool,
        attn_drop: float,
        proj_drop: float,
    ) -> None:
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.grid_size = grid_size
        rows, cols = grid_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * rows - 1) * (2 * cols - 1) + 3, num_heads))
        # Derived from grid_size alone, so not part of the checkpoint.
        self.register_buffer("relative_position_index", gen_relative_position_index(grid_size), persistent=False)

    def relative_position_bias(self) -> torch.Tensor:
        """The additive attention bias ``(1, num_heads, 1 + rows * cols, 1 + rows * cols)``."""
        length = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(length, length, -1)
        return bias.permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """Attend over ``x`` ``(N, 1 + rows * cols, dim)``; the bias takes the place of timm's mask argument."""
        if attn_mask is not None or is_causal:
            raise ValueError("RelativePositionAttention takes no attention mask: its bias fills that argument")
        return super().forward(x, attn_mask=self.relative_position_bias())

    @classmethod
    def replacing(cls, attn: Attention, grid_size: tuple[int, int]) -> RelativePositionAttention:
        """A copy of timm's ``attn`` (same weights, same dropouts) with a zero bias table for ``grid_size``."""
        new = cls(
            attn.qkv.in_features,
            attn.num_heads,
            grid_size,
            qkv_bias=attn.qkv.bias is not None,
            attn_drop=attn.attn_drop.p,
            proj_drop=attn.proj_drop.p,
        ).to(device=attn.qkv.weight.device, dtype=attn.qkv.weight.dtype)
        result = new.load_state_dict(attn.state_dict(), strict=False)
        if result.missing_keys != ["relative_position_bias_table"] or result.unexpected_keys:
            raise ValueError(f"cannot add a relative position bias to {type(attn).__name__}: {result}")
        return new


class ViTBackbone(nn.Module):
    """A timm ViT as a dense backbone: ``dict`` of ``(N, D, H/p, W/p)`` maps from chosen blocks.

    The features are the blocks' outputs with the cls token dropped and without the final norm (mmseg's MAE
    backbone, ``final_norm=False``), read through timm's ``forward_intermediates``. Images of any size divisible
    by the patch work: the ViT must be built with ``dynamic_img_size=True``, which resamples its position embedding
    to the input's grid at forward time (at the crop's own grid it is used untouched; at another grid timm
    resamples bicubic with antialiasing, where mmseg's MAE backbone refuses other sizes altogether). With the
    relative position bias, whose tables are tied to the crop's grid, only crop-sized images are taken.

    Args:
        vit: a timm ``VisionTransformer`` with a cls token and ``dynamic_img_size=True``, its ``img_size`` the
            training crop; blocks after the last of ``out_indices`` are removed (they would get no gradient).
        out_indices: 0-based blocks whose outputs are returned, increasing (ViT-B in mmseg: 3, 5, 7, 11).
        rel_pos_bias: give every block's attention a zero-initialised BEiT relative position bias.
    """

    def __init__(self, vit: VisionTransformer, out_indices: Sequence[int], rel_pos_bias: bool) -> None:
        super().__init__()
        depth = len(vit.blocks)
        out_indices = tuple(out_indices)
        increasing = list(out_indices) == sorted(set(out_indices))
        if not out_indices or not increasing or out_indices[0] < 0 or out_indices[-1] >= depth:
            raise ValueError(f"out_indices={list(out_indices)} must be increasing block indices in [0, {depth})")
        if not vit.dynamic_img_size or vit.num_prefix_tokens != 1 or not vit.has_class_token:
            raise ValueError("the ViT needs dynamic_img_size=True and a cls token as its only prefix token")
        patch = vit.patch_embed.patch_size
        if patch[0] != patch[1]:
            raise ValueError(f"patch_size={tuple(patch)} must be square")
        vit.prune_intermediate_layers(list(out_indices), prune_norm=True, prune_head=True)
        self.vit = vit
        self.out_indices = out_indices
        self.patch_size: int = patch[0]
        self.grid_size: tuple[int, int] = tuple(vit.patch_embed.grid_size)
        """The crop's ``(rows, cols)`` of patches, which the relative position bias tables are for."""
        self.rel_pos_bias = rel_pos_bias
        if rel_pos_bias:
            for block in vit.blocks:
                block.attn = RelativePositionAttention.replacing(block.attn, self.grid_size)

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    @property
    def feature_names(self) -> tuple[str, ...]:
        """``block{i}`` for each 0-based index ``i`` in ``out_indices`` (timm's module ``blocks.{i}``)."""
        return tuple(f"block{index}" for index in self.out_indices)

    def output_shape(self) -> dict[str, FeatureShape]:
        """Each returned map's channels and stride, in ``forward``'s order."""
        return {name: FeatureShape(self.embed_dim, self.patch_size) for name in self.feature_names}

    def _check_input(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.vit.in_chans:
            raise ValueError(f"images have shape {tuple(images.shape)}, expected (N, {self.vit.in_chans}, H, W)")
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not divisible by the patch size {self.patch_size}")
        grid = (height // self.patch_size, width // self.patch_size)
        if self.rel_pos_bias and grid != self.grid_size:
            rows, cols = self.grid_size
            raise ValueError(
                f"image size {height}x{width} gives a {grid[0]}x{grid[1]} grid; the relative position bias is for "
                f"the crop's {rows}x{cols} grid ({rows * self.patch_size}x{cols * self.patch_size} pixels)"
            )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature maps of ``images`` ``(N, C, H, W)``: name -> ``(N, D, H / p, W / p)``, in block order."""
        self._check_input(images)
        maps = self.vit.forward_intermediates(
            images, indices=list(self.out_indices), norm=False, output_fmt="NCHW", intermediates_only=True
        )
        return dict(zip(self.feature_names, maps))


def resized_encoder_state(mae: MaskedAutoencoderViT, grid_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """``mae``'s encoder weights under timm names, the position embedding resized to ``grid_size``.

    The resize is the MAE reference's ``interpolate_pos_embed`` (and mmseg's ``resize_abs_pos_embed``): the cls
    position kept, the grid part interpolated bicubic with ``align_corners=False`` and no antialiasing. That is
    timm's ``resample_abs_pos_embed`` with ``antialias=False`` (its default, ``True``, gives other values).
    """
    state = mae.encoder_state_dict()
    state["pos_embed"] = resample_abs_pos_embed(
        state["pos_embed"], new_size=list(grid_size), old_size=list(mae.grid_size), num_prefix_tokens=1, antialias=False
    )
    return state


def vit_backbone_from_mae(
    mae: MaskedAutoencoderViT,
    crop_size: int | Sequence[int],
    out_indices: Sequence[int],
    drop_path_rate: float,
    rel_pos_bias: bool,
    layer_scale_init_value: float | None,
) -> ViTBackbone:
    """The dense backbone with ``mae``'s encoder weights, as mmseg's MAE backbone is set up for fine-tuning.

    Args:
        mae: the pre-trained model; its encoder architecture and weights are used, its final norm is not.
        crop_size: training crop, ``int`` or ``(height, width)``; both must be divisible by the patch size.
        out_indices: 0-based blocks to return (mmseg, ViT-B: 3, 5, 7, 11).
        drop_path_rate: stochastic depth of the last block, linear from 0 over depth (mmseg: 0.1).
        rel_pos_bias: add zero-initialised BEiT relative position bias tables (the MAE paper's transfer setting;
            mmseg's MAE backbone always has them).
        layer_scale_init_value: learnable per-channel scales on each block's two branches, starting at this value
            (mmseg's config: ``init_values=1.0``, which computes the same function at the start); ``None`` for none.

    The position embedding is resized to the crop's grid (:func:`resized_encoder_state`) and, like the cls token,
    trained (it is a frozen sin-cos table in pre-training).
    """
    height, width = size_pair(crop_size, "crop_size")
    if height % mae.patch_size or width % mae.patch_size:
        raise ValueError(f"crop_size={height}x{width} is not divisible by the patch size {mae.patch_size}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate={drop_path_rate} is outside [0, 1)")
    if layer_scale_init_value is not None and layer_scale_init_value <= 0:
        raise ValueError(f"layer_scale_init_value={layer_scale_init_value} must be positive, or None for no scales")
    vit = VisionTransformer(
        img_size=(height, width),
        patch_size=mae.patch_size,
        in_chans=mae.in_chans,
        num_classes=0,
        global_pool="",
        embed_dim=mae.embed_dim,
        depth=len(mae.blocks),
        num_heads=mae.blocks[0].attn.num_heads,
        mlp_ratio=mae.blocks[0].mlp.fc1.out_features / mae.embed_dim,
        qkv_bias=True,
        init_values=layer_scale_init_value,
        final_norm=False,
        dynamic_img_size=True,
        drop_path_rate=drop_path_rate,
        norm_layer=partial(nn.LayerNorm, eps=mae.norm.eps),
    )
    grid = (height // mae.patch_size, width // mae.patch_size)
    state = {k: v for k, v in resized_encoder_state(mae, grid).items() if not k.startswith(_DROPPED_PREFIXES)}
    result = vit.load_state_dict(state, strict=False)
    unexplained = [k for k in result.missing_keys if not k.endswith(_NEW_SUFFIXES)]
    if unexplained or result.unexpected_keys:
        raise RuntimeError(
            f"encoder does not fit the backbone: missing {unexplained}, unexpected {result.unexpected_keys}"
        )
    # The attention swap keeps the loaded weights; unused blocks are pruned there too.
    return ViTBackbone(vit, out_indices, rel_pos_bias)
