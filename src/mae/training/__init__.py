"""Training: LightningModules for pre-training, fine-tuning, linear probing, segmentation and detection, and the
reference's rules."""

from mae.training.detection_module import DetectionModule
from mae.training.finetune_module import FinetuneModule
from mae.training.linprobe_module import LinearProbeModule
from mae.training.pretrain_module import MAEPretrainModule
from mae.training.segmentation_module import SegmentationModule

__all__ = ["DetectionModule", "FinetuneModule", "LinearProbeModule", "MAEPretrainModule", "SegmentationModule"]
