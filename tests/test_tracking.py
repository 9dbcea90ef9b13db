"""Experiment tracking through the real configs: W&B (offline, read back from its run file), TensorBoard and CSV get
the resolved config, the metrics and the reconstruction grid; a sweep is one W&B group; checkpoint artifacts are
refused offline with one line."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mae.callbacks import LogResolvedConfig, wandb_run
from mae.callbacks.wandb_run import run_name
from mae.jobs.harness import SetupError, build_trainer, run_job
from mae.jobs.pretrain import build, pretrain
from mae.runs.loggers import ResumableCSVLogger

ROOT = Path(__file__).resolve().parents[1]

# Two optimizer steps of a small model on 64 Fashion-MNIST images: seconds on two cores.
TINY = [
    "data.train_samples=64",
    "schedule.batch_size=32",
    "schedule.epochs=1",
    "schedule.warmup_epochs=0",
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=1",
    "callbacks.knn_evaluation=null",
    "callbacks.progress_bar.refresh_rate=0",
    "callbacks.reconstruction_grid.num_images=2",
]


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B offline, not logged in, every file it writes outside the run directory kept under ``tmp_path``."""
    home = tmp_path / "wandb-home"
    for variable, sub in (
        ("WANDB_DIR", "dir"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_ARTIFACT_DIR", "artifacts"),
    ):
        monkeypatch.setenv(variable, str(home / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")  # restored afterwards, also after WandbLogger rewrites it
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    yield
    wandb_run.finish_wandb_run()  # a failed test must not leave its run open for the next one


# -- reading what W&B wrote ----------------------------------------------------------------------------------
def wandb_records(run_file: Path) -> list:
    """The protobuf records of an offline run's ``.wandb`` file (a LevelDB-style log of 32 KiB blocks, each record
    cut into chunks with a 7-byte header: CRC32, length, kind), parsed with wandb's own ``Record`` message."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", f"{run_file} is not a W&B run file"
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        if (kind == 0 and length == 0) or position + 7 + length > len(data):
            break  # zeros after the last record, or a record still being written
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"bad checksum at byte {position}"
        position += 7 + length
        pending += chunk
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def items_to_dict(items) -> dict:
    """Config, history or summary items (a flat ``key`` or a ``nested_key`` path, JSON values) as a nested dict."""
    result: dict = {}
    for item in items:
        *parents, leaf = [item.key] if item.key else list(item.nested_key)
        node = result
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = json.loads(item.value_json)
    return result


def read_wandb_run(run_dir: Path, timeout_s: float = 30.0) -> dict:
    """Run record, config (initial and updates), history rows, final summary and exit code of a finished offline
    run. wandb's service may still be writing the file when ``finish`` returns: wait for its exit record."""
    [run_file] = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + timeout_s
    records = wandb_records(run_file)
    while not any(record.WhichOneof("record_type") == "exit" for record in records):
        assert time.monotonic() < deadline, f"{run_file} has no exit record after {timeout_s} s"
        time.sleep(0.2)
        records = wandb_records(run_file)
    run, config, history, summary, exit_code = None, {}, [], {}, None
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update(items_to_dict(record.run.config.update))
        elif kind == "config":
            config.update(items_to_dict(record.config.update))
        elif kind == "history":
            history.append(items_to_dict(record.history.item))
        elif kind == "summary":
            summary.update(items_to_dict(record.summary.update))
        elif kind == "exit":
            exit_code = record.exit.exit_code
    return {"run": run, "config": config, "history": history, "summary": summary, "exit_code": exit_code}


def offline_runs(output_dir: Path) -> list[Path]:
    return sorted((output_dir / "wandb").glob("offline-run-*"))


# -- a tracked pre-training run ------------------------------------------------------------------------------
def test_pretraining_is_tracked_by_wandb_tensorboard_and_csv(config_factory, wandb_offline):
    import wandb

    cfg = config_factory(TINY + ["logger=[csv,tensorboard,wandb]", "sweep_name=mask_ratio", "model.mask_ratio=0.6"])
    run_job(pretrain, cfg)
    assert wandb.run is None  # run_job finished the job's W&B run
    out = Path(cfg.paths.output_dir)
    grid_size = Image.open(out / "reconstruction.png").size

    # W&B: one offline run in the run directory, grouped by the sweep, named apart by its overrides.
    [run_dir] = offline_runs(out)
    logged = read_wandb_run(run_dir)
    assert logged["run"].run_group == "mask_ratio"
    assert logged["run"].display_name.startswith("pretrain ") and "model.mask_ratio=0.6" in logged["run"].display_name
    config = logged["config"]
    assert config["model"]["mask_ratio"] == 0.6 and config["schedule"]["blr"] == cfg.schedule.blr
    assert config["sweep_name"] == "mask_ratio" and config["paths"]["output_dir"] == str(out)  # resolved
    assert config["blr"] == cfg.schedule.blr  # and the module's own hyperparameters, as Lightning logs them
    steps = [row["train/loss_step"] for row in logged["history"] if "train/loss_step" in row]
    assert len(steps) == 2 and all(loss > 0 for loss in steps)
    assert logged["summary"]["train/loss_epoch"] > 0
    [row] = [row for row in logged["history"] if "reconstruction" in row]
    assert row["trainer/global_step"] == 2 and row["reconstruction"]["_type"] == "images/separated"
    [name] = row["reconstruction"]["filenames"]
    assert Image.open(run_dir / "files" / name).size == grid_size
    assert logged["exit_code"] == 0

    # TensorBoard: scalars, the grid as an image, the resolved config as text and in hparams.yaml.
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert len(events.Scalars("train/loss_step")) == 2
    [image] = events.Images("reconstruction")
    assert (image.width, image.height) == grid_size and image.step == 2
    [text] = events.Tensors("config/text_summary")
    assert "mask_ratio: 0.6" in text.tensor_proto.string_val[0].decode()
    tb_hparams = yaml.safe_load((out / "tensorboard" / "hparams.yaml").read_text())
    assert tb_hparams["model"]["mask_ratio"] == 0.6 and tb_hparams["blr"] == cfg.schedule.blr

    # CSV: metrics and the same resolved config.
    csv_hparams = yaml.safe_load((out / "csv" / "hparams.yaml").read_text())
    assert csv_hparams["model"]["mask_ratio"] == 0.6 and csv_hparams["schedule"]["blr"] == cfg.schedule.blr
    assert csv_hparams["blr"] == cfg.schedule.blr
    assert "train/loss_step" in (out / "csv" / "metrics.csv").read_text().splitlines()[0]


def test_sweep_through_train_py_is_one_wandb_group_of_distinct_runs(tmp_path, wandb_offline):
    """A Hydra multirun runs its jobs in one process: each job must get its own W&B run in the sweep's group."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            f"paths.log_dir={tmp_path / 'outputs'}",
            "logger=wandb",
            "sweep_name=ratios",
            *TINY,
            "model.mask_ratio=0.5,0.75",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [read_wandb_run(run_dir) for job in ("0", "1") for run_dir in offline_runs(tmp_path / "sweep" / job)]
    assert len(runs) == 2 and runs[0]["run"].run_id != runs[1]["run"].run_id
    assert [r["run"].run_group for r in runs] == ["ratios", "ratios"]
    assert [r["config"]["model"]["mask_ratio"] for r in runs] == [0.5, 0.75]
    for r, ratio in zip(runs, ("0.5", "0.75")):
        assert r["run"].display_name.startswith("pretrain ")
        assert f"model.mask_ratio={ratio}" in r["run"].display_name.removeprefix("pretrain ").split(",")
    assert [r["exit_code"] for r in runs] == [0, 0]


def test_each_logger_gets_its_own_run_in_one_process(tmp_path, wandb_offline):
    """Two stages of one job (pre-training, then probing) build two loggers: two W&B runs, the first one finished."""
    import wandb

    def build_logger(name: str) -> WandbLogger:
        return wandb_run.wandb_logger(
            name=name, group="g", overrides="", offline=True, project="mae", save_dir=str(tmp_path / name)
        )

    first = build_logger("pretrain")
    first_id = first.experiment.id
    second = build_logger("linprobe")
    assert wandb.run is None  # the first run was finished when the second logger was built
    assert second.experiment.id != first_id and second.experiment.name == "linprobe"
    wandb_run.finish_wandb_run()
    [first_run] = offline_runs(tmp_path / "pretrain")
    assert read_wandb_run(first_run)["run"].display_name == "pretrain"


# -- naming, grouping and artifacts --------------------------------------------------------------------------
def test_run_name_adds_the_overrides_only_within_a_sweep():
    assert run_name("pretrain", None, "model.mask_ratio=0.5") == "pretrain"
    assert run_name("pretrain", "ratios", "model.mask_ratio=0.5") == "pretrain model.mask_ratio=0.5"
    assert run_name("linprobe", "ratios", "") == "linprobe"


@pytest.fixture
def wandb_logger_arguments(monkeypatch) -> dict:
    """What ``wandb_logger`` passes on to Lightning's WandbLogger (no run is started)."""
    captured: dict = {}

    def record(*, init_timeout: float, require_online: bool, **kwargs) -> WandbLogger:
        captured.update(kwargs, init_timeout=init_timeout, require_online=require_online)
        return WandbLogger(**kwargs)  # constructing it starts no run

    monkeypatch.setattr(wandb_run, "BoundedWandbLogger", record)
    return captured


def test_outside_a_sweep_the_run_is_ungrouped_and_named_by_its_task(
    config_factory, wandb_offline, wandb_logger_arguments
):
    build_trainer(config_factory(["logger=wandb", "model.mask_ratio=0.5"]))
    assert wandb_logger_arguments["group"] is None and wandb_logger_arguments["name"] == "pretrain"
    assert wandb_logger_arguments["offline"] is True and wandb_logger_arguments["project"] == "mae"


def test_checkpoint_artifacts_pass_through_when_online(config_factory, monkeypatch, wandb_logger_arguments):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # "logged in"; nothing is contacted: no run is started
    monkeypatch.delenv("WANDB_MODE", raising=False)
    build_trainer(config_factory(["logger=wandb", "logger.wandb.log_model=all"]))
    assert wandb_logger_arguments["log_model"] == "all" and wandb_logger_arguments["offline"] is False


@pytest.mark.parametrize(
    ("overrides", "logged_in", "message"),
    [
        (["logger.wandb.log_model=true"], False, "logger.wandb.log_model=true uploads checkpoints as W&B artifacts"),
        (["logger.wandb.log_model=all"], False, "this run is offline; set logger.wandb.log_model=false"),
        # Logged in, but WANDB_MODE=offline keeps wandb itself offline: still nothing to upload to.
        (["logger.wandb.log_model=true"], True, "which needs W&B online"),
        (["logger.wandb.log_model=sometimes"], False, "log_model='sometimes' must be false, true"),
    ],
)
def test_bad_log_model_stops_before_training_with_one_line(
    config_factory, wandb_offline, monkeypatch, overrides, logged_in, message
):
    if logged_in:
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    cfg = config_factory(TINY + ["logger=wandb", *overrides])
    with pytest.raises(SetupError, match=message) as raised:
        build(cfg)
    assert "\n" not in str(raised.value)
    assert not (Path(cfg.paths.output_dir) / "wandb").exists()


def test_several_loggers_compose_and_all_get_the_config(config_factory, wandb_offline):
    cfg = config_factory(["logger=[csv,tensorboard,wandb]"])
    assert list(cfg.logger) == ["csv", "tensorboard", "wandb"]
    trainer = build_trainer(cfg)
    assert [type(logger) for logger in trainer.loggers] == [
        ResumableCSVLogger,
        TensorBoardLogger,
        wandb_run.BoundedWandbLogger,
    ]
    [callback] = [c for c in trainer.callbacks if isinstance(c, LogResolvedConfig)]
    assert callback.config["model"]["mask_ratio"] == cfg.model.mask_ratio


def test_config_is_logged_once_and_on_rank_zero_only(tmp_path):
    """Downstream jobs validate after fitting (setup runs twice); the config goes out once, from rank 0."""
    callback = LogResolvedConfig(OmegaConf.create({"model": {"mask_ratio": 0.75}, "blr": "${model.mask_ratio}"}))
    assert callback.config == {"model": {"mask_ratio": 0.75}, "blr": 0.75}
    other_rank = TensorBoardLogger(tmp_path, name="rank1", version="")
    callback.setup(SimpleNamespace(is_global_zero=False, loggers=[other_rank]), None, "fit")
    assert not (tmp_path / "rank1").exists()
    logger = TensorBoardLogger(tmp_path, name="tb", version="")
    for stage in ("fit", "validate"):
        callback.setup(SimpleNamespace(is_global_zero=True, loggers=[logger]), None, stage)
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    assert len(events.Tensors("config/text_summary")) == 1 and logger.hparams["model"] == {"mask_ratio": 0.75}


def test_no_logger_no_config_callback(config_factory):
    trainer = build_trainer(config_factory(["logger=none"]))
    assert not trainer.loggers and not any(isinstance(c, LogResolvedConfig) for c in trainer.callbacks)
