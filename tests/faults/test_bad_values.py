"""Every bad value is caught before any work: one line naming the value and what is allowed, exit code 2."""

from __future__ import annotations

import pytest
from conftest import compose_config
from PIL import Image

from mae.jobs.harness import SetupError, build_training_run
from mae.models import MaskedAutoencoderViT
from mae.models.masking import check_trainable_mask_ratio, num_kept
from mae.runs.config import instantiate_node

TINY = dict(
    img_size=28,
    patch_size=7,
    in_chans=1,
    embed_dim=32,
    depth=1,
    num_heads=2,
    decoder_embed_dim=16,
    decoder_depth=1,
    decoder_num_heads=2,
)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (dict(mask_ratio=0.0), "mask_ratio=0.0 keeps 16 of the 16 patches visible"),
        (dict(mask_ratio=0.99), "mask_ratio=0.99 keeps 0 of the 16 patches visible"),
        (dict(mask_ratio=1.0), "mask_ratio=1.0 is outside [0, 1)"),
        (dict(depth=0), "depth=0 must be at least 1"),
        (dict(decoder_depth=0), "decoder_depth=0 must be at least 1"),
        (dict(decoder_depth=-1), "decoder_depth=-1 must be at least 1"),
        (dict(embed_dim=0), "embed_dim=0 must be at least 1"),
        (dict(decoder_embed_dim=0), "decoder_embed_dim=0 must be at least 1"),
        (dict(num_heads=0), "num_heads=0 must be at least 1"),
        (dict(num_heads=3), "embed_dim=32 is not divisible by its number of heads (3)"),
        (dict(decoder_num_heads=3), "decoder_embed_dim=16 is not divisible by its number of heads (3)"),
        (dict(patch_size=0), "patch_size=0 must be at least 1"),
        (dict(patch_size=5), "img_size=28 is not divisible by patch_size=5"),
        (dict(in_chans=0), "in_chans=0 must be at least 1"),
        (dict(mlp_ratio=0.0), "mlp_ratio=0.0 and layer_norm_eps=1e-06 must both be positive"),
        (dict(layer_norm_eps=-1.0), "must both be positive"),
    ],
)
def test_model_rules(override, message):
    with pytest.raises(ValueError) as error:
        MaskedAutoencoderViT(**{**TINY, **override})
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("num_patches", [4, 16, 49, 196, 256])
def test_the_largest_ratio_the_message_allows_trains(num_patches):
    """The bound the error states is one that works: it keeps exactly one patch, a hair more keeps none."""
    with pytest.raises(ValueError, match="0 < mask_ratio <= ") as error:
        check_trainable_mask_ratio(0.9999, num_patches)
    highest = float(str(error.value).rsplit("<= ", 1)[1])
    check_trainable_mask_ratio(highest, num_patches)
    assert num_kept(num_patches, highest) == 1
    check_trainable_mask_ratio(1e-6, num_patches)  # any positive ratio masks at least one patch (truncation)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["schedule.min_lr=0.01"], "schedule.min_lr=0.01 is above the peak lr 0.0015 "),
        (["schedule.lr=0.001", "schedule.min_lr=0.002"], "schedule.min_lr=0.002 is above the peak lr 0.001"),
        (["schedule.weight_decay=-0.1"], "schedule.weight_decay=-0.1 must be non-negative"),
        (["schedule.betas=[0.9,1.0]"], "schedule.betas=[0.9, 1.0] must both be in [0, 1)"),
        (["task=finetune", "schedule.layer_decay=0"], "schedule.layer_decay=0 must be in (0, 1]"),
        (["task=finetune", "schedule.drop_path_rate=1.0"], "schedule.drop_path_rate=1.0 must be in [0, 1)"),
        (["task=finetune", "schedule.mixup=-1"], "schedule.mixup=-1 must be non-negative"),
        (["task=finetune", "schedule.cutmix=-0.5"], "schedule.cutmix=-0.5 must be non-negative"),
        (["task=finetune", "schedule.label_smoothing=1"], "schedule.label_smoothing=1 must be in [0, 1)"),
        (["task=finetune", "schedule.random_erasing=1.5"], "schedule.random_erasing=1.5 must be a probability"),
        (["task=linprobe", "schedule.momentum=1"], "schedule.momentum=1 must be in [0, 1)"),
        (["task=linprobe", "schedule.trust_coefficient=0"], "schedule.trust_coefficient=0 must be positive"),
        (["task=linprobe", "schedule.min_lr=100"], "schedule.min_lr=100 is above the peak lr 6.4"),
        (["model.mask_ratio=0"], "mask_ratio=0 keeps 16 of the 16 patches visible"),
        (["model.decoder_depth=0"], "decoder_depth=0 must be at least 1"),
        (["model.depth=0"], "depth=0 must be at least 1"),
        (["schedule.global_batch_size=0"], "schedule.global_batch_size=0 must be at least 1"),
        (
            [
                "schedule.global_batch_size=100",
                "trainer=ddp",
                "trainer.accelerator=cpu",
                "trainer.devices=3",
                "trainer.precision=32-true",
            ],
            "schedule.global_batch_size=100 is not divisible by 3 processes x accumulate_grad_batches=1; use a multiple of 3",
        ),
        (
            [
                "schedule.global_batch_size=200",
                "schedule.accumulate_grad_batches=4",
                "trainer=ddp",
                "trainer.accelerator=cpu",
                "trainer.devices=2",
                "trainer.num_nodes=2",
                "trainer.precision=32-true",
            ],
            "schedule.global_batch_size=200 is not divisible by 4 processes x accumulate_grad_batches=4; use a multiple of 16",
        ),
    ],
)
def test_schedule_and_model_values_of_the_composed_config(tmp_path, overrides, message):
    cfg = compose_config(
        overrides + ["pretrained=null"] * any(o.startswith("task=") for o in overrides), output_dir=tmp_path / "run"
    )
    model = lambda: instantiate_node(cfg.model)  # noqa: E731
    with pytest.raises(SetupError) as error:
        build_training_run(cfg, model, lambda datamodule: {"num_classes": 10} if "task=" in str(overrides) else {})
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.devices=0"], "devices=0"),
        (["trainer.accelerator=abacus"], "abacus"),
        (["trainer.precision=bogus"], "bogus"),
    ],
)
def test_trainer_values_lightning_refuses_are_one_line(tmp_path, overrides, message):
    """Values that only Lightning's Trainer checks reach the user as one line too, before anything is written."""
    cfg = compose_config(overrides, output_dir=tmp_path / "run")
    with pytest.raises(SetupError) as error:
        build_training_run(cfg, lambda: instantiate_node(cfg.model))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_empty_class_folder_is_named_before_training(tmp_path):
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for name in ("n01", "n02"):
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / split / name / "a.JPEG")
    (root / "train" / "n03").mkdir()
    (root / "train" / "n03" / "notes.txt").write_text("not an image")
    cfg = compose_config(
        ["data=imagenet", f"data.root={root}", "model=mae_vit_tiny_patch4", "data.img_size=32", "data.in_chans=3"],
        output_dir=tmp_path / "run",
    )
    with pytest.raises(SetupError) as error:
        build_training_run(cfg, lambda: instantiate_node(cfg.model))
    assert f"class folder {root / 'train' / 'n03'} has no image files" in str(error.value)
    assert "\n" not in str(error.value)
