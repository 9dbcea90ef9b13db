"""The W&B run of a job: its logger, built from ``conf/logger/wandb.yaml`` (name, group, checked settings), and
its end."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from mae.data.errors import one_line
from mae.runs.failures import RunFailure

log = logging.getLogger(__name__)

OFFLINE_MODES = ("offline", "dryrun", "disabled")
"""``WANDB_MODE`` values under which nothing reaches the W&B server, whatever the logger's ``offline`` flag."""
MODES = ("auto", "online", "offline")
"""``logger.wandb.mode``: ``auto`` (online when logged in; a server that does not answer within ``init_timeout``
seconds leaves the run offline), ``online`` (the server must answer, else the run stops) or ``offline``."""


class WandbUnreachableError(RunFailure):
    """``logger.wandb.mode=online`` and the W&B run could not start online (no answer within the wait, a refused
    key): one line, the run stops (exit 2)."""


class BoundedWandbLogger(WandbLogger):
    """Lightning's :class:`WandbLogger` whose run start waits at most ``init_timeout`` seconds for the W&B server
    (wandb's own default, 90 s plus retries, is how long a compute node without network hung before a traceback).
    Without an answer it goes on offline with one logged line, or raises :class:`WandbUnreachableError` when
    ``require_online``."""

    def __init__(self, *, init_timeout: float, require_online: bool, **kwargs: Any) -> None:
        import wandb

        super().__init__(settings=wandb.Settings(init_timeout=init_timeout), **kwargs)
        self._init_timeout = init_timeout
        self._require_online = require_online

    @property
    def experiment(self) -> Any:
        try:
            return super().experiment
        except (TimeoutError, _wandb_comm_error()) as error:
            if self._offline:
                raise
            reason = one_line(error) or type(error).__name__
            if self._require_online:
                raise WandbUnreachableError(
                    f"logger.wandb.mode=online but the W&B run did not start online within {self._init_timeout:g} s "
                    f"({reason}); check the network, or set logger.wandb.mode=auto to log offline and "
                    "`wandb sync` later"
                ) from error
            log.warning(
                "the W&B run did not start online within %g s (%s): this run logs offline to %s; upload "
                "it later with "
                "`wandb sync`",
                self._init_timeout,
                reason,
                self.save_dir,
            )
            self._offline = True
            self._wandb_init["mode"] = "offline"
            self._experiment = None
            return super().experiment


def _wandb_comm_error() -> type[Exception]:
    """What ``wandb.init`` raises when the server does not answer (its init timeout included)."""
    from wandb.errors import CommError

    return CommError


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
        raise ValueError(
            f"logger.wandb.log_model={log_model!r} must be false, true (checkpoints at the end) "
            "or 'all' (every checkpoint as it is written)"
        )
    if log_model and (offline or os.environ.get("WANDB_MODE") in OFFLINE_MODES):
        shown = "true" if log_model is True else log_model  # as the user wrote it in the override
        raise ValueError(
            f"logger.wandb.log_model={shown} uploads checkpoints as W&B artifacts, which needs W&B "
            "online (`wandb login` or WANDB_API_KEY) and this run is offline; set "
            "logger.wandb.log_model=false (the checkpoints stay in <run dir>/checkpoints)"
        )


def wandb_logger(
    *,
    name: str,
    group: str | None,
    overrides: str,
    offline: bool,
    log_model: Any = False,
    mode: str = "auto",
    init_timeout: float = 30.0,
    **kwargs: Any,
) -> WandbLogger:
    """Lightning's :class:`WandbLogger` with this project's run name (see :func:`run_name`), checked settings and a
    bounded wait for the server (:class:`BoundedWandbLogger`).

    Each logger built here gets a W&B run of its own: a run still open in this process (an earlier stage of the same
    job, such as the pre-training before an ablation's linear probe) is finished first, where Lightning would log
    into it.

    Args:
        name: base run name (the task).
        group: W&B group, the sweep's name (``None`` outside sweeps).
        overrides: the job's Hydra overrides as one string, which name the runs of a sweep apart.
        offline: write the run locally only (``wandb sync`` uploads it later).
        log_model: ``False``, ``True`` or ``"all"``: checkpoints as artifacts (online runs only).
        mode: one of :data:`MODES`.
        init_timeout: seconds to wait for the W&B server when the run starts online.
        **kwargs: the rest of :class:`WandbLogger`'s and ``wandb.init``'s arguments.
    """
    if mode not in MODES:
        raise ValueError(f"logger.wandb.mode={mode!r} must be one of {', '.join(MODES)}")
    if isinstance(init_timeout, bool) or not isinstance(init_timeout, (int, float)) or init_timeout <= 0:
        raise ValueError(f"logger.wandb.init_timeout={init_timeout!r} must be a positive number of seconds")
    offline = offline or mode == "offline"
    if mode == "online" and (offline or os.environ.get("WANDB_MODE") in OFFLINE_MODES):
        raise ValueError(
            "logger.wandb.mode=online needs W&B online (`wandb login` or WANDB_API_KEY, and no "
            "WANDB_MODE=offline); set logger.wandb.mode=auto to log offline"
        )
    check_log_model(log_model, offline)
    finish_wandb_run()
    return BoundedWandbLogger(
        name=run_name(name, group, overrides),
        group=group,
        offline=offline,
        log_model=log_model,
        init_timeout=float(init_timeout),
        require_online=mode == "online",
        **kwargs,
    )


def finish_wandb_run(exit_code: int = 0) -> None:
    """Finish the W&B run this process has open, if any, so that the next job or stage starts its own.

    Lightning never finishes the run, and its ``WandbLogger`` reuses an open one: without this, the jobs of a Hydra
    multirun (one process) would all log into the first job's run.
    """
    wandb = sys.modules.get("wandb")  # not imported: no run was ever started, and importing it costs a second
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=exit_code)
