"""Every config group option composes, and what it builds matches the recipe it names."""

import inspect
from pathlib import Path

import pytest
import torch
from conftest import image_data_groups
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from omegaconf import OmegaConf
from timm.models.vision_transformer import Block

from mae.models import MaskedAutoencoderViT, mae_vit_base_patch16, mae_vit_huge_patch14, mae_vit_large_patch16
from mae.runs.config import ConfigError, validate_schedule

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("preset", options("model"))
def test_every_model_preset_builds_its_factory_architecture(config_factory, preset):
    patch = int(preset.rsplit("patch", 1)[1])
    cfg = config_factory([f"model={preset}", f"data.img_size={patch * 4}"])
    with torch.device("meta"):  # no memory, no init cost: only the structure is compared
        model = instantiate(cfg.model)
        factory_model = getattr(__import__("mae.models", fromlist=[preset]), preset)(
            img_size=cfg.data.img_size, in_chans=cfg.data.in_chans
        )
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in factory_model.state_dict().items()}
    assert model.mask_ratio == 0.75 and model.norm_pix_loss is True


RECIPE_KNOBS = {"mask_ratio", "norm_pix_loss", "grad_checkpointing"}
"""Settings of how a preset is trained, which its YAML file may choose (the factories leave the class defaults)."""


@pytest.mark.parametrize("preset", options("model"))
def test_every_model_preset_states_its_factory_numbers(monkeypatch, preset):
    """One source of truth: each YAML value is the one its factory passes (or the class default it leaves)."""
    import mae.models.factory as factory

    node = OmegaConf.load(CONF / "model" / f"{preset}.yaml")
    assert node._target_ == f"mae.models.{preset}"
    passed = {}
    monkeypatch.setattr(factory, "MaskedAutoencoderViT", lambda **kwargs: passed.update(kwargs))
    getattr(factory, preset)()
    defaults = {name: p.default for name, p in inspect.signature(MaskedAutoencoderViT).parameters.items()}
    stated = {key: node[key] for key in node if key not in {"_target_", "img_size", "in_chans"} | RECIPE_KNOBS}
    assert set(stated) == set(defaults) - {"img_size", "in_chans"} - RECIPE_KNOBS
    assert stated == {key: passed.get(key, defaults[key]) for key in stated}


def test_paper_presets_have_paper_widths(config_factory):
    for preset, _factory, width, depth in [
        ("mae_vit_base_patch16", mae_vit_base_patch16, 768, 12),
        ("mae_vit_large_patch16", mae_vit_large_patch16, 1024, 24),
        ("mae_vit_huge_patch14", mae_vit_huge_patch14, 1280, 32),
    ]:
        cfg = config_factory([f"model={preset}", "data.img_size=224"])
        assert (
            cfg.model.embed_dim,
            cfg.model.depth,
            cfg.model.decoder_embed_dim,
            cfg.model.decoder_depth,
            cfg.model.decoder_num_heads,
        ) == (width, depth, 512, 8, 16)


@pytest.mark.parametrize(
    ("override", "attribute", "expected"),
    [
        ("model.mask_ratio=0.5", lambda m: m.mask_ratio, 0.5),
        ("model.decoder_depth=1", lambda m: len(m.decoder_blocks), 1),
        ("model.decoder_embed_dim=256", lambda m: m.mask_token.shape[-1], 256),
        ("model.norm_pix_loss=false", lambda m: m.norm_pix_loss, False),
    ],
)
def test_ablation_knobs_are_plain_overrides(config_factory, override, attribute, expected):
    cfg = config_factory([override])
    assert attribute(instantiate(cfg.model)) == expected


@pytest.mark.parametrize("option", image_data_groups())
def test_every_data_option_composes_with_matching_model_input(config_factory, option):
    overrides = [f"data={option}"] + (["data.root=/some/folder"] if option == "image_folder" else [])
    cfg = config_factory(overrides)
    assert cfg.model.img_size == cfg.data.img_size and cfg.model.in_chans == cfg.data.in_chans
    assert cfg.data.batch_size == cfg.schedule.batch_size
    assert cfg.data._target_.startswith("mae.data.")


def task_of(schedule: str) -> str:
    return next((task for task in ("finetune", "linprobe", "segment", "detect") if task in schedule), "pretrain")


@pytest.mark.parametrize("option", options("schedule"))
def test_every_schedule_is_valid(config_factory, option):
    task = task_of(option)
    cfg = config_factory([f"task={task}", f"schedule={option}"])
    validate_schedule(cfg.schedule)
    if task in ("segment", "detect"):  # counted in iterations, as MMSegmentation and Detectron2 count them
        assert cfg.trainer.max_steps == cfg.module.total_steps == cfg.schedule.iters and cfg.trainer.max_epochs == -1
        assert cfg.module.lr == cfg.schedule.lr and cfg.module.layer_decay == cfg.schedule.layer_decay
        assert cfg.trainer.val_check_interval == cfg.schedule.val_interval
        return
    assert cfg.trainer.max_epochs == cfg.schedule.epochs
    if task == "pretrain":
        assert tuple(cfg.schedule.betas) == (0.9, 0.95) and cfg.schedule.weight_decay == 0.05
    else:  # every recipe number reaches the module and the data
        assert cfg.module.blr == cfg.schedule.blr and cfg.module.epochs == cfg.schedule.epochs
        assert tuple(cfg.data.crop_scale) == tuple(cfg.schedule.crop_scale)
        # Every epoch is watched on the whole validation split (held-out training images), never on the test split.
        assert cfg.trainer.limit_val_batches == 1.0 and cfg.data.val_size == 5000


def test_tasks_name_their_job_and_default_to_the_latest_pretraining(config_factory, tmp_path):
    assert config_factory([]).job._target_ == "mae.jobs.pretrain.pretrain"
    for task in ("finetune", "linprobe"):
        cfg = config_factory([f"task={task}"])
        assert cfg.job._target_ == "mae.jobs.downstream.downstream" and cfg.task_name == task
        assert cfg.pretrained == f"{cfg.paths.log_dir}/pretrain/latest/checkpoints/last.ckpt"
        assert "knn_evaluation" not in cfg.callbacks and cfg.callbacks.model_checkpoint.save_last


def test_finetune_task_wires_the_schedules_augmentation_into_data_and_module(config_factory):
    # The embedded data's recipe: label smoothing and a mild crop, no mixup/cutmix/RandAugment/erasing
    # (measured in docs/fashion_mnist_recipes.md); the ImageNet recipes keep the reference's (next test).
    cfg = config_factory(["task=finetune"])
    assert cfg.data.rand_augment is None and cfg.data.random_erasing == 0.0
    assert (cfg.module.mixup, cfg.module.cutmix, cfg.module.label_smoothing) == (0.0, 0.0, 0.1)
    assert tuple(cfg.data.crop_scale) == (0.8, 1.0) and cfg.module.global_pool == "avg"
    strong = config_factory(
        [
            "task=finetune",
            "schedule.mixup=0.8",
            "schedule.rand_augment=rand-m9-mstd0.5-inc1",
            "schedule.random_erasing=0.25",
        ]
    )
    assert strong.module.mixup == 0.8 and strong.data.rand_augment == "rand-m9-mstd0.5-inc1"
    assert strong.data.random_erasing == 0.25
    # Pre-training keeps the paper's plain crop + flip.
    plain = config_factory([])
    assert plain.data.rand_augment is None and plain.data.random_erasing == 0.0


@pytest.mark.parametrize(
    ("experiment", "preset", "blr", "layer_decay", "drop_path", "epochs"),
    [
        ("mae_vit_base_in1k_finetune", "mae_vit_base_patch16", 5e-4, 0.65, 0.1, 100),
        ("mae_vit_large_in1k_finetune", "mae_vit_large_patch16", 1e-3, 0.75, 0.2, 50),
        ("mae_vit_huge_in1k_finetune", "mae_vit_huge_patch14", 1e-3, 0.75, 0.3, 50),
    ],
)
def test_paper_finetune_recipes(config_factory, experiment, preset, blr, layer_decay, drop_path, epochs):
    cfg = config_factory([f"experiment={experiment}", "pretrained=/weights/mae_pretrain.pth"])
    assert cfg.task_name.startswith("finetune") and cfg.model._target_ == f"mae.models.{preset}"
    effective = (
        cfg.schedule.batch_size * cfg.schedule.accumulate_grad_batches * cfg.trainer.devices * cfg.trainer.num_nodes
    )
    assert effective == 1024
    module = cfg.module
    assert (module.blr, module.layer_decay, module.drop_path_rate, module.epochs) == (
        blr,
        layer_decay,
        drop_path,
        epochs,
    )
    assert (module.warmup_epochs, module.min_lr, module.weight_decay) == (5, 1e-6, 0.05)
    assert tuple(cfg.data.crop_scale) == (0.08, 1.0) and cfg.data.random_erasing == 0.25
    assert cfg.data.rand_augment == "rand-m9-mstd0.5-inc1"
    assert (module.mixup, module.cutmix, module.label_smoothing, module.global_pool) == (0.8, 1.0, 0.1, "avg")


def test_paper_linprobe_recipe(config_factory):
    cfg = config_factory(["experiment=mae_vit_base_in1k_linprobe", "pretrained=/weights/mae_pretrain.pth"])
    effective = (
        cfg.schedule.batch_size * cfg.schedule.accumulate_grad_batches * cfg.trainer.devices * cfg.trainer.num_nodes
    )
    assert effective == 16384
    module = cfg.module
    assert (module.blr, module.weight_decay, module.epochs, module.warmup_epochs) == (0.1, 0.0, 90, 10)
    assert (module.momentum, module.trust_coefficient) == (0.9, 0.001)
    assert cfg.data.rand_augment is None and cfg.data.random_erasing == 0.0


def test_cpu_trainer_instantiates(config_factory):
    cfg = config_factory(["trainer=cpu"])
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.max_epochs == cfg.schedule.epochs and trainer.precision == "32-true"


@pytest.mark.parametrize("option", ["gpu", "ddp", "fsdp"])
def test_gpu_trainers_use_bf16(config_factory, option):
    cfg = config_factory([f"trainer={option}"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"


def test_ddp_strategy_instantiates(config_factory):
    strategy = instantiate(config_factory(["trainer=ddp"]).trainer.strategy)
    assert isinstance(strategy, DDPStrategy)


def test_fsdp_wraps_each_transformer_block(config_factory):
    strategy = instantiate(config_factory(["trainer=fsdp"]).trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert set(policy._module_classes) == {Block}
    assert strategy.kwargs["use_orig_params"] is True


@pytest.mark.parametrize(
    ("option", "logger_type"), [("csv", CSVLogger), ("tensorboard", TensorBoardLogger), ("wandb", WandbLogger)]
)
def test_loggers_instantiate(config_factory, option, logger_type, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = config_factory([f"logger={option}"])
    loggers = [instantiate(node) for node in cfg.logger.values()]
    assert len(loggers) == 1 and isinstance(loggers[0], logger_type)
    if option == "wandb":
        assert cfg.logger.wandb.offline is True  # never prompts for a login


def test_wandb_goes_online_when_logged_in(config_factory, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert config_factory(["logger=wandb"]).logger.wandb.offline is False


def test_no_logger_option(config_factory):
    assert not config_factory(["logger=none"]).get("logger")


@pytest.mark.parametrize(
    ("experiment", "preset", "blr", "epochs"),
    [
        ("mae_vit_base_in1k", "mae_vit_base_patch16", 1.5e-4, 800),
        ("mae_vit_large_in1k", "mae_vit_large_patch16", 1.5e-4, 800),
        ("mae_vit_huge_in1k", "mae_vit_huge_patch14", 1.5e-4, 800),
    ],
)
def test_paper_recipes(config_factory, experiment, preset, blr, epochs):
    cfg = config_factory([f"experiment={experiment}"])
    assert cfg.model._target_ == f"mae.models.{preset}"
    effective = (
        cfg.schedule.batch_size * cfg.schedule.accumulate_grad_batches * cfg.trainer.devices * cfg.trainer.num_nodes
    )
    assert effective == 4096
    assert (cfg.schedule.blr, cfg.schedule.epochs, cfg.schedule.warmup_epochs) == (blr, epochs, 40)
    assert cfg.model.mask_ratio == 0.75 and cfg.model.norm_pix_loss is True
    assert cfg.data.img_size == 224 and tuple(cfg.data.crop_scale) == (0.2, 1.0) and cfg.data.interpolation == "bicubic"


def test_cpu_experiment_is_the_default_recipe(config_factory):
    default = config_factory([])
    explicit = config_factory(["experiment=fashion_mnist_cpu"])
    for group in ("model", "data", "schedule", "trainer"):
        assert default[group] == explicit[group]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("schedule.batch_size=0", "schedule.batch_size=0 must be at least 1"),
        ("schedule.epochs=0", "schedule.epochs=0 must be at least 1"),
        ("schedule.warmup_epochs=13", r"schedule.warmup_epochs=13 must be in \[0, schedule.epochs=12\]"),
        ("schedule.blr=0", "schedule.blr=0 must be positive"),
        ("schedule.accumulate_grad_batches=0", "schedule.accumulate_grad_batches=0 must be at least 1"),
    ],
)
def test_schedule_validation(config_factory, override, message):
    with pytest.raises(ConfigError, match=message):
        validate_schedule(config_factory([override]).schedule)
