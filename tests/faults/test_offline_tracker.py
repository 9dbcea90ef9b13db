"""W&B with an API key but no network: the run's start waits a bounded time for the server, then continues offline
with one line saying so, or stops with one line when ``logger.wandb.mode=online`` asked for the server. No test
contacts the network: ``wandb.init`` is replaced by one that fails as wandb's own init timeout does."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import wandb
from omegaconf import OmegaConf
from wandb.errors import CommError

from mae.callbacks import wandb_run
from mae.callbacks.wandb_run import WandbUnreachableError, wandb_logger
from mae.jobs.harness import build_trainer
from mae.runs.run_lock import owned_run_directory

TIMEOUT = (
    "Run initialization has timed out after 30.0 sec. Please try increasing the timeout with the `init_timeout` "
    "setting: `wandb.init(settings=wandb.Settings(init_timeout=120))`."
)  # wandb's words for its timeout


@pytest.fixture
def logged_in_without_network(tmp_path, monkeypatch) -> list[dict]:
    """A W&B key, no WANDB_MODE, and ``wandb.init`` timing out online (it records every call's arguments); an
    offline init returns a stand-in run."""
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "online")  # recorded, so that monkeypatch restores what WandbLogger rewrites
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    calls: list[dict] = []

    def init(**kwargs):
        calls.append(kwargs)
        if kwargs.get("mode") != "offline" and os.environ.get("WANDB_MODE") not in ("offline", "dryrun"):
            raise CommError(TIMEOUT)
        return "offline run"

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb, "run", None)
    return calls


def build(tmp_path: Path, **overrides):
    return wandb_logger(
        name="pretrain", group=None, overrides="", offline=False, project="mae", save_dir=str(tmp_path), **overrides
    )


def test_an_unreachable_server_leaves_the_run_offline_with_one_line(tmp_path, logged_in_without_network, caplog):
    logger = build(tmp_path, init_timeout=12.5)
    with caplog.at_level(logging.WARNING, logger=wandb_run.__name__):
        assert logger.experiment == "offline run"
    online, offline = logged_in_without_network
    assert online["settings"].init_timeout == 12.5 and "mode" not in online  # the bounded wait, online first
    assert offline["mode"] == "offline"
    [line] = [record.getMessage() for record in caplog.records]
    assert line.startswith("the W&B run did not start online within 12.5 s (Run initialization has timed out")
    assert "\n" not in line
    assert f"this run logs offline to {tmp_path}" in line


def test_the_default_wait_is_the_configs(config_factory, logged_in_without_network):
    trainer = build_trainer(config_factory(["logger=wandb"]))
    [logger] = trainer.loggers
    assert logger._init_timeout == 30 and not logger._offline


def test_online_mode_stops_with_one_line_when_the_server_does_not_answer(tmp_path, logged_in_without_network):
    logger = build(tmp_path, mode="online")
    with pytest.raises(WandbUnreachableError) as error:
        _ = logger.experiment
    message = str(error.value)
    assert (
        message.startswith("logger.wandb.mode=online but the W&B run did not start online within 30 s")
        and "\n" not in message
    )
    assert len(logged_in_without_network) == 1  # no offline run was started


def test_a_failure_while_the_job_runs_is_one_error_line_and_marks_the_run_failed(tmp_path, capsys):
    cfg = OmegaConf.create({"task_name": "pretrain", "paths": {"output_dir": str(tmp_path / "run")}})
    with pytest.raises(SystemExit) as stopped, owned_run_directory(cfg):
        raise WandbUnreachableError("logger.wandb.mode=online but the W&B run did not start online within 30 s (x)")
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        "error: logger.wandb.mode=online but the W&B run did not start online within 30 s (x)\n"
    )
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "failed" and record["reason"].startswith("logger.wandb.mode=online")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["logger.wandb.mode=sometimes"], "logger.wandb.mode='sometimes' must be one of auto, online, offline"),
        (["logger.wandb.init_timeout=0"], "logger.wandb.init_timeout=0 must be a positive number of seconds"),
    ],
)
def test_bad_settings_are_one_line(config_factory, overrides, message, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(ValueError, match=message):
        build_trainer(config_factory(["logger=wandb", *overrides]))


def test_online_mode_without_a_login_is_one_line(config_factory, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    with pytest.raises(ValueError, match=r"logger.wandb.mode=online needs W&B online \(`wandb login`"):
        build_trainer(config_factory(["logger=wandb", "logger.wandb.mode=online"]))


def test_offline_mode_never_calls_the_server(tmp_path, logged_in_without_network):
    logger = build(tmp_path, mode="offline")
    assert logger.experiment == "offline run"
    assert len(logged_in_without_network) == 1 and os.environ["WANDB_MODE"] == "dryrun"  # Lightning's offline
