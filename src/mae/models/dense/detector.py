"""ViTDet's Mask R-CNN on the MAE encoder, with torchvision's Mask R-CNN doing the detection.

torchvision's ``MaskRCNN`` takes any backbone that returns a dict of feature maps and has ``out_channels``; the
simple feature pyramid is one. The heads are ViTDet's choices (``configs/common/models/mask_rcnn_vitdet.py`` in
Detectron2) in torchvision's own modules: an RPN head with two 3x3 convolutions, a box head of four 3x3
convolutions and one fully connected layer (``FastRCNNConvFCHead``), a mask head of four convolutions, all
normalised with channel LayerNorm, RoIAlign 7x7 for boxes and 14x14 for masks with adaptive sampling
(``sampling_ratio=0``, Detectron2's ``ROIAlignV2`` is aligned as torchvision's).

Two things torchvision infers are given exactly instead, so that any patch size works: anchors are placed at each
level's true stride (torchvision divides integer sizes, wrong for patch 7's 1.75-pixel level), and RoI pooling uses
each level's true scale with FPN's level rule (torchvision rounds scales to powers of two).

Images: torchvision's transform normalises them, resizes evaluation images as ViTDet does (long side to
``image_size``: Detectron2's ``ResizeShortestEdge(image_size, max_size=image_size)``), leaves the training images
(already ``image_size`` square after large-scale jitter) at their size, pads every batch to ``image_size`` square
(ViTDet's ``square_pad``) and maps predictions back to each image's original size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

from mae.models.dense.vitdet import ChannelLayerNorm, SimpleFeaturePyramid, vitdet_backbone_from_mae
from mae.models.mae import MaskedAutoencoderViT

ASPECT_RATIOS = (0.5, 1.0, 2.0)  # Detectron2's and torchvision's default anchor aspect ratios


class StrideAnchorGenerator(AnchorGenerator):
    """torchvision's anchor generator with each level's stride given, not divided out of integer sizes.

    Args:
        sizes: one anchor side per level (ViTDet at 1024 px: 32, 64, 128, 256, 512).
        aspect_ratios: height-over-width ratios at every level.
        strides: each level's stride in input pixels, possibly fractional.
    """

    def __init__(self, sizes: Sequence[float], aspect_ratios: Sequence[float], strides: Sequence[float]) -> None:
        if len(sizes) != len(strides):
            raise ValueError(f"anchor sizes={list(sizes)} need one per pyramid level ({len(strides)} levels)")
        super().__init__(tuple((float(size),) for size in sizes), (tuple(aspect_ratios),) * len(sizes))
        self.strides = tuple(float(stride) for stride in strides)

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        grid_sizes = [list(feature_map.shape[-2:]) for feature_map in feature_maps]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        strides = [[torch.tensor(stride, dtype=dtype, device=device)] * 2 for stride in self.strides]
        self.set_cell_anchors(dtype, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors] * len(image_list.image_sizes)


def exact_roi_align(
    featmap_names: Sequence[str], strides: Sequence[float], output_size: int, canonical_scale: float
) -> MultiScaleRoIAlign:
    """torchvision's multi-level RoIAlign with the levels' exact scales (``1 / stride``) set in advance, and FPN's
    level rule: a box of side ``s`` goes to level ``floor(4 + log2(s / canonical_scale))``, clamped to the levels
    (``canonical_scale`` 224 at ViTDet's patch 16; scale it with the stride for other patches)."""
    pooler = MultiScaleRoIAlign(list(featmap_names), output_size, sampling_ratio=0, canonical_scale=canonical_scale)
    k_min = int(featmap_names[0].lstrip("p"))
    pooler.scales = [1.0 / stride for stride in strides]
    pooler.map_levels = LevelMapper(k_min, k_min + len(strides) - 1, canonical_scale=canonical_scale)
    return pooler


def detector_from_mae(
    mae: MaskedAutoencoderViT,
    num_classes: int,
    image_size: int,
    drop_path_rate: float,
    window_size: int,
    global_blocks: Sequence[int],
    rel_pos: bool,
    out_channels: int,
    scale_factors: Sequence[float],
    anchor_sizes: Sequence[float],
    canonical_scale: float,
    rpn_conv_depth: int,
    box_convs: Sequence[int],
    box_fc: Sequence[int],
    mask_convs: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    detector_settings: dict,
) -> MaskRCNN:
    """ViTDet's Mask R-CNN on ``mae``'s encoder (counterpart of ``segmenter_from_mae``); ViTDet's ViT-B values in
    brackets.

    Args:
        mae: the pre-trained model whose encoder becomes the backbone.
        num_classes: object classes, without the background [80].
        image_size: the square training size, and the side evaluation images are resized and padded to [1024].
        drop_path_rate: stochastic depth of the last block [0.1].
        window_size: attention window side in patches, 0 for none [14].
        global_blocks: blocks that attend globally [2, 5, 8, 11].
        rel_pos: decomposed relative position embeddings, zero-initialised [on].
        out_channels: the pyramid's channels [256].
        scale_factors: the pyramid's rescales of the last map [4, 2, 1, 0.5].
        anchor_sizes: one anchor side per level, extra level included [32, 64, 128, 256, 512].
        canonical_scale: box side that maps to level 4 in RoI pooling [224].
        rpn_conv_depth: 3x3 convolutions in the RPN head [2].
        box_convs, box_fc: the box head's convolution and fully connected widths [256 x 4], [1024].
        mask_convs: the mask head's convolution widths [256 x 4].
        mean, std: normalisation of [0, 1] pixels (the pre-training's).
        detector_settings: torchvision ``MaskRCNN`` keyword arguments for the RPN and RoI sampling and the test
            thresholds (``rpn_pre_nms_top_n_train``, ``box_batch_size_per_image``, ``box_score_thresh``, ...).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be at least 1")
    if image_size % mae.patch_size:
        raise ValueError(f"image_size={image_size} is not divisible by the patch size {mae.patch_size}")
    backbone = vitdet_backbone_from_mae(mae, image_size, drop_path_rate, window_size, global_blocks, rel_pos)
    pyramid = SimpleFeaturePyramid(backbone, out_channels, scale_factors, extra_level=True)
    names, strides = list(pyramid.strides), list(pyramid.strides.values())
    anchors = StrideAnchorGenerator(anchor_sizes, ASPECT_RATIOS, strides)
    rpn_head = RPNHead(out_channels, anchors.num_anchors_per_location()[0], conv_depth=rpn_conv_depth)
    # The extra level serves proposals only, as in Detectron2 and torchvision.
    box_pool = exact_roi_align(names[:-1], strides[:-1], 7, canonical_scale)
    mask_pool = exact_roi_align(names[:-1], strides[:-1], 14, canonical_scale)
    box_head = FastRCNNConvFCHead((out_channels, 7, 7), list(box_convs), list(box_fc), norm_layer=ChannelLayerNorm)
    mask_head = MaskRCNNHeads(out_channels, list(mask_convs), 1, norm_layer=ChannelLayerNorm)
    return MaskRCNN(
        pyramid,
        min_size=image_size,
        max_size=image_size,
        image_mean=list(mean),
        image_std=list(std),
        size_divisible=image_size,
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        box_roi_pool=box_pool,
        box_head=box_head,
        # Given, because torchvision's defaults assume 1024 and 256 input widths.
        # torchvision counts the background as a class.
        box_predictor=FastRCNNPredictor(box_fc[-1], num_classes + 1),
        mask_roi_pool=mask_pool,
        mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(mask_convs[-1], mask_convs[-1], num_classes + 1),
        **detector_settings,
    )
