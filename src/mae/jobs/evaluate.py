"""The evaluation job (eval.py): a fine-tuned or linear-probe checkpoint on a data module's evaluation split.

This project's checkpoints carry the config that rebuilds their module (see
:class:`~mae.callbacks.run_config.RunConfigInCheckpoint`); other files (a reference fine-tuned ``.pth``, a timm
classifier state_dict) are read into the composed ``model`` and ``module`` nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from mae.data.dense import DetectionDataModule, SegmentationDataModule
from mae.evaluation.classifier import evaluate_classifier, summary_line
from mae.jobs import detect, segment
from mae.jobs.harness import (
    SETUP_ERRORS,
    SetupError,
    build_trainer,
    merge_results,
    one_line_setup_error,
    output_dir,
    prepare_data,
    set_float32_matmul_precision,
    write_config,
)
from mae.model_files.checkpoint import (
    CheckpointError,
    check_input_size,
    check_state_dict_shapes,
    load_checkpoint_file,
    model_state_dict,
)
from mae.model_files.stored_config import MODEL_TARGETS, MODULE_TARGETS, RUN_CONFIG_KEY, trusted_node
from mae.runs.config import instantiate_node
from mae.runs.run_directory import check_writable
from mae.training import DetectionModule, SegmentationModule

DENSE_TASKS = {
    "mae.training.SegmentationModule.from_encoder": ("segmentation", SegmentationDataModule, "task=segment"),
    "mae.training.DetectionModule.from_encoder": ("detection", DetectionDataModule, "task=detect"),
}
"""Module target of a dense task's checkpoint -> (its name, the data module it needs, the override that selects
its data)."""


def data_kind(datamodule: L.LightningDataModule) -> str:
    """What a data module serves, in the words of the mismatch error."""
    if isinstance(datamodule, SegmentationDataModule):
        return "label maps"
    if isinstance(datamodule, DetectionDataModule):
        return "instances (boxes and masks)"
    return "classes of whole images"


def module_config(checkpoint: Mapping, cfg: DictConfig) -> tuple[DictConfig, DictConfig, dict[str, torch.Tensor]]:
    """(model node, module node, module state_dict) for a checkpoint: its own config when it carries one."""
    stored = checkpoint.get(RUN_CONFIG_KEY)
    if stored is not None:
        source = f"the run config stored in {cfg.ckpt_path}"
        return (
            trusted_node(stored.get("model"), MODEL_TARGETS, source),
            trusted_node(stored.get("module"), MODULE_TARGETS, source),
            dict(checkpoint["state_dict"]),
        )
    # A classifier state_dict in timm's layout (reference fine-tuned .pth, timm file): the fine-tuning module's.
    state = {f"model.{key}": value for key, value in model_state_dict(checkpoint).items()}
    return cfg.model, cfg.module, state


def restore_module(cfg: DictConfig, datamodule: L.LightningDataModule) -> L.LightningModule:
    """The classification or segmentation module of ``cfg.ckpt_path`` with its weights, checked against the data
    first."""
    path = str(cfg.ckpt_path)
    checkpoint = load_checkpoint_file(path)
    model_cfg, module_cfg, state = module_config(checkpoint, cfg)
    dense = DENSE_TASKS.get(module_cfg.get("_target_"))
    wanted = None if dense is None else dense[1]
    if wanted is None and isinstance(datamodule, (SegmentationDataModule, DetectionDataModule)):
        raise CheckpointError(
            f"{path} is a classification checkpoint but data={cfg.data._target_} serves {data_kind(datamodule)}; "
            "evaluate it on a classification data group"
        )
    if wanted is not None and not isinstance(datamodule, wanted):
        raise CheckpointError(
            f"{path} is a {dense[0]} checkpoint but data={cfg.data._target_} serves {data_kind(datamodule)}; add "
            f"{dense[2]} (its data group is the Fashion-MNIST scenes; or data=ade20k / data=coco)"
        )
    if dense is None:
        check_input_size((model_cfg.img_size, model_cfg.in_chans), datamodule, path)
    module = instantiate_node(module_cfg, instantiate_node(model_cfg), num_classes=datamodule.num_classes)
    check_state_dict_shapes(state, module.state_dict(), f"checkpoint {path}")
    module.load_state_dict(state)
    return module


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.data``'s evaluation split; print and write ``results.json``."""
    L.seed_everything(cfg.seed, workers=True)
    set_float32_matmul_precision(cfg)
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise SetupError(
            "ckpt_path is required: python eval.py ckpt_path=<fine-tuning or linear-probe checkpoint> [data=...]"
        )
    try:
        check_writable(output_dir(cfg))
        if not Path(str(cfg.ckpt_path)).is_file():
            raise CheckpointError(
                f"ckpt_path={cfg.ckpt_path} does not exist; give a fine-tuning or linear-probe "
                "checkpoint, e.g. outputs/finetune/latest/checkpoints/last.ckpt"
            )
        datamodule = instantiate_node(cfg.data)
        prepare_data(cfg, datamodule)  # mean: auto takes the checkpoint's numbers
        module = restore_module(cfg, datamodule)
        trainer = build_trainer(cfg)
    except SETUP_ERRORS as error:
        raise one_line_setup_error(error) from error
    write_config(cfg, trainer)
    job = segment if isinstance(module, SegmentationModule) else detect if isinstance(module, DetectionModule) else None
    if job is not None:
        trainer.test(module, datamodule=datamodule, verbose=False)  # the data group's test split
        scores, line = job.scores_record(module.scores["test"]), job.test_summary
    else:
        scores, line = evaluate_classifier(trainer, module, datamodule), summary_line
    results = merge_results(cfg, trainer, {"checkpoint": str(cfg.ckpt_path), **scores})
    if trainer.is_global_zero:
        print(f"eval of {cfg.ckpt_path}: {line(results)}")
    return results
