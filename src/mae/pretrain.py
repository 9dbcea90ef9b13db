"""The pre-training job: build everything from a composed config (failing early on bad input), then fit."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mae.checkpoint import check_resume_checkpoint
from mae.config import validate_schedule
from mae.data.errors import CorruptDataError
from mae.training import MAEPretrainModule

log = logging.getLogger(__name__)


class SetupError(Exception):
    """Bad input found while building the run; ``str()`` is a one-line message for the user."""


def data_error_message(error: CorruptDataError) -> str:
    """The one line naming the bad file, also when a DataLoader worker re-raised it with its traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1].removeprefix(f"{type(error).__name__}: ") if lines else type(error).__name__


@dataclass
class PretrainRun:
    datamodule: L.LightningDataModule
    module: MAEPretrainModule
    trainer: L.Trainer


def _instantiate(node: DictConfig, **kwargs):
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        # Hydra wraps the constructor's own error in a multi-line message; the cause is what the user needs.
        raise (error.__cause__ or error) from error


def build(cfg: DictConfig) -> PretrainRun:
    """Instantiate data, model, module, callbacks, loggers and trainer; nothing is trained or written yet."""
    try:
        validate_schedule(cfg.schedule)
        datamodule = _instantiate(cfg.data)
        model = _instantiate(cfg.model)
        schedule = cfg.schedule
        module = MAEPretrainModule(
            model, blr=schedule.blr, lr=schedule.lr, min_lr=schedule.min_lr, weight_decay=schedule.weight_decay,
            betas=tuple(schedule.betas), warmup_epochs=schedule.warmup_epochs, epochs=schedule.epochs,
            seed=cfg.seed, compile=cfg.compile,
        )
        if cfg.ckpt_path is not None:
            check_resume_checkpoint(cfg.ckpt_path, module)
        # A group entry set to null (e.g. `callbacks.knn_evaluation=null`) switches that piece off.
        callbacks = [_instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node is not None]
        loggers = [_instantiate(node) for node in (cfg.get("logger") or {}).values() if node is not None]
        trainer = _instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    except (ValueError, FileNotFoundError, TypeError) as error:
        raise SetupError(str(error).strip().replace("\n", " ")) from error
    return PretrainRun(datamodule, module, trainer)


def pretrain(cfg: DictConfig) -> dict:
    """Run MAE pre-training as configured; returns what the run wrote to ``results.json``."""
    L.seed_everything(cfg.seed, workers=True)
    run = build(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if run.trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    try:
        run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=cfg.ckpt_path)
    except CorruptDataError as error:
        # Checkpoints written so far stay; fix or remove the file and resume from last.ckpt.
        raise SetupError(f"{data_error_message(error)} (checkpoints so far are in {output_dir / 'checkpoints'})") from error
    results_path = output_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if run.trainer.is_global_zero:
        results.update(_training_summary(run))
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        _point_latest_at(output_dir, Path(cfg.paths.log_dir) / cfg.task_name / "latest")
        log.info("Run directory: %s", output_dir)
    return results


def _training_summary(run: PretrainRun) -> dict:
    metrics = {key: float(value) for key, value in run.trainer.callback_metrics.items() if value.numel() == 1}
    return {
        "train_loss_last_epoch": metrics.get("train/loss_epoch"),
        "val_loss": metrics.get("val/loss"),
        "epochs": run.trainer.current_epoch,
        "optimizer_steps": run.trainer.global_step,
        "effective_batch_size": run.module.effective_batch_size,
        "peak_lr": run.module.peak_lr,
    }


def _point_latest_at(output_dir: Path, link: Path) -> None:
    """Keep ``<log_dir>/<task>/latest`` pointing at the newest finished run (for fine-tuning defaults)."""
    if output_dir.parent.parent != link.parent:
        return  # a run directory outside the usual layout: leave no link
    tmp = link.with_name(".latest.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(output_dir.relative_to(link.parent), target_is_directory=True)
    tmp.replace(link)
