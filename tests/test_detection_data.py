"""Detection data: Detectron2's ViTDet large-scale jitter on ``tv_tensors``, the evaluation transform and the data
module, on a fake COCO-format reader (items as :class:`~mae.data.dense.coco.CocoInstances` serves them)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_one_line
from torch.nn import functional as tf
from torch.utils.data import Dataset, TensorDataset

from mae.data.dense import DetectionDataModule, DetectionEvalTransform, LargeScaleJitter, collate_detection
from mae.data.dense.detection_transforms import crop_offsets, mask_boxes, resize_scale_size
from mae.data.loaders import LoaderSettings

PAD = (0.25, 0.5, 0.75)


def instances(
    height: int, width: int, boxes: list[list[int]], iscrowd: list[int] | None = None, image_id: int = 0
) -> tuple[torch.Tensor, dict]:
    """An RGB image of rectangles (instance k, label k + 1, painted grey level 40 (k + 1) + 60 on black) whose masks
    are their integer boxes, with a target in CocoInstances' format."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    masks = torch.zeros(len(boxes), height, width, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        image[:, y1:y2, x1:x2] = 40 * (k + 1) + 60
        masks[k, y1:y2, x1:x2] = 1
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.arange(1, len(boxes) + 1),
        "masks": masks,
        "iscrowd": torch.tensor(iscrowd or [0] * len(boxes), dtype=torch.int64),
        "area": masks.flatten(1).sum(1).float(),
        "image_id": image_id,
    }
    return image, target


def jitter(**settings) -> LargeScaleJitter:
    args = dict(output_size=32, scale_range=(0.1, 2.0), hflip=0.5, pad_value=PAD, recompute_boxes=False)
    return LargeScaleJitter(**{**args, **settings})


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uniforms(seed: int) -> list[float]:
    """The flip, scale and crop uniforms the jitter draws from a generator seeded with ``seed``."""
    return torch.rand(3, generator=seeded(seed)).tolist()


def interior(masks: torch.Tensor) -> torch.Tensor:
    """The pixels of ``(N, H, W)`` masks whose 8 neighbours are in the mask too (beyond the image counts as
    outside): there a bilinear pixel blends nothing but its own instance."""
    padded = tf.pad(masks.float(), (1, 1, 1, 1))
    return -tf.max_pool2d(-padded[:, None], 3, 1)[:, 0] > 0.5


# -- the transforms ------------------------------------------------------------------------------------------------
def test_resize_and_crop_follow_detectron2_by_hand():
    # 100x200 to 64 at scale 0.5: factor min(32 / 100, 32 / 200) = 0.16.
    assert resize_scale_size(100, 200, (64, 64), 0.5) == (16, 32)
    assert resize_scale_size(100, 200, (64, 64), 2.0) == (64, 128)  # factor 0.64
    assert resize_scale_size(100, 200, (48, 96), 1.0) == (48, 96)  # (out_h, out_w): both fit exactly
    assert resize_scale_size(1, 1000, (64, 64), 0.1) == (1, 6)  # 0.0064 rounds to 0: kept at 1 pixel
    # Only a side larger than the output moves, both by the same uniform; rounded half to even as NumPy.
    assert crop_offsets(64, 128, (64, 64), 0.5) == (0, 32)
    assert crop_offsets(64, 128, (64, 64), 0.99) == (0, 63)
    assert crop_offsets(69, 74, (64, 64), 0.5) == (2, 5)  # 2.5 -> 2, 5.0 -> 5
    assert crop_offsets(16, 32, (64, 64), 0.7) == (0, 0)


def test_boxes_masks_and_pixels_stay_aligned_across_seeds_and_flips():
    image, target = instances(48, 80, [[2, 3, 30, 20], [40, 10, 78, 44], [10, 25, 35, 46], [60, 0, 66, 8]])
    transform = jitter()
    flips, dropped, checked = set(), 0, 0
    for seed in range(60):
        out, result = transform(image, target, seeded(seed))
        flips.add(uniforms(seed)[0] < 0.5)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert result.keys() == target.keys() and result["image_id"] == 0
        assert result["boxes"].dtype == torch.float32 and result["masks"].dtype == torch.uint8
        assert result["masks"].shape[1:] == (32, 32) and len(result["labels"]) == len(result["masks"])
        dropped += 4 - len(result["labels"])
        assert torch.equal(result["area"], result["masks"].flatten(1).sum(1).float())
        assert not result["iscrowd"].any()
        # Each box is its mask's pixel extent (the box moved by its corners, the mask resampled at pixel centres).
        torch.testing.assert_close(result["boxes"], mask_boxes(result["masks"]), atol=1.0, rtol=0)
        assert result["masks"].flatten(1).any(1).all()
        # The image moved with the masks: inside each mask the pixels are its rectangle's grey.
        for label, inside in zip(result["labels"].tolist(), interior(result["masks"])):
            if inside.any():
                checked += 1
                expected = torch.full_like(out[:, inside], (40 * label + 60) / 255)
                torch.testing.assert_close(out[:, inside], expected, atol=1.5 / 255, rtol=0)
    assert flips == {True, False} and dropped > 0 and checked > 60


def test_every_output_has_the_output_size_padded_with_pad_value():
    image, target = instances(48, 80, [[2, 3, 30, 20]])
    # 48x80 at scale 0.5 to (24, 40): factor min(12 / 48, 20 / 80) = 0.25 -> 12x20, padded bottom and right.
    out, result = jitter(output_size=(24, 40), scale_range=(0.5, 0.5))(image, target, seeded(0))
    assert out.shape == (3, 24, 40) and result["masks"].shape == (1, 24, 40)
    pad = torch.tensor(PAD).view(3, 1)
    assert torch.equal(out[:, 12:].flatten(1), pad.expand(3, 12 * 40))
    assert torch.equal(out[:, :, 20:].flatten(1), pad.expand(3, 24 * 20))
    assert not result["masks"][:, 12:].any() and not result["masks"][:, :, 20:].any()
    assert float(out[:, :12, :20].max()) > 0.3  # the image itself, not padding
    # Larger than the output on both sides: cropped, no padding.
    out, _ = jitter(output_size=(24, 40), scale_range=(2.0, 2.0))(image, target, seeded(1))
    assert out.shape == (3, 24, 40)


def test_crowds_and_instances_cropped_away_or_shrunk_to_nothing_are_dropped():
    corners = [[0, 0, 8, 8], [24, 24, 40, 40], [56, 56, 64, 64], [30, 0, 34, 4]]
    image, target = instances(64, 64, corners, iscrowd=[0, 0, 0, 1])
    # Scale 2 on 64 -> 32: factor 1, a 32x32 crop at (o, o), o = round(32 u): for 9.6 < o < 22.4 the first and
    # third rectangles lie outside; the crowd (label 4) is never served.
    transform = jitter(scale_range=(2.0, 2.0), hflip=0.0)
    seed = next(s for s in range(100) if 0.3 < uniforms(s)[2] < 0.7)
    _, result = transform(image, target, seeded(seed))
    offset = round(32 * uniforms(seed)[2])
    assert result["labels"].tolist() == [2]
    assert result["boxes"].tolist() == [[24.0 - offset, 24.0 - offset, 40.0 - offset, 40.0 - offset]]
    for seed in range(20):
        assert 4 not in transform(image, target, seeded(seed))[1]["labels"].tolist()
    # A 1-pixel-wide rectangle at factor 0.02 (100x100 to 2x2): its box keeps a width of 0.02 but its mask has no
    # pixel left, so it goes (Detectron2 filters by box and by mask).
    image, target = instances(100, 100, [[10, 10, 11, 90], [0, 0, 100, 100]])
    _, result = jitter(output_size=10, scale_range=(0.2, 0.2), hflip=0.0)(image, target, seeded(0))
    assert result["labels"].tolist() == [2] and result["boxes"].tolist() == [[0.0, 0.0, 2.0, 2.0]]
    # No instance left at all: empty tensors of the right shapes.
    _, result = transform(*instances(64, 64, [[0, 0, 8, 8]], iscrowd=[1]), seeded(0))
    assert result["boxes"].shape == (0, 4) and result["masks"].shape == (0, 32, 32) and result["labels"].shape == (0,)


def test_recomputed_boxes_are_the_masks_extents():
    masks = torch.zeros(2, 6, 10, dtype=torch.uint8)
    masks[0, 2:5, 3:8] = 1
    assert mask_boxes(masks).tolist() == [[3.0, 2.0, 8.0, 5.0], [0.0, 0.0, 0.0, 0.0]]
    image, target = instances(48, 80, [[2, 3, 30, 20], [40, 10, 78, 44]])
    for seed in range(10):
        _, result = jitter(recompute_boxes=True)(image, target, seeded(seed))
        assert torch.equal(result["boxes"], mask_boxes(result["masks"]))


def test_the_same_seed_gives_the_same_sample():
    image, target = instances(48, 80, [[2, 3, 30, 20], [40, 10, 78, 44]])
    transform = jitter()
    first, again, other = (transform(image, target, seeded(s)) for s in (5, 5, 6))
    assert torch.equal(first[0], again[0])
    assert all(torch.equal(first[1][key], again[1][key]) for key in ("boxes", "labels", "masks", "area"))
    assert not torch.equal(first[0], other[0])


def test_evaluation_scales_the_image_and_leaves_the_target_untouched():
    image, target = instances(30, 50, [[2, 3, 30, 20]], iscrowd=[1])
    out, result = DetectionEvalTransform()(image, target, seeded(0))
    assert result is target and bool(result["iscrowd"][0])
    assert out.shape == (3, 30, 50) and out.dtype == torch.float32
    torch.testing.assert_close(out, image.float() / 255)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("output_size", 0, "output_size=0 must be a positive integer or two of them"),
        ("output_size", [32, 32, 3], "output_size=[32, 32, 3] must be a positive integer or two of them"),
        ("scale_range", [2.0, 0.1], "scale_range=[2.0, 0.1] must be two numbers with 0 < low <= high"),
        ("scale_range", [0.0, 1.0], "scale_range=[0.0, 1.0] must be two numbers with 0 < low <= high"),
        ("hflip", 1.5, "hflip=1.5 must be a number in [0, 1]"),
        ("pad_value", [0.5, 2.0], "pad_value=[0.5, 2.0] must be one number in [0, 1] per channel"),
        ("pad_value", [], "pad_value=[] must be one number in [0, 1] per channel"),
        ("recompute_boxes", "yes", "recompute_boxes='yes' must be true or false"),
    ],
)
def test_bad_jitter_settings_are_refused_with_one_line(setting, value, message):
    with pytest.raises(ValueError) as error:
        jitter(**{setting: value})
    assert_one_line(error, message)


def test_a_pad_value_for_other_channels_is_refused_with_one_line():
    with pytest.raises(ValueError) as error:
        jitter(pad_value=(0.5,))(*instances(20, 20, [[0, 0, 5, 5]]), seeded(0))
    assert_one_line(error, "pad_value=[0.5] needs one value per channel; the image has 3")


# -- the data module -----------------------------------------------------------------------------------------------
class FakeInstances(Dataset):
    """CocoInstances' interface on items in memory: ``(image, target)`` items, ``class_names``,
    ``indices_with_instances()`` and ``check(samples)``, which it records."""

    def __init__(self, items: list[tuple[torch.Tensor, dict]], class_names: list[str]) -> None:
        self.items, self.class_names, self.checked = items, class_names, []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        return self.items[index]

    def indices_with_instances(self) -> list[int]:
        return [i for i, (_, target) in enumerate(self.items) if not target["iscrowd"].all()]

    def check(self, samples: int) -> None:
        self.checked.append(samples)


def fake_split(count: int, seed: int) -> list[tuple[torch.Tensor, dict]]:
    """``count`` images of varied sizes with 0-2 rectangles; image ``i`` has id ``seed * 100 + i``; every third has
    no instance and every fifth a crowd only."""
    rng = torch.Generator().manual_seed(seed)
    items = []
    for i in range(count):
        height, width = (int(v) for v in torch.randint(24, 60, (2,), generator=rng))
        boxes = [] if i % 3 == 0 else [[1, 1, width // 2, height // 2], [width // 3, height // 3, width, height]]
        boxes = boxes[: 1 + i % 2]
        crowd = [1] * len(boxes) if i % 5 == 1 else None
        items.append(instances(height, width, boxes, crowd, seed * 100 + i))
    return items


SPLITS = {"train": fake_split(12, 1), "val": fake_split(5, 2)}
CLASSES = ["cat", "dog", "kite"]


class FakeDetectionData(DetectionDataModule):
    """The data module reading the fake splits (named by their image folder) instead of COCO files."""

    def read_split(self, images: str, annotations: str) -> Dataset:
        return FakeInstances(SPLITS[images], list(CLASSES) if annotations != "other.json" else ["cat"])


def detection_data(**settings) -> FakeDetectionData:
    args = dict(
        train_images="train",
        train_annotations="train.json",
        val_images="val",
        val_annotations="val.json",
        test_images="val",
        test_annotations="val.json",
        in_chans=3,
        image_size=32,
        scale_range=[0.1, 2.0],
        hflip=0.5,
        recompute_boxes=False,
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        batch_size=2,
        num_workers=0,
        pin_memory=False,
        persistent_workers=False,
        seed=0,
        train_samples=None,
        check_samples=2,
        how_to_get="download COCO",
    )
    return FakeDetectionData(**{**args, **settings})


def served_ids(loader) -> list[int]:
    return [target["image_id"] for _, targets in loader for target in targets]


def test_training_serves_lists_of_jittered_images_with_instances_only():
    dm = detection_data()
    assert (dm.num_classes, dm.class_names, dm.image_size) == (3, CLASSES, (32, 32))
    assert dm.mean == (0.485, 0.456, 0.406) and dm.std == (0.229, 0.224, 0.225)
    assert dm.val_is_test and len(dm.datasets) == 2  # one reader for the validation and test split
    trainable = {100 + i for i in range(12) if i % 3 != 0 and i % 5 != 1}
    assert len(dm.splits.train) == len(trainable) == 6
    assert len(dm.splits.train_eval) == 12
    images, targets = next(iter(dm.train_dataloader()))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2
    assert all(image.shape == (3, 32, 32) and image.dtype == torch.float32 for image in images)
    assert all(target.keys() == {"boxes", "labels", "masks", "iscrowd", "area", "image_id"} for target in targets)
    assert sorted(served_ids(dm.train_dataloader())) == sorted(trainable)
    capped = detection_data(train_samples=4)
    assert len(capped.splits.train) == 4 and set(served_ids(capped.train_dataloader())) <= trainable


def test_evaluation_serves_every_image_at_its_size_with_its_target():
    dm = detection_data()
    loader = dm.val_dataloader()
    assert len(loader) == 3 and served_ids(loader) == [200 + i for i in range(5)]
    images, targets = next(iter(loader))
    for image, target, (raw, stored) in zip(images, targets, SPLITS["val"]):
        assert image.shape == raw.shape and target is stored
    assert images[0].shape != images[1].shape  # sizes differ within a batch


def test_loaders_repeat_for_a_seed_and_change_with_it():
    def first_batch(seed: int) -> tuple[list[torch.Tensor], list[dict]]:
        return next(iter(detection_data(seed=seed).train_dataloader()))

    (images, targets), (again, again_targets), (other, _) = first_batch(0), first_batch(0), first_batch(1)
    assert all(torch.equal(a, b) for a, b in zip(images, again))
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets, again_targets))
    assert not all(torch.equal(a, b) for a, b in zip(images, other))


def test_construction_checks_a_sample_of_each_split_once():
    dm = detection_data(check_samples=3)
    assert [dataset.checked for dataset in dm.datasets.values()] == [[3], [3]]
    separate = detection_data(test_images="train", test_annotations="train.json")
    assert not separate.val_is_test and len(separate.datasets) == 2
    assert separate.splits.test.dataset.items is SPLITS["train"]


def test_collate_keeps_lists_and_loaders_default_to_stacking():
    batch = [instances(10, 12, [[0, 0, 4, 4]]), instances(8, 9, [])]
    images, targets = collate_detection(batch)
    assert [image.shape for image in images] == [(3, 10, 12), (3, 8, 9)] and targets[1] is batch[1][1]
    settings = LoaderSettings(2, 0, False, False, 0, None, None)
    assert settings.collate_fn is None
    stacked = next(iter(settings.eval_loader(TensorDataset(torch.arange(4)))))
    assert torch.equal(stacked[0], torch.tensor([0, 1]))  # PyTorch's default collation, as before


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("image_size", 0, "image_size=0 must be a positive integer or two of them"),
        ("scale_range", [2.0, 0.1], "scale_range=[2.0, 0.1] must be two numbers with 0 < low <= high"),
        ("hflip", True, "hflip=True must be a number in [0, 1]"),
        ("recompute_boxes", 1, "recompute_boxes=1 must be true or false"),
        ("mean", [0.5], "must have in_chans=3 values each"),
        ("mean", "auto", "mean=auto and std=auto are not available"),
        ("in_chans", 2, "in_chans=2 must be 1 (grayscale) or 3 (RGB)"),
        ("train_images", "", "train_images='' must be a path"),
        ("test_annotations", None, "test_annotations=None must be a path"),
        ("batch_size", 0, "batch_size=0 must be an integer of at least 1"),
        ("check_samples", -1, "check_samples=-1 must be an integer of at least 0"),
        ("train_samples", 0, "train_samples=0 must be an integer of at least 1"),
        ("val_annotations", "other.json", "val_annotations=other.json has 1 categories that differ"),
    ],
)
def test_bad_settings_are_refused_with_one_line(setting, value, message):
    settings = {setting: value, **({"std": "auto"} if value == "auto" else {})}
    with pytest.raises(ValueError) as error:
        detection_data(**settings)
    assert_one_line(error, message)
