"""The W&B run of a job: its logger, built from ``conf/logger/wandb.yaml`` (name, group, checked settings), and
its end."""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch.loggers import WandbLogger

OFFLINE_MODES = ("offline", "dryrun", "disabled")
"""``WANDB_MODE`` values under which nothing reaches the W&B server, whatever the logger's ``offline`` flag."""


def run_name(name: str, group: str | None, overrides: str) -> str:
    """The W&B display name: ``name`` alone, or within a sweep's group ``"<name> <overrides>"``.

    ``overrides`` is Hydra's ``override_dirname`` (e.g. ``model.mask_ratio=0.5,model.decoder_depth=1``), the one
    thing that differs between the runs of a sweep; outside a sweep the run config says everything and the name stays
    short.
    """
    return f"{name} {overrides}" if group and overrides else name


def check_log_model(log_model: Any, offline: bool) -> None:
    """Checkpoint artifacts are uploads: refuse them, with one line, for a run that cannot upload.

    Lightning's own refusal comes later and on several lines; this one comes before anything is built or trained.
    """
    if not (isinstance(log_model, bool) or log_model == "all"):
        raise ValueError(f"logger.wandb.log_model={log_model!r} must be false, true (checkpoints at the end) "
                         "or 'all' (every checkpoint as it is written)")
    if log_model and (offline or os.environ.get("WANDB_MODE") in OFFLINE_MODES):
        shown = "true" if log_model is True else log_model  # as the user wrote it in the override
        raise ValueError(f"logger.wandb.log_model={shown} uploads checkpoints as W&B artifacts, which needs W&B "
                         "online (`wandb login` or WANDB_API_KEY) and this run is offline; set "
                         "logger.wandb.log_model=false (the checkpoints stay in <run dir>/checkpoints)")


def wandb_logger(*, name: str, group: str | None, overrides: str, offline: bool, log_model: Any = False,
                 **kwargs: Any) -> WandbLogger:
    """Lightning's :class:`WandbLogger` with this project's run name (see :func:`run_name`) and checked settings.

    Each logger built here gets a W&B run of its own: a run still open in this process (an earlier stage of the same
    job, such as the pre-training before an ablation's linear probe) is finished first, where Lightning would log
    into it.

    Args:
        name: base run name (the task).
        group: W&B group, the sweep's name (``None`` outside sweeps).
        overrides: the job's Hydra overrides as one string, which name the runs of a sweep apart.
        offline: write the run locally only (``wandb sync`` uploads it later).
        log_model: ``False``, ``True`` or ``"all"``: checkpoints as artifacts (online runs only).
        **kwargs: the rest of :class:`WandbLogger`'s and ``wandb.init``'s arguments.
    """
    check_log_model(log_model, offline)
    finish_wandb_run()
    return WandbLogger(name=run_name(name, group, overrides), group=group, offline=offline, log_model=log_model,
                       **kwargs)


def finish_wandb_run(exit_code: int = 0) -> None:
    """Finish the W&B run this process has open, if any, so that the next job or stage starts its own.

    Lightning never finishes the run, and its ``WandbLogger`` reuses an open one: without this, the jobs of a Hydra
    multirun (one process) would all log into the first job's run.
    """
    wandb = sys.modules.get("wandb")  # not imported: no run was ever started, and importing it costs a second
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=exit_code)
