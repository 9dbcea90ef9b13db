"""The runtime group's settings reach every task: ``compile`` (in-place ``torch.compile``) and
``float32_matmul_precision`` (``torch.set_float32_matmul_precision`` before the run, validated)."""

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import compose_config
from omegaconf import open_dict

from mae.jobs.downstream import build as build_downstream
from mae.jobs.evaluate import evaluate
from mae.jobs.harness import SetupError
from mae.jobs.pretrain import build as build_pretrain
from mae.models import MaskedAutoencoderViT
from mae.training import FinetuneModule, LinearProbeModule

ROOT = Path(__file__).resolve().parents[1]

MODEL = [
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
]
SMALL = MODEL + [
    "data.train_samples=64",
    "schedule.batch_size=16",
    "schedule.epochs=1",
    "schedule.warmup_epochs=0",
    "callbacks.progress_bar.refresh_rate=0",
]
TASKS = {
    "pretrain": ["task=pretrain", "callbacks.knn_evaluation=null", "callbacks.reconstruction_grid=null"],
    "finetune": ["task=finetune", "pretrained=null"],
    "linprobe": ["task=linprobe", "pretrained=null"],
}


def build(task: str, overrides: list[str], config_factory):
    cfg = config_factory(TASKS[task] + SMALL + overrides, name=task)
    return (build_pretrain if task == "pretrain" else build_downstream)(cfg)


def compiled_modules(module: L.LightningModule) -> list[torch.nn.Module]:
    """What compile=true compiles in place in each task's module."""
    if isinstance(module, LinearProbeModule):
        return [*module.encoder.blocks, module.head]
    return [module.model]


@pytest.fixture
def matmul_precision():
    """Leave torch's process-wide setting as the test found it."""
    saved = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(saved)


# -- compile -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", list(TASKS))
def test_compile_reaches_every_task_and_keeps_parameter_names(task, config_factory):
    run = build(task, ["compile=true"], config_factory)
    module = run.module
    assert module.hparams.compile is True
    names = list(module.state_dict())
    assert all(m._compiled_call_impl is None for m in compiled_modules(module))
    module.configure_model()  # what the Trainer calls before the first step (torch.compile itself is lazy)
    module.configure_model()  # Lightning may call it again: compiled once
    assert all(m._compiled_call_impl is not None for m in compiled_modules(module))
    assert list(module.state_dict()) == names  # no "_orig_mod." prefix: checkpoints keep their layout


@pytest.mark.parametrize("task", list(TASKS))
def test_compile_is_off_by_default(task, config_factory):
    module = build(task, [], config_factory).module
    assert module.hparams.compile is False
    module.configure_model()
    assert all(m._compiled_call_impl is None for m in compiled_modules(module))


def tiny_mae() -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(
        img_size=8,
        patch_size=4,
        in_chans=1,
        embed_dim=16,
        depth=1,
        num_heads=2,
        decoder_embed_dim=8,
        decoder_depth=1,
        decoder_num_heads=2,
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["finetune", "linprobe"])
def test_compiled_downstream_module_trains_a_step_like_eager(kind):
    from torch.utils.data import DataLoader, TensorDataset

    def make(compile: bool) -> L.LightningModule:
        torch.manual_seed(0)
        if kind == "finetune":
            return FinetuneModule.from_encoder(
                tiny_mae(),
                num_classes=2,
                lr=0.01,
                warmup_epochs=0,
                epochs=1,
                mixup=0.0,
                cutmix=0.0,
                drop_path_rate=0.0,
                compile=compile,
            )
        return LinearProbeModule(tiny_mae(), num_classes=2, lr=0.01, warmup_epochs=0, epochs=1, compile=compile)

    data = TensorDataset(torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 2)

    class Data(L.LightningDataModule):
        batch_size = 8

        def train_dataloader(self):
            return DataLoader(data, batch_size=8)

    modules = []
    for compile in (False, True):
        module = make(compile)
        L.Trainer(
            max_epochs=1,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        ).fit(module, datamodule=Data())
        modules.append(module)
    eager, compiled = modules
    assert all(m._compiled_call_impl is not None for m in compiled_modules(compiled))
    for (name, a), (other, b) in zip(eager.state_dict().items(), compiled.state_dict().items()):
        assert name == other and torch.allclose(a.float(), b.float(), atol=1e-5), name


# -- float32 matmul precision ------------------------------------------------------------------------------------
def test_default_is_highest():
    cfg = compose_config(TASKS["pretrain"])
    assert cfg.float32_matmul_precision == "highest"
    assert compose_config(["ckpt_path=x.ckpt"], config_name="eval").float32_matmul_precision == "highest"


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("value", ["high", "medium"])
def test_training_jobs_set_the_precision_before_building(task, value, config_factory, matmul_precision):
    torch.set_float32_matmul_precision("highest")
    build(task, [f"float32_matmul_precision={value}"], config_factory)
    assert torch.get_float32_matmul_precision() == value
    build(task, [], config_factory)
    assert torch.get_float32_matmul_precision() == "highest"


def test_ablation_stages_inherit_the_precision():
    assert "float32_matmul_precision" in compose_config(["task=ablation"]).ablation.inherit


@pytest.mark.parametrize("task", list(TASKS))
def test_a_bad_precision_is_one_line_before_any_work(task, config_factory, matmul_precision):
    torch.set_float32_matmul_precision("high")
    cfg = config_factory(TASKS[task] + SMALL + ["float32_matmul_precision=fastest"], name=task)
    with pytest.raises(SetupError, match="float32_matmul_precision=fastest must be one of highest, high, medium"):
        (build_pretrain if task == "pretrain" else build_downstream)(cfg)
    assert torch.get_float32_matmul_precision() == "high"  # untouched
    assert not Path(cfg.paths.output_dir).exists()


def test_eval_sets_and_checks_the_precision(tmp_path, matmul_precision):
    cfg = compose_config(["float32_matmul_precision=medium"], output_dir=tmp_path / "eval", config_name="eval")
    with pytest.raises(SetupError, match="ckpt_path is required"):
        evaluate(cfg)  # the precision is set first, before the checkpoint is looked at
    assert torch.get_float32_matmul_precision() == "medium"
    bad = compose_config(
        ["float32_matmul_precision=tf32", "ckpt_path=/nonexistent.ckpt"],
        output_dir=tmp_path / "bad",
        config_name="eval",
    )
    with pytest.raises(SetupError, match="float32_matmul_precision=tf32 must be one of"):
        evaluate(bad)
    # A run config written before the setting existed leaves torch's setting alone.
    old = cfg.copy()
    with open_dict(old):
        del old["float32_matmul_precision"]
    with pytest.raises(SetupError, match="ckpt_path is required"):
        evaluate(old)
    assert torch.get_float32_matmul_precision() == "medium"


@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_a_bad_precision_ends_the_command_with_one_error_line_and_exit_2(tmp_path, script):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / script),
            f"hydra.run.dir={tmp_path / 'run'}",
            f"paths.log_dir={tmp_path / 'outputs'}",
            "float32_matmul_precision=fast",
            *(["ckpt_path=/nonexistent/last.ckpt"] if script == "eval.py" else SMALL),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: float32_matmul_precision=fast must be one of highest, high, medium (highest: full "
        "float32 matmuls, the reference's numbers)"
    ]
    assert not (tmp_path / "run" / "checkpoints").exists()
