"""Quick evaluation of a frozen MAE encoder: weighted kNN on its features."""

from mae.evaluation.knn import (
    POOLS,
    evaluate_encoder,
    extract_features,
    knn_predict,
    knn_top1,
    pool_tokens,
    random_init_model,
)

__all__ = [
    "POOLS",
    "evaluate_encoder",
    "extract_features",
    "knn_predict",
    "knn_top1",
    "pool_tokens",
    "random_init_model",
]
