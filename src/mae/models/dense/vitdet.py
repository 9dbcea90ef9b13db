"""The MAE encoder as ViTDet's plain backbone, and ViTDet's simple feature pyramid on its last map.

Follows Detectron2's ``ViT`` and ``SimpleFeaturePyramid`` (``detectron2/modeling/backbone/vit.py``, the ViTDet
paper): the patch tokens alone (the cls token is dropped, as ViTDet drops it), the absolute position embedding kept
at the pre-training grid and interpolated to the input's grid at every forward (bicubic, no antialiasing: Detectron2's
``get_abs_pos``), blocks with optional window attention (a few global blocks between them) and optional decomposed
relative position embeddings (zero-initialised), and one output: the last block's map, without a final norm.

The blocks are timm's ``vision_transformer_sam.Block`` (SAM's image encoder is ViTDet's backbone): the same window
partition with zero padding, the same decomposed relative position term added to the attention logits, and the
parameter names of timm's ViT blocks (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``),
so MAE encoder weights load into it unchanged. With windows and relative positions off it computes exactly what the
MAE encoder's blocks compute on the patch tokens.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from itertools import pairwise

import torch
from timm.layers import PatchEmbed, resample_abs_pos_embed
from timm.models.vision_transformer_sam import Block
from torch import nn
from torch.nn import functional as F

from mae.models.dense.backbone import FeatureShape
from mae.models.mae import MaskedAutoencoderViT

LAST_FEATURE = "last_feat"
"""The backbone's one output, Detectron2's name for it."""


class ViTDetBackbone(nn.Module):
    """A plain ViT whose ``forward`` returns ``{"last_feat": (N, D, H / p, W / p)}``.

    Args:
        img_size: the input size the relative position tables are for (ViTDet: 1024); other sizes still work
            (timm interpolates the tables linearly).
        patch_size: pixels per patch side.
        in_chans: image channels.
        embed_dim: token width.
        depth: blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``embed_dim``.
        pretrain_grid: ``(rows, cols)`` of the position embedding as pre-trained (MAE ViT-B at 224 px: 14 x 14).
        drop_path_rate: stochastic depth of the last block, linear from 0 over depth (ViTDet ViT-B: 0.1).
        window_size: side of the attention windows in patches, 0 for global attention everywhere (ViTDet: 14).
        global_blocks: 0-based blocks that attend globally when ``window_size > 0`` (ViTDet ViT-B: 2, 5, 8, 11).
        rel_pos: decomposed relative position embeddings in every block, zero-initialised (ViTDet: on).
        layer_norm_eps: the blocks' LayerNorm epsilon (MAE: 1e-6).
    """

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        pretrain_grid: tuple[int, int],
        drop_path_rate: float,
        window_size: int,
        global_blocks: Sequence[int],
        rel_pos: bool,
        layer_norm_eps: float,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} is not divisible by the patch size {patch_size}")
        if window_size < 0:
            raise ValueError(f"window_size={window_size} must be 0 (global attention) or a window side in patches")
        global_blocks = tuple(global_blocks)
        if any(not 0 <= index < depth for index in global_blocks) or len(set(global_blocks)) != len(global_blocks):
            raise ValueError(f"global_blocks={list(global_blocks)} must be distinct block indices in [0, {depth})")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={drop_path_rate} is outside [0, 1)")
        self.patch_size, self.embed_dim = patch_size, embed_dim
        self.window_size, self.global_blocks, self.rel_pos = window_size, global_blocks, rel_pos
        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            output_fmt="NHWC",
            strict_img_size=False,
        )
        self.pretrain_grid = tuple(pretrain_grid)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.pretrain_grid[0] * self.pretrain_grid[1], embed_dim))
        grid = (img_size // patch_size, img_size // patch_size)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=True,
                drop_path=rates[index],
                norm_layer=partial(nn.LayerNorm, eps=layer_norm_eps),
                use_rel_pos=rel_pos,
                window_size=0 if index in global_blocks else window_size,
                input_size=grid,
            )
            for index in range(depth)
        )

    def output_shape(self) -> dict[str, FeatureShape]:
        """The one map's channels and stride (Detectron2's ``output_shape``)."""
        return {LAST_FEATURE: FeatureShape(self.embed_dim, self.patch_size)}

    def position_embedding(self, rows: int, cols: int) -> torch.Tensor:
        """The position embedding at a ``rows x cols`` grid, ``(1, rows, cols, D)``: Detectron2's ``get_abs_pos``
        (bicubic, ``align_corners=False``, no antialiasing), the table itself at its own grid."""
        table = self.pos_embed
        if (rows, cols) != self.pretrain_grid:
            table = resample_abs_pos_embed(
                table, new_size=[rows, cols], old_size=list(self.pretrain_grid), num_prefix_tokens=0, antialias=False
            )
        return table.reshape(1, rows, cols, self.embed_dim)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images`` ``(N, C, H, W)``, both sides divisible by the patch -> ``{"last_feat": (N, D, H/p, W/p)}``."""
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not divisible by the patch size {self.patch_size}")
        x = self.patch_embed(images)
        x = x + self.position_embedding(x.shape[1], x.shape[2])
        for block in self.blocks:
            x = block(x)
        return {LAST_FEATURE: x.permute(0, 3, 1, 2)}


def vitdet_backbone_from_mae(
    mae: MaskedAutoencoderViT,
    img_size: int,
    drop_path_rate: float,
    window_size: int,
    global_blocks: Sequence[int],
    rel_pos: bool,
) -> ViTDetBackbone:
    """ViTDet's backbone with ``mae``'s encoder weights (patch embedding, position embedding without its cls entry,
    blocks); the cls token and the final norm are left out, as ViTDet leaves them. The position embedding becomes a
    trained parameter (a frozen sin-cos table in pre-training)."""
    backbone = ViTDetBackbone(
        img_size=img_size,
        patch_size=mae.patch_size,
        in_chans=mae.in_chans,
        embed_dim=mae.embed_dim,
        depth=len(mae.blocks),
        num_heads=mae.blocks[0].attn.num_heads,
        mlp_ratio=mae.blocks[0].mlp.fc1.out_features / mae.embed_dim,
        pretrain_grid=tuple(mae.grid_size),
        drop_path_rate=drop_path_rate,
        window_size=window_size,
        global_blocks=global_blocks,
        rel_pos=rel_pos,
        layer_norm_eps=mae.norm.eps,
    )
    state = {k: v for k, v in mae.encoder_state_dict().items() if not k.startswith(("norm.", "cls_token"))}
    state["pos_embed"] = state["pos_embed"][:, 1:]  # the cls token's position goes with the cls token
    result = backbone.load_state_dict(state, strict=False)
    unexplained = [k for k in result.missing_keys if not k.endswith((".rel_pos_h", ".rel_pos_w"))]
    if unexplained or result.unexpected_keys:
        raise RuntimeError(
            f"encoder does not fit the backbone: missing {unexplained}, unexpected {result.unexpected_keys}"
        )
    return backbone


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an ``(N, C, H, W)`` map at each position: Detectron2's ``"LN"`` norm for
    convolutions (its ``LayerNorm``), which ViTDet's pyramid and heads use."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def pyramid_stage(scale: float, dim: int, out_channels: int) -> nn.Sequential:
    """One level of the simple feature pyramid: the rescale, then a 1x1 and a 3x3 convolution to ``out_channels``,
    each followed by channel LayerNorm (bias-free convolutions, as Detectron2 builds them with a norm)."""
    if scale == 4:
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
            ChannelLayerNorm(dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2),
        ]
        dim //= 4
    elif scale == 2:
        layers, dim = [nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2)], dim // 2
    elif scale == 1:
        layers = []
    elif scale == 0.5:
        layers = [nn.MaxPool2d(kernel_size=2, stride=2)]
    else:
        raise ValueError(f"scale factor {scale} is not one of 4, 2, 1, 0.5")
    return nn.Sequential(
        *layers,
        nn.Conv2d(dim, out_channels, kernel_size=1, bias=False),
        ChannelLayerNorm(out_channels),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
        ChannelLayerNorm(out_channels),
    )


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's feature pyramid from a backbone's last map: ``{"p2", ..., "p6"}`` for scale factors 4, 2, 1, 0.5
    and the extra level (Detectron2's ``LastLevelMaxPool``: ``max_pool2d(p5, 1, stride=2)``).

    Level ``p{k}`` is named for stride ``2**k`` at ViTDet's patch 16; with another patch ``p`` the strides are
    ``p / scale`` (patch 7: 1.75, 3.5, 7, 14, 28), which :attr:`strides` gives exactly for the anchors and RoI
    pooling (torchvision would infer integer powers of two). ``out_channels`` is an attribute, as torchvision's
    detection models expect of a backbone.

    Args:
        backbone: returns ``{"last_feat": (N, D, h, w)}`` and describes it in ``output_shape()``.
        out_channels: channels of every level (ViTDet: 256).
        scale_factors: the rescales, decreasing and consecutive halvings (ViTDet: 4, 2, 1, 0.5).
        extra_level: add the max-pooled level after the last one.
    """

    def __init__(
        self, backbone: nn.Module, out_channels: int, scale_factors: Sequence[float], extra_level: bool
    ) -> None:
        super().__init__()
        scale_factors = tuple(float(s) for s in scale_factors)
        halvings = all(later == earlier / 2 for earlier, later in pairwise(scale_factors))
        if not scale_factors or not halvings or any(s not in (4.0, 2.0, 1.0, 0.5) for s in scale_factors):
            raise ValueError(f"scale_factors={list(scale_factors)} must be consecutive halvings among 4, 2, 1, 0.5")
        if out_channels < 1:
            raise ValueError(f"out_channels={out_channels} must be at least 1")
        self.net = backbone
        shape = backbone.output_shape()[LAST_FEATURE]
        self.out_channels = out_channels
        self.scale_factors, self.extra_level = scale_factors, extra_level
        self.stages = nn.ModuleList(pyramid_stage(scale, shape.channels, out_channels) for scale in scale_factors)
        strides = [shape.stride / scale for scale in scale_factors]
        if extra_level:
            strides.append(strides[-1] * 2)
        first_level = round(math.log2(16 / scale_factors[0]))  # p2 for factor 4, as at patch 16
        self.strides: OrderedDict[str, float] = OrderedDict(
            (f"p{first_level + level}", stride) for level, stride in enumerate(strides)
        )
        """Each level's name and its exact stride in input pixels."""

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """``images`` ``(N, C, H, W)`` -> name -> ``(N, out_channels, H / stride, W / stride)``, finest first."""
        last = self.net(images)[LAST_FEATURE]
        maps = [stage(last) for stage in self.stages]
        if self.extra_level:
            maps.append(F.max_pool2d(maps[-1], kernel_size=1, stride=2))
        return OrderedDict(zip(self.strides, maps))
