"""Data for dense tasks: semantic segmentation in ADE20K's layout (ADE20K, the Fashion-MNIST scenes of
:mod:`mae.data.dense.scenes`), read by :class:`SegmentationFolder`, augmented as MMSegmentation's recipe and served
by :class:`SegmentationDataModule`."""

from mae.data.dense.ade20k import IGNORE_INDEX, SegmentationFolder
from mae.data.dense.datamodule import SegmentationDataModule
from mae.data.dense.transforms import Paired, SegmentationEvalTransform, SegmentationTrainTransform

__all__ = [
    "IGNORE_INDEX",
    "Paired",
    "SegmentationDataModule",
    "SegmentationEvalTransform",
    "SegmentationFolder",
    "SegmentationTrainTransform",
]
