"""Training: LightningModules for pre-training, fine-tuning and linear probing, and the reference's rules."""

from mae.training.finetune_module import FinetuneModule
from mae.training.linprobe_module import LinearProbeModule
from mae.training.pretrain_module import MAEPretrainModule

__all__ = ["FinetuneModule", "LinearProbeModule", "MAEPretrainModule"]
