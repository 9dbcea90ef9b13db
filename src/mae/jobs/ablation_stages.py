"""The config of an ablation run's downstream stage: what `python train.py task=<stage>` would compose, with the
pre-training run's group choices and inherited values, its checkpoint, and the stage's own directory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mae.jobs.harness import SetupError
from mae.runs.run_directory import last_checkpoint
from mae.sweeps.overrides import overrides_for

DOWNSTREAM_STAGES = ("linprobe", "finetune")
"""The train.py tasks an ablation run can follow its pre-training with."""


def check_stages(stages: list[str]) -> None:
    unknown = [stage for stage in stages if stage not in DOWNSTREAM_STAGES]
    if unknown:
        raise SetupError(
            f"ablation.downstream={list(stages)}: unknown stage {unknown[0]!r}; the stages are "
            f"{', '.join(DOWNSTREAM_STAGES)}"
        )


def stage_overrides(cfg: DictConfig, stage: str, run_dir: Path) -> list[str]:
    """The overrides composing ``stage``'s config, in order: task, group choices, the checkpoint this run wrote,
    the stage directory, the inherited values, then the stage's own ``ablation.overrides`` (which win)."""
    ablation = cfg.ablation
    choices = [f"{group}={choice}" for group, choice in ablation.choices.items() if choice is not None]
    return [
        f"task={stage}",
        *choices,
        f"pretrained={last_checkpoint(run_dir)}",
        f"paths.output_dir={run_dir / stage}",
        *overrides_for(cfg, ["paths.root_dir", "paths.data_dir", "paths.log_dir", *ablation.inherit]),
        *(ablation.overrides.get(stage) or []),
    ]


def compose_stage(cfg: DictConfig, stage: str, run_dir: Path) -> DictConfig:
    """``stage``'s config, resolved (no ``${hydra:...}`` left: it runs inside the pre-training's job)."""
    check_stages([stage])
    overrides = stage_overrides(cfg, stage, run_dir)
    with _hydra_initialized():
        composed = compose(config_name="train", overrides=overrides)
    OmegaConf.resolve(composed)
    return composed


@contextmanager
def _hydra_initialized() -> Iterator[None]:
    """Inside train.py, @hydra.main has initialised Hydra with the project's configs; a caller that composed its
    config with the compose API (tests, notebooks) has left it cleared, so use the config directory it composed from."""
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=_primary_config_dir(), version_base="1.3"):
        yield


def _primary_config_dir() -> str:
    if HydraConfig.initialized():
        for source in HydraConfig.get().runtime.config_sources:
            if source.provider == "main" and source.schema == "file":
                return str(source.path)
    raise SetupError(
        "cannot compose the downstream configs: Hydra is not initialised and no config directory is "
        "known; run through train.py or compose the config with Hydra's compose API first"
    )
