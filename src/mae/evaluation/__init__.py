"""Quick evaluation of a frozen MAE encoder: weighted kNN on its features."""

from mae.evaluation.knn import (
    POOLS,
    eval_mode,
    evaluate_encoder,
    extract_features,
    knn_predict,
    knn_top1,
    pool_tokens,
    preserved_rng,
    random_init_copy,
)

__all__ = [
    "POOLS",
    "eval_mode",
    "evaluate_encoder",
    "extract_features",
    "knn_predict",
    "knn_top1",
    "pool_tokens",
    "preserved_rng",
    "random_init_copy",
]
