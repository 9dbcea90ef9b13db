"""Segmentation data: the Fashion-MNIST scenes generator, the ADE20K-layout reader on files in that exact format, the
joint transforms of MMSegmentation's recipe and the data module composed from the real configs."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line, compose_config, data_module
from PIL import Image
from test_data_fashion_mnist import N_TRAIN, make_fashion_mnist
from torchvision.io import ImageReadMode, decode_image

from mae.data import CorruptDataError
from mae.data.dense import IGNORE_INDEX, SegmentationDataModule, SegmentationFolder
from mae.data.dense import scenes as scenes_module
from mae.data.dense.scenes import (
    SPLITS,
    ItemSource,
    SceneSettings,
    background_texture,
    generate_scene,
    generate_split,
    item_sources,
    scene_generator,
    write_scenes,
)
from mae.data.dense.transforms import (
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    _saturated,
    dominated,
    photometric_distortion,
    random_crop,
    rescale_size,
)
from mae.runs.config import instantiate_node

COUNTS = {"training": 8, "validation": 4, "test": 4}
HELD_OUT = 8  # of the tiny fake Fashion-MNIST's N_TRAIN training images


@cache
def scene_settings() -> SceneSettings:
    """The settings of conf/scenes.yaml, as the generator's CLI reads them."""
    return SceneSettings.from_config(compose_config(config_name="scenes"))


def fake_items(name: str, count: int, seed: int) -> ItemSource:
    """``count`` 28x28 items (a bright rectangle with a darker hole, on black) of random classes."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 1, 28, 28), dtype=np.uint8)
    for image in images:
        top, left = rng.integers(0, 8, size=2)
        image[0, top : top + 20, left : left + 20] = rng.integers(100, 256)
        image[0, top + 8 : top + 12, left + 8 : left + 12] = 10
    labels = torch.from_numpy(rng.integers(0, 10, count))
    return ItemSource(name, torch.from_numpy(images), labels, torch.arange(count))


def fake_sources() -> dict[str, ItemSource]:
    return {split: fake_items("t10k" if split == "test" else "train", 12, seed) for seed, split in enumerate(SPLITS)}


def write_tiny_scenes(out: Path, seed: int = 0, counts: dict[str, int] = COUNTS) -> Path:
    sources = fake_sources()
    splits = {split: generate_split(sources[split], scene_settings(), seed, split, counts[split]) for split in SPLITS}
    write_scenes(out, splits, {"seed": seed})
    return out


def files_of(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def decode(path: Path) -> torch.Tensor:
    return decode_image(str(path), mode=ImageReadMode.UNCHANGED)


# -- the scenes generator ------------------------------------------------------------------------------------------
def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_scenes(tmp_path):
    first, again = files_of(write_tiny_scenes(tmp_path / "a")), files_of(write_tiny_scenes(tmp_path / "b"))
    assert first == again and len(first) == 2 * sum(COUNTS.values()) + len(SPLITS) + 1  # + instances_<split>.json
    other = files_of(write_tiny_scenes(tmp_path / "c", seed=1))
    assert other.keys() == first.keys()
    assert all(other[name] != first[name] for name in first if name.startswith("images/"))
    # Scene k is a function of (seed, split, k): it does not depend on how many scenes come before it.
    source, settings = fake_sources()["training"], scene_settings()
    alone = generate_scene(source, settings, scene_generator(0, "training", 5))
    assert torch.equal(alone.image, list(generate_split(source, settings, 0, "training", 6))[5].image)


def test_background_is_class_0_and_every_visible_item_pixel_has_its_class():
    settings = scene_settings()
    assert (settings.size, settings.items, settings.threshold, settings.background) == (112, (2, 6), 32, (0, 60))
    for scene in generate_split(fake_sources()["training"], settings, 3, "training", 10):
        assert scene.image.shape == (1, 112, 112) and scene.image.dtype == torch.uint8
        assert scene.label.shape == (112, 112) and scene.label.dtype == torch.uint8
        assert 2 <= len(scene.instances) <= 6
        masks = torch.stack([instance.mask for instance in scene.instances])
        assert int(masks.sum(0).max()) <= 1  # an occluded pixel belongs to the item on top only
        assert torch.equal(masks.any(0), scene.label != 0)
        for instance in scene.instances:
            assert 1 <= instance.category <= 10 and bool((scene.label[instance.mask] == instance.category).all())
        assert int(scene.image[0][scene.label != 0].min()) >= settings.threshold
        assert int(scene.image[0][scene.label == 0].max()) <= 60
    texture = background_texture(settings, torch.Generator().manual_seed(0))
    assert (int(texture.min()), int(texture.max())) == (0, 60)  # every canvas spans the whole range


def test_later_items_cover_earlier_ones():
    # Two items of 28 px on a 28 px canvas, nothing outside: the second lies exactly over the first.
    settings = SceneSettings(28, (2, 2), (1.0, 1.0), 32, (0, 60), (3,), 0.0)
    items = fake_items("train", 1, seed=0)
    source = ItemSource("train", items.images.expand(2, -1, -1, -1), torch.tensor([2, 7]), torch.arange(2))
    for seed in range(4):
        scene = generate_scene(source, settings, torch.Generator().manual_seed(seed))
        first, second = scene.instances
        shown = items.images[0, 0] >= 32
        assert not first.mask.any() and torch.equal(second.mask, shown)
        assert bool((scene.label[shown] == second.category).all()) and second.category in (3, 8)


def test_item_sources_are_the_data_groups_training_held_out_and_test_images(tmp_path):
    make_fashion_mnist(tmp_path / "fmnist")
    cfg = compose_config([f"data.root={tmp_path / 'fmnist'}", f"data.val_size={HELD_OUT}"], config_name="scenes")
    # The held-out split is the classification data group's own numbers (val_size 5000, val_split_seed 0)...
    default, data_group = compose_config(config_name="scenes").data, compose_config([]).data
    assert (default.val_size, default.val_split_seed) == (data_group.val_size, data_group.val_split_seed) == (5000, 0)
    sources = item_sources(instantiate_node(cfg.data))
    # ... and exactly the images the data module holds out of pre-training.
    classifier = data_module("fashion_mnist", root=str(tmp_path / "fmnist"), val_size=HELD_OUT)
    classifier.setup()
    held_out = set(classifier.splits.val.dataset.indices)
    assert set(sources["validation"].indices.tolist()) == held_out and len(held_out) == HELD_OUT
    assert set(sources["training"].indices.tolist()) == set(range(N_TRAIN)) - held_out
    assert sources["test"].name == "t10k" and len(sources["test"].indices) == len(sources["test"].images)
    used = {
        split: [
            (i.source, i.source_index)
            for scene in generate_split(sources[split], scene_settings(), 0, split, 20)
            for i in scene.instances
        ]
        for split in SPLITS
    }
    assert {index for _, index in used["validation"]} <= held_out
    assert not {index for _, index in used["training"]} & held_out
    assert {name for name, _ in used["validation"] + used["training"]} == {"train"}
    assert {name for name, _ in used["test"]} == {"t10k"}


def test_the_written_layout_is_ade20ks(tmp_path):
    root = write_tiny_scenes(tmp_path / "scenes")
    assert sorted(p.relative_to(root).as_posix() for p in root.iterdir()) == ["annotations", "images", "scenes.json"]
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(SPLITS)
    # Beside ADE20K's split folders, COCO's instances files (tests/test_coco_data.py reads them).
    coco_files = [f"instances_{split}.json" for split in SPLITS]
    assert sorted(p.name for p in (root / "annotations").iterdir()) == sorted([*SPLITS, *coco_files])
    sources = fake_sources()
    for split, count in COUNTS.items():
        names = [f"scene_{k:08d}.png" for k in range(1, count + 1)]
        assert sorted(p.name for p in (root / "images" / split).iterdir()) == names
        assert sorted(p.name for p in (root / "annotations" / split).iterdir()) == names
        scene = next(generate_split(sources[split], scene_settings(), 0, split, 1))
        annotation = decode(root / "annotations" / split / names[0])
        assert annotation.shape == (1, 112, 112) and annotation.dtype == torch.uint8
        with Image.open(root / "annotations" / split / names[0]) as png:
            assert png.mode == "L"  # 8-bit grey, as ADE20K's annotations
        assert int(annotation.min()) >= 1  # ADE20K's 0 ("other", ignored) is unused: class k is stored as k + 1
        assert torch.equal(annotation[0], scene.label + 1)
        assert torch.equal(decode(root / "images" / split / names[0]), scene.image)  # lossless PNG
    info = json.loads((root / "scenes.json").read_text())
    assert info["counts"] == COUNTS and info["seed"] == 0


def test_a_non_empty_output_folder_is_refused_and_a_failed_run_leaves_nothing(tmp_path):
    out = tmp_path / "scenes"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError) as error:
        write_tiny_scenes(out)
    assert_one_line(error, str(out), "not an empty folder")

    def broken():
        yield from generate_split(fake_sources()["training"], scene_settings(), 0, "training", 2)
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_scenes(tmp_path / "new", {"training": broken()}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenes"]  # neither `new` nor a partial folder


def test_the_command_line_writes_scenes_and_refuses_bad_settings(tmp_path, capsys):
    make_fashion_mnist(tmp_path / "fmnist")
    data = [f"data.root={tmp_path / 'fmnist'}", f"data.val_size={HELD_OUT}"]
    counts = ["counts.training=2", "counts.validation=1", "counts.test=1"]
    assert scenes_module.main([str(tmp_path / "out"), *data, *counts]) == 0
    assert json.loads((tmp_path / "out" / "scenes.json").read_text())["counts"] == {
        "training": 2,
        "validation": 1,
        "test": 1,
    }
    assert scenes_module.main([str(tmp_path / "out"), *data]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    for bad, message in [
        ("items=[3,1]", "items=[3, 1] must be two integers with 1 <= fewest <= most"),
        ("item_scale=[1,5]", "28 x high <= size=112"),
        ("counts.test=-1", "counts.test=-1 must be an integer of at least 0"),
        ("data.val_size=0", "holds out no training images"),
    ]:
        assert scenes_module.main([str(tmp_path / "bad"), *data, bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


# -- the ADE20K-layout reader --------------------------------------------------------------------------------------
def write_ade20k(root: Path, split: str, labels: list[np.ndarray], suffix: str = ".jpg") -> list[Path]:
    """ADE20K as downloaded: RGB JPEG images (or PNG) and 8-bit grey PNG annotations of the same name."""
    rng = np.random.default_rng(len(labels))
    names = []
    for k, label in enumerate(labels, start=1):
        name = f"ADE_{split}_{k:08d}"
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (*label.shape, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / split / f"{name}{suffix}")
        Image.fromarray(label.astype(np.uint8), mode="L").save(root / "annotations" / split / f"{name}.png")
        names.append(root / "images" / split / f"{name}{suffix}")
    return names


def ade_labels(count: int, num_classes: int, shape=(24, 32), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, num_classes + 1, shape) for _ in range(count)]


@pytest.mark.parametrize("in_chans", [3, 1])
def test_reader_pairs_files_by_name_and_reduces_the_zero_label(tmp_path, in_chans):
    labels = ade_labels(3, 150)
    labels[0][0, :5] = [0, 1, 2, 150, 0]
    images = write_ade20k(tmp_path, "training", labels)
    dataset = SegmentationFolder(tmp_path, "training", 150, in_chans, "download it")
    assert [image for image, _ in dataset.pairs] == images and len(dataset) == 3
    image, label = dataset[0]
    assert image.shape == (in_chans, 24, 32) and image.dtype == torch.uint8
    assert label.shape == (24, 32) and label.dtype == torch.int64
    assert label[0, :5].tolist() == [IGNORE_INDEX, 0, 1, 149, IGNORE_INDEX]
    expected = torch.from_numpy(labels[0]).long() - 1
    expected[expected < 0] = IGNORE_INDEX
    assert torch.equal(label, expected)
    if in_chans == 3:  # the JPEG's own decoding
        with Image.open(images[0]) as jpeg:
            assert torch.equal(image, torch.from_numpy(np.array(jpeg.convert("RGB"))).permute(2, 0, 1))


def test_reader_errors_are_one_line_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        SegmentationFolder(tmp_path, "training", 150, 3, "download ADEChallengeData2016 and set root")
    assert_one_line(error, str(tmp_path / "images" / "training"), "download ADEChallengeData2016 and set root")

    write_ade20k(tmp_path / "extra_image", "training", ade_labels(2, 5))
    (tmp_path / "extra_image" / "annotations" / "training" / "ADE_training_00000002.png").unlink()
    with pytest.raises(ValueError) as error:
        SegmentationFolder(tmp_path / "extra_image", "training", 5, 3, "")
    assert_one_line(error, "ADE_training_00000002.jpg has no annotation in")

    write_ade20k(tmp_path / "extra_label", "training", ade_labels(2, 5))
    (tmp_path / "extra_label" / "images" / "training" / "ADE_training_00000001.jpg").unlink()
    with pytest.raises(ValueError) as error:
        SegmentationFolder(tmp_path / "extra_label", "training", 5, 3, "")
    assert_one_line(error, "ADE_training_00000001.png has no image in")

    labels = ade_labels(2, 150)
    labels[1][3, 4] = 151
    write_ade20k(tmp_path / "range", "training", labels)
    dataset = SegmentationFolder(tmp_path / "range", "training", 150, 3, "")
    dataset[0]
    with pytest.raises(CorruptDataError) as error:
        dataset[1]
    assert_one_line(error, "ADE_training_00000002.png holds value 151, outside 0-150")

    root = tmp_path / "size"
    write_ade20k(root, "training", ade_labels(1, 5))
    annotation = root / "annotations" / "training" / "ADE_training_00000001.png"
    Image.fromarray(np.ones((24, 30), dtype=np.uint8), mode="L").save(annotation)
    with pytest.raises(CorruptDataError) as error:
        SegmentationFolder(root, "training", 5, 3, "")[0]
    assert_one_line(error, str(annotation), "is 30x24 pixels but its image", "is 32x24")

    Image.fromarray(np.ones((24, 32, 3), dtype=np.uint8)).save(annotation)
    with pytest.raises(CorruptDataError) as error:
        SegmentationFolder(root, "training", 5, 3, "")[0]
    assert_one_line(error, str(annotation), "single-channel 8-bit PNG")


# -- the joint transforms ------------------------------------------------------------------------------------------
def striped(height: int = 96, width: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """A label of 8-pixel blocks of classes 0-10 (asymmetric left to right) and an image whose grey level is
    20 x label + 10: after any geometric transform the two still agree wherever a label's neighbours agree."""
    rows, cols = torch.arange(height).view(-1, 1) // 8, torch.arange(width).view(1, -1) // 8
    label = (rows * 3 + cols * cols) % 11
    return (label * 20 + 10).to(torch.uint8).unsqueeze(0), label


def train_transform(**settings) -> SegmentationTrainTransform:
    args = dict(
        scale=(96, 96),
        ratio_range=(0.5, 2.0),
        crop_size=(64, 64),
        cat_max_ratio=0.75,
        hflip=0.5,
        mean=(0.5,),
        std=(0.25,),
    )
    return SegmentationTrainTransform(**{**args, **settings})


def test_rescale_follows_mmcvs_keep_ratio_rule():
    assert rescale_size(512, 683, (2048, 512)) == (512, 683)
    assert rescale_size(300, 400, (2048, 512)) == (512, 683)  # the short side reaches 512
    assert rescale_size(256, 2048, (2048, 512)) == (256, 2048)  # the long side reaches 2048 first
    assert rescale_size(96, 96, (48, 48)) == (48, 48)


def test_random_resize_crop_and_flip_keep_image_and_label_aligned():
    image, label = striped()
    transform = train_transform()
    sizes = set()
    for seed in range(40):
        out_image, out_label = transform.geometry(image, label, torch.Generator().manual_seed(seed))
        sizes.add(tuple(out_label.shape))
        assert out_image.shape[-2:] == out_label.shape and out_label.dtype == torch.int64
        # Away from block edges (bilinear blends there, also with pixels beyond the crop), the pixel still encodes
        # its label.
        padded = torch.nn.functional.pad(out_label[None, None].float(), (1, 1, 1, 1), value=-1.0)
        same = (torch.nn.functional.max_pool2d(padded, 3, 1) == -torch.nn.functional.max_pool2d(-padded, 3, 1))[0, 0]
        difference = (out_image[0].float() - (out_label * 20 + 10).float()).abs()
        assert same.sum() > 0 and float(difference[same].max()) <= 1
    assert len(sizes) > 1 and (64, 64) in sizes and any(h < 64 for h, _ in sizes)
    # A flip alone (ratio 1, crop = the image): exactly the mirrored image and label.
    flipped_image, flipped_label = train_transform(ratio_range=(1.0, 1.0), crop_size=(96, 96), hflip=1.0).geometry(
        image, label
    )
    assert torch.equal(flipped_image, image.flip(-1)) and torch.equal(flipped_label, label.flip(-1))


def test_small_images_are_padded_with_the_mean_and_the_ignore_label():
    image, label = striped()
    transform = train_transform(ratio_range=(0.5, 0.5))  # 96 -> 48, below the 64 crop
    out_image, out_label = transform(image, label, torch.Generator().manual_seed(0))
    assert out_image.shape == (1, 64, 64) and out_image.dtype == torch.float32 and out_label.shape == (64, 64)
    assert bool((out_label[48:] == IGNORE_INDEX).all()) and bool((out_label[:, 48:] == IGNORE_INDEX).all())
    assert bool((out_image[:, 48:] == 0).all()) and bool((out_image[:, :, 48:] == 0).all())
    assert not bool((out_label[:48, :48] == IGNORE_INDEX).any())
    # The same seed, the same sample (the loaders pass one seeded generator per sample and epoch).
    again = transform(image, label, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], out_image) and torch.equal(again[1], out_label)


def test_evaluation_rescales_the_image_only():
    image, label = torch.zeros(3, 300, 400, dtype=torch.uint8), torch.zeros(300, 400, dtype=torch.int64)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out_image, out_label = SegmentationEvalTransform((2048, 512), mean, std)(image, label)
    assert out_image.shape == (3, 512, 683) and out_label is label
    expected = -torch.tensor(mean) / torch.tensor(std)
    torch.testing.assert_close(out_image[:, 0, 0], expected)


def test_cat_max_ratio_redraws_crops_dominated_by_one_class():
    assert dominated(torch.zeros(4, 4, dtype=torch.int64), 0.75)  # one class only
    eighty = torch.tensor([0] * 8 + [1] * 2)
    assert dominated(eighty, 0.75) and not dominated(torch.tensor([0] * 6 + [1] * 4), 0.75)
    assert not dominated(torch.tensor([255] * 90 + [0] * 5 + [1] * 5), 0.75)  # 255 does not count
    # Columns 0-69 class 0, 70-99 class 1: 40x40 crops at left 41-59 (19 of 61 positions) pass the 0.75 rule.
    label = (torch.arange(100) >= 70).long().expand(40, 100)

    def passing(cat_max_ratio: float) -> float:
        lefts = [random_crop(label, (40, 40), cat_max_ratio, torch.Generator().manual_seed(s))[1] for s in range(300)]
        return sum(41 <= left <= 59 for left in lefts) / len(lefts)

    assert 0.2 < passing(1.0) < 0.45  # drawn once: uniform
    assert passing(0.75) > 0.93  # redrawn up to 10 times: 1 - (42/61)^11 of the crops pass
    # No crop can pass: the last draw stays.
    top, left = random_crop(torch.zeros(40, 100, dtype=torch.int64), (40, 40), 0.75, torch.Generator())
    assert top == 0 and 0 <= left <= 60


def test_photometric_distortion_stays_in_range_and_saturation_keeps_hue_and_value():
    grey = torch.randint(0, 256, (1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    outputs = [photometric_distortion(grey, torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(out.shape == grey.shape and out.dtype == torch.uint8 for out in outputs)
    assert any(not torch.equal(out, grey) for out in outputs)
    rgb = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(_saturated(rgb, 1.0), rgb)
    grey_rgb = _saturated(rgb, 0.0)
    assert torch.equal(grey_rgb, rgb.amax(0, keepdim=True).expand(3, -1, -1))  # S = 0: every channel at V
    assert torch.equal(_saturated(rgb, 1.5).amax(0), rgb.amax(0))  # V kept
    assert photometric_distortion(rgb, torch.Generator().manual_seed(3)).shape == rgb.shape


# -- the data module from the real configs -------------------------------------------------------------------------
@cache
def seg_data_node(group: str):
    return compose_config(["task=segment", f"data={group}"]).data


def seg_data(group: str, **settings) -> SegmentationDataModule:
    """The module of ``conf/data/<group>.yaml`` as composed, with ``settings`` in place of the file's values."""
    return instantiate_node(seg_data_node(group), **settings)


@pytest.fixture
def scenes_root(tmp_path) -> Path:
    return write_tiny_scenes(tmp_path / "fashion_mnist_scenes")


def test_scenes_module_serves_crops_for_training_and_whole_scenes_for_evaluation(scenes_root):
    dm = seg_data("fashion_mnist_scenes", root=str(scenes_root), batch_size=4)
    assert dm.num_classes == 11 and dm.class_names[0] == "background" and dm.in_chans == 1
    assert not dm.val_is_test and dm.crop_size == (84, 84) and dm.scale == (112, 112)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 1, 84, 84) and images.dtype == torch.float32
    assert labels.shape == (4, 84, 84) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= set(range(11)) | {IGNORE_INDEX}
    assert len(dm.train_dataloader()) == COUNTS["training"] // 4
    first_again, _ = next(
        iter(seg_data("fashion_mnist_scenes", root=str(scenes_root), batch_size=4).train_dataloader())
    )
    assert torch.equal(first_again, images)  # seeded per sample and epoch
    assert dm.eval_batch_size == seg_data_node("fashion_mnist_scenes").eval_batch_size > COUNTS["validation"]
    for loader, split in ((dm.val_dataloader(), "validation"), (dm.test_dataloader(), "test")):
        assert len(loader) == 1  # every scene has one size: evaluated in one batch here
        image, label = next(iter(loader))
        assert image.shape == (COUNTS[split], 1, 112, 112) and label.shape == (COUNTS[split], 112, 112)
        stored = decode(scenes_root / "annotations" / split / "scene_00000001.png")[0].long() - 1
        assert torch.equal(label[0], stored) and int(label.min()) >= 0  # no ignored pixel in a scene
    one_by_one = seg_data("fashion_mnist_scenes", root=str(scenes_root), eval_batch_size=1).val_dataloader()
    assert len(one_by_one) == COUNTS["validation"]
    capped = seg_data("fashion_mnist_scenes", root=str(scenes_root), batch_size=2, train_samples=4)
    assert len(capped.splits.train) == 4


def test_scenes_normalise_as_the_pre_training_data():
    node, data_group = seg_data_node("fashion_mnist_scenes"), compose_config([]).data
    assert list(node.mean) == list(data_group.mean) and list(node.std) == list(data_group.std)
    assert node.root.endswith("/data/fashion_mnist_scenes")


def test_ade20k_module_evaluates_on_its_validation_split(tmp_path):
    write_ade20k(tmp_path, "training", ade_labels(2, 150, shape=(40, 60)))
    write_ade20k(tmp_path, "validation", ade_labels(2, 150, shape=(30, 50), seed=1), suffix=".jpg")
    node = seg_data_node("ade20k")
    assert (node.num_classes, len(node.class_names), node.crop_size, list(node.scale)) == (150, 150, 512, [2048, 512])
    dm = seg_data(
        "ade20k",
        root=str(tmp_path),
        batch_size=2,
        num_workers=0,
        persistent_workers=False,
        pin_memory=False,
        crop_size=32,
        slide_stride=16,
        scale=[128, 32],
    )
    assert dm.val_is_test and len(dm.datasets) == 2
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 32, 32) and labels.shape == (2, 32, 32)
    assert node.eval_batch_size == 1  # evaluation images differ in size, as in mmseg
    image, label = next(iter(dm.test_dataloader()))
    assert image.shape == (1, 3, 32, 53) and label.shape == (1, 30, 50)  # rescaled to fit (128, 32); labels kept


def test_a_missing_split_says_how_to_get_the_data(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        seg_data("fashion_mnist_scenes", root=str(tmp_path / "nowhere"))
    assert_one_line(error, str(tmp_path / "nowhere" / "images" / "training"), "make scenes")


def test_a_broken_file_in_the_sample_stops_the_module_before_training(scenes_root):
    annotation = scenes_root / "annotations" / "validation" / "scene_00000004.png"
    Image.fromarray(np.full((96, 96), 12, dtype=np.uint8), mode="L").save(annotation)
    with pytest.raises(CorruptDataError) as error:
        seg_data("fashion_mnist_scenes", root=str(scenes_root))
    assert_one_line(error, str(annotation), "holds value 12, outside 0-11")
    seg_data("fashion_mnist_scenes", root=str(scenes_root), check_samples=1)  # not in a sample of one


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("crop_size", 0, "crop_size=0 must be a positive integer or two of them"),
        ("scale", [96, 0, 3], "scale=[96, 0, 3] must be a positive integer or two of them"),
        ("ratio_range", [2.0, 0.5], "ratio_range=[2.0, 0.5] must be two numbers with 0 < low <= high"),
        ("cat_max_ratio", 0.0, r"cat_max_ratio=0.0 must be a number in (0, 1]"),
        ("hflip", True, "hflip=True must be a number in [0, 1]"),
        ("hflip", 1.5, "hflip=1.5 must be a number in [0, 1]"),
        ("mean", [0.5, 0.5], "must have in_chans=1 values each"),
        ("mean", "auto", "mean=auto and std=auto are not available"),
        ("num_classes", 256, "num_classes=256 must be at most 255"),
        ("class_names", ["a", "b"], "class_names has 2 names; num_classes=11 needs one per class"),
        ("in_chans", 2, "in_chans=2 must be 1 (grayscale) or 3 (RGB)"),
        ("val_split", "", "val_split='' must be the name of a split folder"),
        ("check_samples", -1, "check_samples=-1 must be an integer of at least 0"),
        ("train_samples", 0, "train_samples=0 must be an integer of at least 1"),
        ("eval_batch_size", 0, "eval_batch_size=0 must be an integer of at least 1"),
    ],
)
def test_bad_settings_are_refused_with_one_line(scenes_root, setting, value, message):
    settings = {setting: value, **({"std": "auto"} if value == "auto" else {})}
    with pytest.raises(ValueError) as error:
        seg_data("fashion_mnist_scenes", root=str(scenes_root), **settings)
    assert_one_line(error, message)
