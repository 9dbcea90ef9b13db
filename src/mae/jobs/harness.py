"""What every job (pre-training, fine-tuning, linear probing, evaluation) does around its own work: instantiate
config nodes with one-line errors, build data, module and trainer from the task's nodes, fit, and write the run
directory's files."""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from mae.callbacks.preemption import Preempted, PreemptionCheckpoint
from mae.callbacks.tracking import LogResolvedConfig
from mae.callbacks.wandb_run import finish_wandb_run
from mae.data.errors import CorruptDataError, TooFewImagesError
from mae.data.transforms import AUTO
from mae.model_files.checkpoint import check_resume_checkpoint
from mae.model_files.stored_config import stored_normalization
from mae.runs.atomic_files import write_text_atomically
from mae.runs.config import instantiate_node, process_batch_size, validate_schedule
from mae.runs.optional import MissingExtraError
from mae.runs.provenance import PROVENANCE_KEY, content_digest, provenance
from mae.runs.run_directory import (
    BAD_IMAGES_FILE,
    CHECKPOINT_DIR,
    RESULTS_FILE,
    bad_images,
    check_writable,
    config_file,
    latest_link,
    merge_json,
    read_json_object,
    run_dir_of_checkpoint,
)
from mae.training.scheduled import ScheduledModule

log = logging.getLogger(__name__)

# Lightning reports a bad trainer value (devices=0, an accelerator this machine lacks) as MisconfigurationException.
SETUP_ERRORS = (ValueError, FileNotFoundError, TypeError, MisconfigurationException)
"""What constructors raise for bad input; turned into :class:`SetupError` before any work starts."""


class SetupError(Exception):
    """Bad input found while building or running a job; ``str()`` is a one-line message for the user."""


FLOAT32_MATMUL_PRECISIONS = ("highest", "high", "medium")
"""The values of ``float32_matmul_precision`` (runtime group), as ``torch.set_float32_matmul_precision`` takes them."""


def set_float32_matmul_precision(cfg: DictConfig) -> None:
    """``torch.set_float32_matmul_precision(cfg.float32_matmul_precision)``, before a job builds anything; another
    value is a :class:`SetupError`. A config without the key (a run config written before it existed) leaves
    torch's setting as it is."""
    value = cfg.get("float32_matmul_precision")
    if value is None:
        return
    if value not in FLOAT32_MATMUL_PRECISIONS:
        raise SetupError(
            f"float32_matmul_precision={value} must be one of {', '.join(FLOAT32_MATMUL_PRECISIONS)} "
            "(highest: full float32 matmuls, the reference's numbers)"
        )
    torch.set_float32_matmul_precision(value)


SEED_RANGE = (0, 2**32 - 1)
"""The seeds every generator the runs use accepts (numpy's range; Lightning's ``seed_everything``)."""


def check_seed(cfg: DictConfig) -> None:
    """``cfg.seed``, where the config has one, is an integer in :data:`SEED_RANGE`; else a :class:`SetupError`."""
    if "seed" not in cfg:
        return
    seed, (low, high) = cfg.seed, SEED_RANGE
    if isinstance(seed, bool) or not isinstance(seed, int) or not low <= seed <= high:
        raise SetupError(f"seed={seed!r} must be an integer from {low} to {high}")


def run_job(job: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """The entry points' wrapper: bad input ends the program with ``error: <one line>`` and exit code 2, a job
    stopped by SIGTERM or SIGUSR1 with ``interrupted: <one line>`` and ``128 + signal`` (see
    :mod:`mae.callbacks.preemption`); the job's W&B run, if any, ends with the job (see
    :func:`finish_wandb_run`), marked failed when the job failed. Returns what the job returns (a sweeper such as
    Optuna reads its objective from it)."""
    exit_code = 1
    try:
        from mae.runs.run_lock import owned_run_directory  # one run per directory; a full disk is one line

        check_seed(cfg)
        with owned_run_directory(cfg):
            result = job(cfg)
        exit_code = 0
        return result
    except (SetupError, MissingExtraError) as error:  # a missing extra found after the setup checks too
        exit_code = 2
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except Preempted as stop:
        exit_code = stop.exit_code
        print(f"interrupted: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
    except SIGTERMException:  # outside training (evaluation): nothing to save, but never a success
        exit_code = 128 + signal.SIGTERM
        print("interrupted: stopped by SIGTERM outside training", file=sys.stderr)
        sys.exit(exit_code)
    finally:
        finish_wandb_run(exit_code)


def one_line_setup_error(error: Exception) -> SetupError:
    return SetupError(str(error).strip().replace("\n", " "))


def data_error_message(error: CorruptDataError) -> str:
    """The one line naming the bad file, also when a DataLoader worker re-raised it with its traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1].removeprefix(f"{type(error).__name__}: ") if lines else type(error).__name__


def build_trainer(cfg: DictConfig, extra_callbacks: list[L.Callback] | None = None) -> L.Trainer:
    """The trainer with the configured callbacks and loggers; a group entry set to null (e.g.
    ``callbacks.knn_evaluation=null``) switches that piece off. With any logger, the whole resolved config is
    logged as the run's hyperparameters (:class:`LogResolvedConfig`)."""
    callbacks = [instantiate_node(node) for node in (cfg.get("callbacks") or {}).values() if node is not None]
    loggers = [instantiate_node(node) for node in (cfg.get("logger") or {}).values() if node is not None]
    callbacks += list(extra_callbacks or [])
    if loggers:
        callbacks.append(LogResolvedConfig(cfg))
    return instantiate_node(cfg.trainer, callbacks=callbacks, logger=loggers or False)


@dataclass
class TrainingRun:
    """What a training job fits: built from the config, nothing trained or written yet."""

    datamodule: L.LightningDataModule
    module: ScheduledModule
    trainer: L.Trainer


def build_training_run(
    cfg: DictConfig,
    model: Callable[[], Any],
    module_arguments: Callable[[L.LightningDataModule], dict[str, Any]] = lambda datamodule: {},
    extra_callbacks: Sequence[L.Callback] = (),
) -> TrainingRun:
    """The data module, the task's ``module`` node around ``model()`` (with ``module_arguments(datamodule)``, e.g.
    the number of classes), and the trainer; every constructor's bad-input error becomes one :class:`SetupError`
    before anything is trained or written, as does a resume checkpoint that does not fit the module. Sets the
    run's float32 matmul precision first (:func:`set_float32_matmul_precision`)."""
    set_float32_matmul_precision(cfg)
    try:
        check_writable(output_dir(cfg))
        validate_schedule(cfg.schedule)
        trainer = build_trainer(cfg, list(extra_callbacks))
        batch_size = process_batch_size(cfg.schedule, trainer.world_size)
        datamodule = instantiate_node(cfg.data, **({} if batch_size is None else {"batch_size": batch_size}))
        if getattr(datamodule, "image_loader", None) is not None:
            datamodule.image_loader.report_file = output_dir(cfg) / BAD_IMAGES_FILE
        prepare_data(cfg, datamodule)
        module = instantiate_node(cfg.module, model(), **module_arguments(datamodule))
        if cfg.ckpt_path is not None:
            check_resume_checkpoint(cfg.ckpt_path, module)
    except SETUP_ERRORS as error:
        raise one_line_setup_error(error) from error
    return TrainingRun(datamodule, module, trainer)


def prepare_data(cfg: DictConfig, datamodule: L.LightningDataModule) -> None:
    """Let the data module do what must precede the run (list files, measure ``mean: auto``; see
    ``ImageDataModule.prepare_run``) and put the numbers it measured into ``cfg``, so that the config written to
    the run directory and the checkpoints hold them. ``mean: auto`` takes the numbers of the file the run starts
    from (``ckpt_path``, else ``pretrained``) when it stores them; a resumed run reads what its first attempt
    kept in its run directory."""
    prepare_run = getattr(datamodule, "prepare_run", None)
    if prepare_run is None:
        return
    start = cfg.get("ckpt_path") or cfg.get("pretrained")
    stored = stored_normalization(start) if start is not None and Path(start).exists() else None
    if stored is not None and datamodule.mean is not None and not _same_numbers(stored, datamodule):
        log.warning(
            "%s was trained on images normalised with mean %s and std %s; this run normalises with %s and "
            "%s (data.mean=auto data.std=auto takes the file's)",
            start,
            stored.mean,
            stored.std,
            list(datamodule.mean),
            list(datamodule.std),
        )
    resumed_run_dir = None if cfg.get("ckpt_path") is None else run_dir_of_checkpoint(cfg.ckpt_path)
    use_stored = stored is not None and datamodule.mean is None
    prepare_run((stored.mean, stored.std) if use_stored else None, stored.source if use_stored else "", resumed_run_dir)
    if cfg.data.get("mean") == AUTO or cfg.data.get("std") == AUTO:
        with open_dict(cfg):
            cfg.data.update(datamodule.resolved_settings())


def _same_numbers(stored, datamodule) -> bool:
    pairs = list(zip(stored.mean + stored.std, list(datamodule.mean) + list(datamodule.std)))
    return len(stored.mean) == len(datamodule.mean) and all(abs(a - b) < 1e-4 for a, b in pairs)


def data_for_model_file(data_node: DictConfig, path: str | Path, use_stored: bool = True) -> L.LightningDataModule:
    """The data group's module for looking at a model file (reconstructions, the demo): normalised with the numbers
    the file stores (:func:`~mae.model_files.stored_config.stored_normalization`, e.g. a run's ``mean: auto``) when it stores
    them for the data's channels and ``use_stored``, else with the group's own."""
    stored = stored_normalization(path) if use_stored else None
    if stored is not None and len(stored.mean) == int(data_node.in_chans):
        log.info("normalising images with the mean %s and std %s stored in %s", stored.mean, stored.std, stored.source)
        return instantiate_node(data_node, mean=stored.mean, std=stored.std)
    return instantiate_node(data_node)


def training_record(run: TrainingRun, train_seconds: float) -> dict[str, Any]:
    """How much was trained, at which batch and lr, in how long: every training job's ``results.json`` has it."""
    return {
        "status": "finished",  # replaces "interrupted" when a preempted run was resumed to its end
        "epochs": run.trainer.current_epoch,
        "optimizer_steps": run.trainer.global_step,
        "effective_batch_size": run.module.effective_batch_size,
        "peak_lr": run.module.peak_lr,
        "train_seconds": round(train_seconds, 1),
        "bad_images": len(bad_images(Path(run.trainer.default_root_dir))),
    }


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def writes_files(trainer: L.Trainer | None) -> bool:
    """Whether this process writes the run directory's files: rank 0 of a trainer's processes, or the only
    process of a job that trains nothing (``trainer`` None)."""
    return trainer is None or trainer.is_global_zero


def write_config(
    cfg: DictConfig, trainer: L.Trainer | None = None, datamodule: L.LightningDataModule | None = None
) -> None:
    """The resolved config, first thing in the run directory, and the files the data keeps there (rank 0 only;
    ``trainer`` None: a job of one process, which writes)."""
    if writes_files(trainer):
        write_text_atomically(config_file(output_dir(cfg)), OmegaConf.to_yaml(cfg, resolve=True))
        if datamodule is not None and hasattr(datamodule, "write_run_files"):
            datamodule.write_run_files(output_dir(cfg))


def merge_results(cfg: DictConfig, trainer: L.Trainer | None, results: dict) -> dict:
    """Merge ``results`` into the run's ``results.json`` (callbacks may have written to it) and return all of it.
    Rank 0 (or, ``trainer`` None, the one process of a job that trains nothing), which writes, also records where
    the results came from under ``provenance`` (commit, overrides, versions, machine, date:
    :func:`mae.runs.provenance.provenance`), replacing an earlier attempt's."""
    path = output_dir(cfg) / RESULTS_FILE
    if writes_files(trainer):
        return merge_json(path, {**results, PROVENANCE_KEY: provenance()})
    return {**read_json_object(path), **results}


def pretrained_record(cfg: DictConfig) -> dict[str, str | None]:
    """``pretrained``, the weights file (or exported folder) the run started from, and its SHA-256
    (:func:`mae.runs.provenance.content_digest`); both None for a run from random weights."""
    pretrained = cfg.get("pretrained")
    if pretrained is None:
        return {"pretrained": None, "pretrained_sha256": None}
    return {"pretrained": str(pretrained), "pretrained_sha256": content_digest(pretrained)}


def last_checkpoint_digest(trainer: L.Trainer) -> str | None:
    """SHA-256 of the run's ``last.ckpt``, what a run started from it records as ``pretrained_sha256``
    (:func:`pretrained_record`); None without a checkpoint callback or a last checkpoint."""
    path = getattr(trainer.checkpoint_callback, "last_model_path", "")
    return content_digest(path) if path else None


def point_latest_at(cfg: DictConfig, trainer: L.Trainer) -> None:
    """Keep ``<log_dir>/<task>/latest`` pointing at the newest finished run (the next task's default input)."""
    directory = output_dir(cfg)
    link = latest_link(cfg.paths.log_dir, cfg.task_name)
    if not trainer.is_global_zero or directory.parent.parent != link.parent:
        return  # not rank 0, or a run directory outside the usual layout: leave no link
    tmp = link.with_name(".latest.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(directory.relative_to(link.parent), target_is_directory=True)
    tmp.replace(link)
    log.info("Run directory: %s", directory)


def fit(cfg: DictConfig, trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule) -> float:
    """``trainer.fit`` (resuming from ``cfg.ckpt_path`` when set) with a corrupt file turned into a one-line error;
    returns the wall-clock seconds it took (end-of-training callbacks such as the kNN evaluation included)."""
    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    except SIGTERMException as stop:
        saved = [
            callback.preempted
            for callback in trainer.callbacks
            if isinstance(callback, PreemptionCheckpoint) and callback.preempted is not None
        ]
        raise (
            saved[0] if saved else Preempted(signal.SIGTERM, trainer.current_epoch, trainer.global_step, None)
        ) from stop
    except TooFewImagesError as error:  # raised when the training loader is built, before the first step
        raise SetupError(str(error)) from error
    except CorruptDataError as error:
        # Checkpoints written so far stay; fix or remove the file and resume from last.ckpt.
        raise SetupError(
            f"{data_error_message(error)} (checkpoints so far are in {output_dir(cfg) / CHECKPOINT_DIR})"
        ) from error
    return time.perf_counter() - started
