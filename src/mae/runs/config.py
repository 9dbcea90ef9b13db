"""Hydra/OmegaConf glue: where the configs are, custom resolvers, instantiation with the constructor's own error,
and up-front validation of a composed config."""

from __future__ import annotations

import math
import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from mae.runs.optional import check_target, missing_extra

REPO_DIR = Path(__file__).resolve().parents[3]
"""The checkout this package lives in (an editable install): ``conf/`` and ``docs/`` are under it."""
CONF_DIR = REPO_DIR / "conf"


def wandb_logged_in() -> bool:
    """True when W&B credentials exist (env var or ``wandb login``'s netrc entry); never prompts."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return any("wandb" in host for host in netrc.netrc(path).hosts)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def launch_dir() -> str:
    """Where the program was started: Hydra's ``runtime.cwd`` inside a job, the current directory before any job has
    a Hydra config (a sweeper resolves ``hydra.sweep.dir``, which builds on ``paths``, at that point)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()


def register_resolvers() -> None:
    """Resolvers used by ``conf/``; safe to call more than once."""
    if not OmegaConf.has_resolver("launch_dir"):
        OmegaConf.register_new_resolver("launch_dir", launch_dir)
    if not OmegaConf.has_resolver("product"):  # e.g. the processes of a job: devices x nodes
        OmegaConf.register_new_resolver("product", lambda *factors: math.prod(int(factor) for factor in factors))
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver(
            "wandb_offline", lambda: os.environ.get("WANDB_MODE") != "online" and not wandb_logged_in()
        )


def compose_in_repo(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/<config_name>.yaml`` composed with ``overrides`` (Hydra's syntax) for a command that is not a Hydra
    app: ``paths.*`` resolve as if it ran from the checkout's root, and the ``hydra`` node is left out."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = str(REPO_DIR)
        cfg.hydra.runtime.output_dir = str(REPO_DIR)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def instantiate_node(node: DictConfig, *args: Any, **kwargs: Any) -> Any:
    """Hydra's ``instantiate`` raising the constructor's own error (a one-line ``ValueError`` naming the value), or
    the :class:`~mae.runs.optional.MissingExtraError` of an optional package the node needs."""
    check_target(node)
    try:
        return instantiate(node, *args, **kwargs)
    except InstantiationException as error:
        # Hydra wraps the constructor's own error in a multi-line message; the cause is what the user needs (a
        # missing extra may be wrapped twice: in the ImportError of the _target_'s module).
        raise (missing_extra(error) or error.__cause__ or error) from error


class ConfigError(ValueError):
    """A composed config value breaks a rule; the message names the key, the value and the rule."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_schedule(schedule: DictConfig) -> None:
    """Check the schedule group, which no object validates on construction (model and data check their own)."""
    _require(schedule.batch_size >= 1, f"schedule.batch_size={schedule.batch_size} must be at least 1")
    global_batch = schedule.get("global_batch_size")
    _require(
        global_batch is None or global_batch >= 1,
        f"schedule.global_batch_size={global_batch} must be at least 1, or null to use schedule.batch_size",
    )
    _require(
        schedule.accumulate_grad_batches >= 1,
        f"schedule.accumulate_grad_batches={schedule.accumulate_grad_batches} must be at least 1",
    )
    _require(
        schedule.clip_grad is None or schedule.clip_grad > 0,
        f"schedule.clip_grad={schedule.clip_grad} must be positive or null",
    )
    if "iters" in schedule:
        _validate_iteration_schedule(schedule)
    else:
        _validate_epoch_schedule(schedule)
    for key, allowed, rule in _SCHEDULE_RANGES:
        if schedule.get(key) is not None:
            _require(allowed(schedule[key]), f"schedule.{key}={schedule[key]} must be {rule}")
    for beta in schedule.get("betas") or ():
        _require(0 <= beta < 1, f"schedule.betas={list(schedule.betas)} must both be in [0, 1)")


def _validate_epoch_schedule(schedule: DictConfig) -> None:
    """Schedules counted in epochs, the lr from ``blr`` scaled by the batch (pre-training, classification)."""
    _require(schedule.epochs >= 1, f"schedule.epochs={schedule.epochs} must be at least 1")
    _require(
        0 <= schedule.warmup_epochs <= schedule.epochs,
        f"schedule.warmup_epochs={schedule.warmup_epochs} must be in [0, schedule.epochs={schedule.epochs}]",
    )
    _require(
        schedule.blr > 0 or (schedule.lr is not None and schedule.lr > 0),
        f"schedule.blr={schedule.blr} must be positive (or give schedule.lr)",
    )
    _require(schedule.min_lr >= 0, f"schedule.min_lr={schedule.min_lr} must be non-negative")
    # On one device; more devices only raise the peak (the lr scales with the global batch).
    peak = (
        schedule.lr
        if schedule.lr is not None
        else (schedule.blr * schedule.batch_size * schedule.accumulate_grad_batches / 256)
    )
    _require(
        schedule.min_lr <= peak,
        f"schedule.min_lr={schedule.min_lr} is above the peak lr {peak:.4g} (schedule.lr, or schedule.blr x "
        "batch_size x accumulate_grad_batches / 256); the cosine schedule decays from the peak to min_lr",
    )


def _validate_iteration_schedule(schedule: DictConfig) -> None:
    """Schedules counted in optimiser steps with an absolute lr (dense tasks, as MMSegmentation counts them)."""
    _require(schedule.iters >= 1, f"schedule.iters={schedule.iters} must be at least 1")
    _require(
        0 <= schedule.warmup_iters < schedule.iters,
        f"schedule.warmup_iters={schedule.warmup_iters} must be in [0, schedule.iters={schedule.iters})",
    )
    _require(schedule.lr > 0, f"schedule.lr={schedule.lr} must be positive")
    _require(
        0 <= schedule.min_lr <= schedule.lr,
        f"schedule.min_lr={schedule.min_lr} must be in [0, schedule.lr={schedule.lr}]",
    )
    _require(schedule.val_interval >= 1, f"schedule.val_interval={schedule.val_interval} must be at least 1")


def process_batch_size(schedule: DictConfig, world_size: int) -> int | None:
    """Each process's batch when ``schedule.global_batch_size`` is set: the global batch split over ``world_size``
    processes and ``accumulate_grad_batches`` steps (a one-line ``ValueError`` when it does not divide); None
    otherwise (the data group's ``batch_size`` is per process)."""
    global_batch = schedule.get("global_batch_size")
    if global_batch is None:
        return None
    parts = world_size * schedule.accumulate_grad_batches
    _require(
        global_batch % parts == 0,
        f"schedule.global_batch_size={global_batch} is not divisible by {world_size} processes x "
        f"accumulate_grad_batches={schedule.accumulate_grad_batches}; use a multiple of {parts}",
    )
    return global_batch // parts


_SCHEDULE_RANGES = (
    ("weight_decay", lambda value: value >= 0, "non-negative"),
    ("layer_decay", lambda value: 0 < value <= 1, "in (0, 1] (1: no decay)"),
    ("drop_path_rate", lambda value: 0 <= value < 1, "in [0, 1)"),
    ("mixup", lambda value: value >= 0, "non-negative (0: off)"),
    ("cutmix", lambda value: value >= 0, "non-negative (0: off)"),
    ("label_smoothing", lambda value: 0 <= value < 1, "in [0, 1)"),
    ("random_erasing", lambda value: 0 <= value <= 1, "a probability in [0, 1]"),
    ("momentum", lambda value: 0 <= value < 1, "in [0, 1)"),
    ("trust_coefficient", lambda value: value > 0, "positive"),
)
"""Ranges of the settings only some schedule groups have (fine-tuning, linear probing)."""
