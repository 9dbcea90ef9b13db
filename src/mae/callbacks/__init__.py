"""Lightning callbacks that look at what the MAE has learned: reconstruction grids and kNN accuracy."""

from mae.callbacks.knn import KNNEvaluationCallback
from mae.callbacks.reconstruction import ReconstructionGridCallback

__all__ = ["KNNEvaluationCallback", "ReconstructionGridCallback"]
