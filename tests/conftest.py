"""Shared test helpers: compose the project's real Hydra configs with overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from mae.models import mae_vit_tiny_patch7
from mae.runs.config import instantiate_node, register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

register_resolvers()


def run_script(
    run_dir: Path,
    *overrides: str,
    script: str = "train.py",
    import_paths: Sequence[Path] = (),
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """``python <script>`` of this repository as a user runs it, in its own process: the run directory and the
    outputs folder beside it under ``run_dir``'s parent, unbuffered output captured, ``import_paths`` (e.g. a
    tests folder holding a callback the overrides name) put on ``PYTHONPATH``."""
    paths = [*map(str, import_paths), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    command = [
        sys.executable,
        str(ROOT / script),
        f"hydra.run.dir={run_dir}",
        f"paths.log_dir={run_dir.parent / 'outputs'}",
    ]
    return subprocess.run(
        [*command, *overrides], cwd=run_dir.parent, capture_output=True, text=True, env=env, timeout=timeout
    )


def assert_one_line_error(result: subprocess.CompletedProcess, message: str, run_dir: Path | None = None) -> None:
    """``result``, a script run, stopped as bad input must stop it: exit status 2, exactly one line starting with
    ``error:``, holding ``message``, no traceback, and (given its ``run_dir``) no checkpoint written."""
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    if run_dir is not None:
        assert not (run_dir / "checkpoints").exists()


def assert_one_line(error: pytest.ExceptionInfo, *words: str) -> None:
    """The raised error's message is one line holding each of ``words``."""
    message = str(error.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message


def compose_config(
    overrides: list[str] | None = None, output_dir: Path | None = None, config_name: str = "train"
) -> DictConfig:
    """The composed config exactly as train.py would see it, with Hydra's runtime values filled in."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides or [], return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.hydra.runtime.cwd = str(output_dir.parent)
            cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # train.py's task function never sees the hydra node either
    OmegaConf.resolve(cfg)  # pin ${hydra:...} values now: a later compose replaces the global HydraConfig
    return cfg


SEGMENTATION_DATA = "mae.data.dense.SegmentationDataModule"
DETECTION_DATA = "mae.data.dense.DetectionDataModule"


def image_data_groups() -> list[str]:
    """The groups of ``conf/data/`` that serve pre-training and classification (the folder also holds the
    segmentation and detection groups, which ``task=segment`` and ``task=detect`` read)."""
    paths = sorted((CONF / "data").glob("*.yaml"))
    dense = (SEGMENTATION_DATA, DETECTION_DATA)
    return [path.stem for path in paths if OmegaConf.load(path).get("_target_") not in dense]


def segmentation_data_groups() -> list[str]:
    paths = sorted((CONF / "data").glob("*.yaml"))
    return [path.stem for path in paths if OmegaConf.load(path).get("_target_") == SEGMENTATION_DATA]


@cache
def _data_node(group: str) -> DictConfig:
    return compose_config([f"data={group}"]).data


def data_module(group: str, **settings: Any) -> Any:
    """The data module of ``conf/data/<group>.yaml`` exactly as the composed config builds it, with ``settings``
    in place of the file's values (the modules take no defaults in Python)."""
    return instantiate_node(_data_node(group), **settings)


@pytest.fixture(autouse=True)
def isolated_environment():
    """Each test leaves os.environ as it found it: Lightning writes launch variables (MASTER_ADDR/PORT, NODE_RANK,
    LOCAL_RANK) into it, and a later test's 2-process launch would take a leaked LOCAL_RANK as already launched."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def config_factory(tmp_path):
    """``config_factory(overrides)`` composes the real config with a per-test output directory."""

    def factory(overrides: list[str] | None = None, name: str = "run") -> DictConfig:
        return compose_config(overrides, output_dir=tmp_path / name)

    yield factory
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> tuple[Path, dict]:
    """A pre-trained-like MAE (seeded random weights) saved as the reference saves checkpoints."""
    torch.manual_seed(3)
    mae = mae_vit_tiny_patch7(in_chans=1)
    path = tmp_path_factory.mktemp("encoder") / "mae.pth"
    torch.save({"model": mae.state_dict()}, path)
    return path, mae.state_dict()
