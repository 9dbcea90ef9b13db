"""Training: the pre-training LightningModule and the reference recipe's optimisation rules."""

from mae.training.pretrain_module import MAEPretrainModule

__all__ = ["MAEPretrainModule"]
