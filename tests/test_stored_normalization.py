"""The input normalisation a model was trained with travels with it: checkpoints, exports and transformers
directories store it, and the reconstruction tools, the demo and fine-tuning (``mean: auto``) use it unasked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import compose_config, data_module, image_data_groups
from extras import needs_extra

from mae.jobs.harness import data_for_model_file, prepare_data
from mae.jobs.visualize import compose_config as visualize_config
from mae.jobs.visualize import prepare
from mae.model_files.export import main as export_main
from mae.model_files.stored_config import PREPROCESSOR_CONFIG, RUN_CONFIG_KEY, stored_normalization
from mae.models import MaskedAutoencoderViT

ARCHITECTURE = dict(
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
MEAN, STD = [0.3141], [0.2718]


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A pre-training checkpoint as a run writes it: weights under ``model.``, the run config with the data's
    measured numbers."""
    model = MaskedAutoencoderViT(**ARCHITECTURE)
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(
        {
            "state_dict": {f"model.{key}": value for key, value in model.state_dict().items()},
            RUN_CONFIG_KEY: {
                "task_name": "pretrain",
                "model": {"_target_": "mae.models.MaskedAutoencoderViT", **ARCHITECTURE},
                "module": {},
                "data": {"img_size": 28, "in_chans": 1, "mean": MEAN, "std": STD},
            },
        },
        path,
    )
    return path


def test_a_checkpoint_states_its_numbers(checkpoint):
    stored = stored_normalization(checkpoint)
    assert (stored.mean, stored.std, stored.source) == (MEAN, STD, str(checkpoint))


def test_an_older_checkpoint_is_read_through_its_run_config(tmp_path, checkpoint):
    content = torch.load(checkpoint, weights_only=True)
    del content[RUN_CONFIG_KEY]
    torch.save(content, checkpoint)
    assert stored_normalization(checkpoint) is None
    (checkpoint.parent.parent / "config_resolved.yaml").write_text("data:\n  mean: [0.5]\n  std: [0.25]\n")
    assert stored_normalization(checkpoint).mean == [0.5]


@pytest.mark.parametrize(("kind", "out"), [("mae", "m.safetensors"), ("timm", "t.safetensors"), ("transformers", "hf")])
def test_every_export_carries_the_numbers(tmp_path, checkpoint, kind, out):
    assert export_main([kind, str(checkpoint), str(tmp_path / out)]) == 0
    stored = stored_normalization(tmp_path / out)
    assert stored is not None and (stored.mean, stored.std) == (MEAN, STD)
    if kind == "transformers":
        processor = json.loads((tmp_path / out / PREPROCESSOR_CONFIG).read_text())
        assert processor["image_mean"] == MEAN and processor["size"] == {"height": 28, "width": 28}
        transformers = needs_extra("transformers", "hf")
        image_processor = transformers.ViTImageProcessor.from_pretrained(tmp_path / out)
        assert list(image_processor.image_std) == STD


def test_the_reconstruction_tools_and_the_demo_normalise_with_the_stored_numbers(checkpoint):
    inspection = prepare(visualize_config(checkpoint, ["num_images=2"]))
    assert inspection.mean == tuple(MEAN) and inspection.std == tuple(STD)
    data = compose_config([]).data
    assert data_for_model_file(data, checkpoint).mean == tuple(MEAN)
    assert data_for_model_file(data, checkpoint, use_stored=False).mean == (0.2860,)  # told not to read the file's


def test_mean_auto_takes_the_numbers_of_the_file_a_run_starts_from(tmp_path, checkpoint, capsys):
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for index in range(4):
        Image.new("L", (8, 8), color=index * 60).save(images / f"{index}.png")
    cfg = compose_config(
        [
            "data=unlabeled",
            f"data.root={images}",
            "data.in_chans=1",
            "data.img_size=28",
            "data.val_fraction=0.5",
            f"pretrained={checkpoint}",
        ],
        output_dir=tmp_path / "out",
    )
    module = data_module(
        "unlabeled",
        root=str(images),
        in_chans=1,
        img_size=28,
        val_fraction=0.5,
        num_workers=0,
        persistent_workers=False,
    )
    prepare_data(cfg, module)
    assert module.mean == tuple(MEAN) and list(cfg.data.mean) == MEAN and list(cfg.data.std) == STD
    assert f"from {checkpoint}" in capsys.readouterr().out


def write_class_folders(root: Path) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for label, grey in (("a", 40), ("b", 200)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(2):
                Image.new("RGB", (12, 10), color=(grey, grey, grey)).save(folder / f"{index}.png")


def test_an_image_folder_measures_auto_or_takes_the_pretrained_numbers(tmp_path, checkpoint, caplog):
    write_class_folders(tmp_path / "labelled")
    settings = dict(
        root=str(tmp_path / "labelled"),
        img_size=8,
        in_chans=1,
        num_workers=0,
        persistent_workers=False,
        mean="auto",
        std="auto",
    )
    measured = data_module("image_folder", **settings)
    measured.prepare_run()
    assert measured.mean == pytest.approx((120 / 255,), abs=1e-4) and measured.std == pytest.approx(
        (80 / 255,), abs=1e-4
    )
    cfg = compose_config(
        [
            "task=finetune",
            "data=image_folder",
            f"data.root={tmp_path / 'labelled'}",
            "data.in_chans=1",
            "data.mean=auto",
            "data.std=auto",
            f"pretrained={checkpoint}",
        ],
        output_dir=tmp_path / "ft",
    )
    told = data_module("image_folder", **settings)
    prepare_data(cfg, told)
    assert told.mean == tuple(MEAN) and told.std == tuple(STD)
    explicit = data_module("image_folder", **{**settings, "mean": [0.5], "std": [0.5]})
    with caplog.at_level("WARNING"):
        prepare_data(cfg, explicit)
    assert explicit.mean == (0.5,) and any(
        "data.mean=auto data.std=auto takes the file's" in record.message for record in caplog.records
    )


def test_every_data_group_can_serve_the_knn_evaluation():
    conf = Path(__file__).resolve().parents[1] / "conf"
    groups = set(image_data_groups())  # segmentation has no kNN evaluation
    assert {path.stem for path in (conf / "knn_data").glob("*.yaml")} == groups
    for group in ("fashion_mnist", "image_folder", "cifar10"):
        cfg = compose_config([f"knn_data={group}", "data.img_size=56", "data.in_chans=3", "knn_data.root=/x"])
        data = compose_config([f"data={group}", "data.root=/x"]).data
        assert cfg.knn_data._target_ == data._target_ and cfg.knn_data.root == "/x"
        assert (cfg.knn_data.img_size, cfg.knn_data.in_chans) == (56, 3)  # the pre-training data's
        assert cfg.callbacks.knn_evaluation.data == cfg.knn_data
    assert compose_config([]).callbacks.knn_evaluation.data is None
