"""Image-folder data (ImageNet's layout) and the shared transforms, on small real JPEG files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_module
from PIL import Image
from torchvision.transforms import v2

from mae.data import CorruptDataError, ImageFolderDataModule, ImageNetDataModule
from mae.data.decoding import ImageLoader
from mae.data.transforms import eval_transform, pretrain_transform, sample_crop

WNIDS = ("n01440764", "n01443537", "n01484850")
PER_CLASS = {"train": 4, "val": 2}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_jpeg(path: Path, rng: np.random.Generator, mode: str = "RGB") -> None:
    """A smooth random picture of 40-80 px per side (smooth, so JPEG keeps it recognisable)."""
    height, width = (int(v) for v in rng.integers(40, 81, size=2))
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.convert(mode).save(path, quality=90)


@pytest.fixture
def data_imagenet_root(tmp_path) -> Path:
    """``root/{train,val}/<wnid>/*.JPEG`` with 3 classes, 4 training and 2 validation images each."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imagenet"
    for split, count in PER_CLASS.items():
        for wnid in WNIDS:
            for i in range(count):
                write_jpeg(root / split / wnid / f"{wnid}_{split}_{i:04d}.JPEG", rng)
    return root


def module(root, group="image_folder", **overrides) -> ImageFolderDataModule:
    """The data group's module (``image_folder`` or ``imagenet``) on the tiny copy at ``root``, small and in-process."""
    args = dict(
        root=str(root),
        img_size=32,
        batch_size=4,
        num_workers=0,
        pin_memory=False,
        persistent_workers=False,
        knn_train_samples=None,
        knn_val_samples=None,
    )
    return data_module(group, **{**args, **overrides})


def reference_eval(path: Path, img_size: int, ratio: float = 0.875) -> torch.Tensor:
    """The reference's eval pipeline, spelled with torchvision's standard transforms."""
    pipeline = v2.Compose(
        [
            v2.Resize(int(img_size / ratio), interpolation=v2.InterpolationMode.BICUBIC),
            v2.CenterCrop(img_size),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return pipeline(Image.open(path).convert("RGB"))


def test_classes_come_from_the_training_folders(data_imagenet_root):
    dm = module(data_imagenet_root)
    assert dm.classes == list(WNIDS) and dm.num_classes == 3 and dm.in_chans == 3
    dm.setup()
    labels = [label for _, label in dm.splits.val.dataset.samples]
    assert labels == [0, 0, 1, 1, 2, 2]
    assert len(dm.splits.train) == 12 and len(dm.splits.train_eval) == 12


def test_validation_may_cover_fewer_classes_with_the_same_labels(data_imagenet_root):
    for path in (data_imagenet_root / "val" / WNIDS[0]).iterdir():
        path.unlink()
    (data_imagenet_root / "val" / WNIDS[0]).rmdir()
    dm = module(data_imagenet_root)
    dm.setup()
    assert [label for _, label in dm.splits.val.dataset.samples] == [1, 1, 2, 2]  # not renumbered to 0, 0, 1, 1


def test_a_validation_class_unknown_to_training_is_an_error(data_imagenet_root):
    write_jpeg(data_imagenet_root / "val" / "n09999999" / "x.JPEG", np.random.default_rng(1))
    with pytest.raises(ValueError, match="n09999999"):
        module(data_imagenet_root)


# One grey level on the normalised scale of the channel with the smallest std.
ONE_GREY_LEVEL = 1 / 255 / min(IMAGENET_STD) + 1e-5


@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
def test_loader_shapes_and_normalisation(data_imagenet_root, decoder):
    dm = module(data_imagenet_root, decoder=decoder)
    imgs, labels, _ = next(iter(dm.train_dataloader()))
    assert imgs.shape == (4, 3, 32, 32) and imgs.dtype == torch.float32 and labels.dtype == torch.int64
    assert len(dm.train_dataloader()) == 12 // 4
    val_imgs, val_labels = next(iter(dm.val_dataloader()))
    assert val_imgs.shape == (4, 3, 32, 32) and val_labels.tolist() == [0, 0, 1, 1]
    first = sorted((data_imagenet_root / "val" / WNIDS[0]).iterdir())[0]
    expected = reference_eval(first, 32)
    if decoder == "pil":  # the reference's path: PIL decode and PIL bicubic resampling, exactly
        torch.testing.assert_close(val_imgs[0], expected, atol=1e-5, rtol=0)
    else:  # same decoded pixels; torchvision's bicubic rounds a few pixels one grey level differently
        difference = (val_imgs[0] - expected).abs()
        assert difference.max() <= ONE_GREY_LEVEL and (difference > 1e-5).float().mean() < 0.02
    assert dm.mean == IMAGENET_MEAN and dm.std == IMAGENET_STD
    assert torch.equal(dm.sample_images(2), val_imgs[:2])


def test_eval_transform_is_deterministic_and_follows_the_resize_ratio(data_imagenet_root):
    path = next((data_imagenet_root / "train" / WNIDS[1]).iterdir())
    img = Image.open(path).convert("RGB")
    transform = eval_transform(48, IMAGENET_MEAN, IMAGENET_STD, resize_ratio=0.75)
    torch.manual_seed(0)
    first = transform(img)
    torch.manual_seed(1)
    assert torch.equal(transform(img), first) and first.shape == (3, 48, 48)
    torch.testing.assert_close(first, reference_eval(path, 48, ratio=0.75), atol=1e-5, rtol=0)
    assert transform.resize_size == 64


def test_pretrain_transform_output_and_randomness(data_imagenet_root):
    img = Image.open(next((data_imagenet_root / "train" / WNIDS[2]).iterdir())).convert("RGB")
    transform = pretrain_transform(32, (0.2, 1.0), True, IMAGENET_MEAN, IMAGENET_STD)
    torch.manual_seed(0)
    outputs = [transform(img) for _ in range(3)]
    assert all(out.shape == (3, 32, 32) and out.dtype == torch.float32 for out in outputs)
    assert not torch.equal(outputs[0], outputs[1])
    torch.manual_seed(0)
    assert torch.equal(transform(img), outputs[0])


def test_sample_crop_follows_random_resized_crop():
    rng = np.random.default_rng(0)
    scale, ratio = (0.2, 1.0), (3 / 4, 4 / 3)
    for _ in range(300):
        height, width = (int(v) for v in rng.integers(20, 120, size=2))
        top, left, h, w = sample_crop(height, width, scale, ratio, rng.random(40).tolist())
        assert 0 <= top <= height - h and 0 <= left <= width - w and h > 0 and w > 0
    # The first attempt, by hand: area fraction 0.2 + 0.8 * 0.5, aspect ratio exp(0) = 1, offsets at the ends.
    uniforms = [0.5, 0.5, 0.0, 0.999] + [0.0] * 36
    side = round(math.sqrt(100 * 100 * 0.6))
    assert sample_crop(100, 100, scale, ratio, uniforms) == (0, 100 - side, side, side)
    # No attempt fits a very wide image at scale 1 with a square-ish ratio: centre crop, ratio clamped to 4/3.
    assert sample_crop(10, 100, (1.0, 1.0), ratio, [0.5] * 40) == (0, (100 - 13) // 2, 10, 13)


def test_grayscale_and_cmyk_files_are_served_as_rgb(data_imagenet_root):
    rng = np.random.default_rng(2)
    for i, mode in enumerate(("L", "CMYK")):
        write_jpeg(data_imagenet_root / "val" / WNIDS[0] / f"{WNIDS[0]}_odd_{i}.JPEG", rng, mode)
    dm = module(data_imagenet_root, batch_size=8)
    imgs, _ = next(iter(dm.val_dataloader()))
    assert imgs.shape == (8, 3, 32, 32)


def test_single_channel_mode(data_imagenet_root):
    dm = module(data_imagenet_root, in_chans=1, mean=(0.5,), std=(0.5,))
    imgs, _, _ = next(iter(dm.train_dataloader()))
    assert imgs.shape == (4, 1, 32, 32)


def test_train_samples_and_knn_caps(data_imagenet_root):
    dm = module(data_imagenet_root, train_samples=8, knn_train_samples=5, knn_val_samples=3)
    dm.setup()
    assert len(dm.splits.train) == 8
    train, val = dm.knn_dataloaders()
    assert len(train.dataset) == 5 and len(val.dataset) == 3
    again = module(data_imagenet_root, train_samples=8)
    again.setup()
    assert again.splits.train.dataset.indices == dm.splits.train.dataset.indices


def test_val_size_holds_training_images_out_and_the_val_folder_stays_the_test_split(data_imagenet_root):
    whole = module(data_imagenet_root)
    whole.setup()
    assert whole.splits.val_is_test and "no images held out" in whole.validation_split()  # the paper's protocol
    dm = module(data_imagenet_root, val_size=0.25)
    dm.setup()
    splits, total = dm.splits, len(whole.splits.train_eval)
    held_out = {splits.val.dataset.dataset.samples[i][0] for i in splits.val.dataset.indices}
    trained = {splits.train_eval.dataset.dataset.samples[i][0] for i in splits.train_eval.dataset.indices}
    assert len(held_out) == round(0.25 * total) and len(trained) == total - len(held_out) and not held_out & trained
    assert all("/train/" in path for path in held_out)  # cut from the training folder
    assert len(splits.test) == len(whole.splits.test) and not splits.val_is_test
    bank, queries = dm.knn_dataloaders("test")
    assert len(bank.dataset) == len(trained) and len(queries.dataset) == len(splits.test)


@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_corrupt_image_is_named(data_imagenet_root, damage, decoder):
    path = data_imagenet_root / "train" / WNIDS[1] / f"{WNIDS[1]}_train_0001.JPEG"
    content = path.read_bytes()
    damaged = {"garbage": b"definitely not a JPEG", "truncated": content[: len(content) // 2], "empty": b""}
    path.write_bytes(damaged[damage])
    dm = module(data_imagenet_root, decoder=decoder)
    dm.setup()
    index = [p for p, _ in dm.splits.train_eval.dataset.samples].index(str(path))
    with pytest.raises(CorruptDataError) as error:
        dm.splits.train_eval[index]
    message = str(error.value)
    assert message.startswith(f"cannot decode image {path}: ") and "\n" not in message
    assert ".cpp" not in message  # torchvision's source location is noise to the user


def test_missing_root_names_the_expected_layout(tmp_path):
    root = tmp_path / "no-imagenet"
    with pytest.raises(FileNotFoundError) as error:
        module(root, group="imagenet")
    message = str(error.value)
    assert message.startswith("ImageNet not found: expected ")
    assert f"{root}/train/<class>/*.JPEG" in message and f"{root}/val/<class>/*.JPEG" in message
    assert "data.root=" in message and "\n" not in message


def test_root_without_a_split_folder(data_imagenet_root):
    for path in sorted((data_imagenet_root / "val").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (data_imagenet_root / "val").rmdir()
    with pytest.raises(FileNotFoundError) as error:
        module(data_imagenet_root)
    assert f"{data_imagenet_root / 'val'} is missing" in str(error.value)
    (data_imagenet_root / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="val has no images"):
        module(data_imagenet_root).setup()


def test_custom_split_folder_names(data_imagenet_root):
    (data_imagenet_root / "val").rename(data_imagenet_root / "validation")
    dm = module(data_imagenet_root, val_dir="validation")
    assert len(dm.splits.val) == 6


def test_imagenet_group_has_imagenet_settings(data_imagenet_root):
    dm = data_module("imagenet", root=str(data_imagenet_root), num_workers=0, persistent_workers=False)
    assert type(dm) is ImageNetDataModule and isinstance(dm, ImageFolderDataModule)
    assert (dm.img_size, dm.in_chans, dm.crop_scale) == (224, 3, (0.2, 1.0))
    assert (dm.mean, dm.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert dm.eval_resize_ratio == 0.875 and dm.interpolation == "bicubic" and dm.num_classes == 3


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"interpolation": "lanczos"}, "interpolation='lanczos'"),
        ({"eval_resize_ratio": 1.5}, "eval_resize_ratio=1.5"),
        ({"crop_scale": (0.2, 1.2)}, "crop_scale=[0.2, 1.2]"),
        ({"std": (0.2, 0.0, 0.2)}, "std=[0.2, 0.0, 0.2]"),
        ({"batch_size": 0}, "batch_size=0"),
    ],
)
def test_invalid_values_raise_one_line_value_errors(data_imagenet_root, overrides, named):
    with pytest.raises(ValueError) as error:
        module(data_imagenet_root, **overrides)
    assert named in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("saved_mode", ["RGB", "L", "CMYK"])
def test_both_decoders_give_the_same_pixels(tmp_path, saved_mode):
    path = tmp_path / f"{saved_mode}.JPEG"
    write_jpeg(path, np.random.default_rng(3), mode=saved_mode)
    for mode in ("RGB", "L"):
        tensor = ImageLoader(mode, "torchvision")(str(path))
        pil = ImageLoader(mode, "pil")(str(path))
        assert tensor.dtype == torch.uint8 and tensor.shape[0] == (3 if mode == "RGB" else 1)
        assert torch.equal(tensor, v2.functional.pil_to_tensor(pil))


def test_png_files_decode_too(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA").save(path)
    tensor = ImageLoader("RGB", "torchvision")(str(path))
    assert torch.equal(tensor, v2.functional.pil_to_tensor(Image.open(path).convert("RGB")))


def test_an_unknown_decoder_is_refused_before_any_work(data_imagenet_root):
    with pytest.raises(ValueError, match="decoder='opencv' must be one of torchvision, pil"):
        module(data_imagenet_root, decoder="opencv")
