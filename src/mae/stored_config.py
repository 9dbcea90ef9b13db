"""Configs that come with a file (a checkpoint's stored run config, the ``config_resolved.yaml`` beside it) are
data, not code: they may only rebuild this project's own models and modules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mae.checkpoint import UnsafeCheckpointError

MODEL_TARGETS = frozenset({
    "mae.models.MaskedAutoencoderViT",
    "mae.models.mae_vit_base_patch16",
    "mae.models.mae_vit_large_patch16",
    "mae.models.mae_vit_huge_patch14",
    "mae.models.mae_vit_tiny_patch4",
    "mae.models.mae_vit_tiny_patch7",
    "mae.models.mae_vit_small_patch4",
})
"""What a stored ``model`` node may build: the MAE class and its presets."""

MODULE_TARGETS = frozenset({
    "mae.training.MAEPretrainModule",
    "mae.training.FinetuneModule.from_encoder",
    "mae.training.LinearProbeModule",
})
"""What a stored ``module`` node may build: the three task modules."""


def trusted_node(node: Any, allowed: frozenset[str], source: str) -> DictConfig:
    """``node`` as a config to instantiate, when its ``_target_`` is in ``allowed`` and nothing inside it names
    another target; otherwise one line naming the target and ``source``, before anything is imported or built."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, Mapping) or node.get("_target_") not in allowed:
        target = node.get("_target_") if isinstance(node, Mapping) else type(node).__name__
        raise UnsafeCheckpointError(f"{source} asks to build {target!r}, which is not one of this project's "
                                    f"models or modules (allowed: {', '.join(sorted(allowed))})")
    nested = _nested_targets({key: value for key, value in node.items() if key != "_target_"})
    if nested:
        raise UnsafeCheckpointError(f"{source} asks to build {nested[0]!r} inside {node['_target_']}; stored "
                                    "configs may only hold plain values")
    return OmegaConf.create(dict(node))


def _nested_targets(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        found = [str(value["_target_"])] if "_target_" in value else []
        return found + [target for item in value.values() for target in _nested_targets(item)]
    if isinstance(value, (list, tuple)):
        return [target for item in value for target in _nested_targets(item)]
    return []
