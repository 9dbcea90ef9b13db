"""Data for dense tasks: semantic segmentation in ADE20K's layout (ADE20K, the Fashion-MNIST scenes of
:mod:`mae.data.dense.scenes`), read by :class:`SegmentationFolder`, augmented as MMSegmentation's recipe and served
by :class:`SegmentationDataModule`; instance detection on COCO-format data, augmented by Detectron2's ViTDet
large-scale jitter and served by :class:`DetectionDataModule`."""

from mae.data.dense.ade20k import IGNORE_INDEX, SegmentationFolder
from mae.data.dense.datamodule import SegmentationDataModule
from mae.data.dense.detection_datamodule import DetectionDataModule, collate_detection
from mae.data.dense.detection_transforms import DetectionEvalTransform, LargeScaleJitter
from mae.data.dense.transforms import Paired, SegmentationEvalTransform, SegmentationTrainTransform

__all__ = [
    "IGNORE_INDEX",
    "DetectionDataModule",
    "DetectionEvalTransform",
    "LargeScaleJitter",
    "Paired",
    "SegmentationDataModule",
    "SegmentationEvalTransform",
    "SegmentationFolder",
    "SegmentationTrainTransform",
    "collate_detection",
]
