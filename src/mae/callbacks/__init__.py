"""Lightning callbacks that look at what the MAE has learned (reconstruction grids, kNN accuracy, the validation loss per epoch), that
log the training throughput (images/s, FLOP/s, MFU) and that send the run's resolved config to the experiment loggers."""

from mae.callbacks.history import ValidationLossHistory
from mae.callbacks.knn import KNNEvaluationCallback
from mae.callbacks.reconstruction import ReconstructionGridCallback
from mae.callbacks.throughput import AnalyticThroughputMonitor
from mae.callbacks.tracking import LogResolvedConfig

__all__ = [
    "AnalyticThroughputMonitor",
    "KNNEvaluationCallback",
    "LogResolvedConfig",
    "ReconstructionGridCallback",
    "ValidationLossHistory",
]
