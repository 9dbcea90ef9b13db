"""Dense prediction on the MAE encoder: the ViT as a feature-map backbone, the feature pyramid, segmentation heads,
the segmenter and its builder, and sliding-window inference, following MMSegmentation's MAE UperNet recipe."""

from mae.models.dense.backbone import (
    FeatureShape,
    RelativePositionAttention,
    ViTBackbone,
    resized_encoder_state,
    vit_backbone_from_mae,
)
from mae.models.dense.heads import ConvBNReLU, DecodeHead, FCNHead, PyramidPoolingModule, UPerHead
from mae.models.dense.inference import slide_inference, window_spans
from mae.models.dense.neck import FeatureToPyramid
from mae.models.dense.segmenter import Segmenter, SegmenterOutput, segmenter_from_mae

__all__ = [
    "ConvBNReLU",
    "DecodeHead",
    "FCNHead",
    "FeatureShape",
    "FeatureToPyramid",
    "PyramidPoolingModule",
    "RelativePositionAttention",
    "Segmenter",
    "SegmenterOutput",
    "UPerHead",
    "ViTBackbone",
    "resized_encoder_state",
    "segmenter_from_mae",
    "slide_inference",
    "vit_backbone_from_mae",
    "window_spans",
]
