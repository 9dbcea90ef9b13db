"""Configs that come with a file (a checkpoint's stored run config, the ``config_resolved.yaml`` beside it) are
data, not code: they may only rebuild this project's own models and modules; and the input normalisation such
files state (:func:`stored_normalization`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mae.model_files.checkpoint import CheckpointError, UnsafeCheckpointError, load_checkpoint_file
from mae.runs.failures import one_line
from mae.runs.run_directory import config_file, run_dir_of_checkpoint

RUN_CONFIG_KEY = "mae_run_config"
"""Checkpoint entry holding the resolved ``model`` and ``module`` nodes, the task name and ``data`` (image size,
channels, mean and std), written by :class:`mae.callbacks.run_config.RunConfigInCheckpoint`."""

MODEL_TARGETS = frozenset(
    {
        "mae.models.MaskedAutoencoderViT",
        "mae.models.mae_vit_base_patch16",
        "mae.models.mae_vit_large_patch16",
        "mae.models.mae_vit_huge_patch14",
        "mae.models.mae_vit_tiny_patch4",
        "mae.models.mae_vit_tiny_patch7",
        "mae.models.mae_vit_small_patch4",
    }
)
"""What a stored ``model`` node may build: the MAE class and its presets."""

MODULE_TARGETS = frozenset(
    {
        "mae.training.MAEPretrainModule",
        "mae.training.FinetuneModule.from_encoder",
        "mae.training.LinearProbeModule",
        "mae.training.SegmentationModule.from_encoder",
        "mae.training.DetectionModule.from_encoder",
    }
)
"""What a stored ``module`` node may build: the task modules."""


def read_config_file(path: Path) -> Any:
    """A config that comes with a model file (``config_resolved.yaml``, an export's ``.json``, a ``transformers``
    directory's ``preprocessor_config.json``), read as data: JSON, or YAML's safe subset (OmegaConf's loader
    refuses ``!!python/...`` tags, which name objects to build). A damaged or hostile file is one
    :class:`CheckpointError` line naming it, not a parser's traceback."""
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text(encoding="utf-8"))
        return OmegaConf.load(path)
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as error:
        raise CheckpointError(f"cannot read {path}: {one_line(error)}") from error


def trusted_node(node: Any, allowed: frozenset[str], source: str) -> DictConfig:
    """``node`` as a config to instantiate, when its ``_target_`` is in ``allowed`` and nothing inside it names
    another target; otherwise one line naming the target and ``source``, before anything is imported or built."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, Mapping) or node.get("_target_") not in allowed:
        target = node.get("_target_") if isinstance(node, Mapping) else type(node).__name__
        raise UnsafeCheckpointError(
            f"{source} asks to build {target!r}, which is not one of this project's "
            f"models or modules (allowed: {', '.join(sorted(allowed))})"
        )
    nested = _nested_targets({key: value for key, value in node.items() if key != "_target_"})
    if nested:
        raise UnsafeCheckpointError(
            f"{source} asks to build {nested[0]!r} inside {node['_target_']}; stored configs may only hold plain values"
        )
    return OmegaConf.create(dict(node))


def _nested_targets(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        found = [str(value["_target_"])] if "_target_" in value else []
        return found + [target for item in value.values() for target in _nested_targets(item)]
    if isinstance(value, (list, tuple)):
        return [target for item in value for target in _nested_targets(item)]
    return []


PREPROCESSOR_CONFIG = "preprocessor_config.json"
"""Where a ``transformers`` model directory states its input normalisation (``image_mean``, ``image_std``)."""


@dataclass(frozen=True)
class StoredNormalization:
    """The per-channel normalisation a model was trained with, as a file states it."""

    mean: list[float]
    std: list[float]
    source: str
    """Where it was found, for the line that says which numbers a run uses."""


def _numbers(value: Any) -> list[float] | None:
    if (
        isinstance(value, (list, tuple, ListConfig))
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return [float(v) for v in value]
    return None


def _from_mapping(node: Any, mean_key: str, std_key: str, source: str) -> StoredNormalization | None:
    if not isinstance(node, Mapping):
        return None
    mean, std = _numbers(node.get(mean_key)), _numbers(node.get(std_key))
    return StoredNormalization(mean, std, source) if mean and std else None


def stored_normalization(path: str | Path) -> StoredNormalization | None:
    """The normalisation stored with a model file, or None when it states none (a reference ``.pth``).

    Read from a checkpoint's stored run config (``data.mean``/``data.std``), else the run's
    ``config_resolved.yaml`` two folders up; an export's ``.json`` (``normalization``); a ``transformers``
    directory's ``preprocessor_config.json`` (``image_mean``/``image_std``). Only numbers are read.
    """

    path = Path(path)
    if path.is_dir():
        preprocessor = path / PREPROCESSOR_CONFIG
        if not preprocessor.is_file():
            return None
        return _from_mapping(read_config_file(preprocessor), "image_mean", "image_std", str(preprocessor))
    if path.suffix == ".safetensors":
        sidecar = path.with_suffix(".json")
        if not sidecar.is_file():
            return None
        return _from_mapping(_get(read_config_file(sidecar), "normalization"), "mean", "std", str(sidecar))
    if not path.is_file():
        return None
    checkpoint = load_checkpoint_file(path)
    stored = checkpoint.get(RUN_CONFIG_KEY) if isinstance(checkpoint, Mapping) else None
    if isinstance(stored, Mapping) and (found := _from_mapping(stored.get("data"), "mean", "std", str(path))):
        return found
    run_config = config_file(run_dir_of_checkpoint(path))
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint and run_config.is_file():
        return _from_mapping(_get(read_config_file(run_config), "data"), "mean", "std", str(run_config))
    return None


def _get(content: Any, key: str) -> Any:
    """``content[key]`` of a config file's top level, None when the file holds no mapping (a list, a number)."""
    return content.get(key) if isinstance(content, (Mapping, DictConfig)) else None
