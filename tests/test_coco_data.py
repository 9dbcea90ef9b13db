"""Detection data: the COCO-instances reader on small datasets written in COCO's exact on-disk format (a JSON with
``info``, ``images``, ``annotations``, ``categories``; JPEG and PNG images), and the writer of the Fashion-MNIST
scenes' instances, read back through the reader. Masks decode through pycocotools (the ``detect`` extra)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import assert_one_line
from extras import needs_extra
from PIL import Image
from test_dense_data import fake_items, fake_sources, scene_settings

from mae.data import CorruptDataError
from mae.data.dense.coco import CocoInstances
from mae.data.dense.coco_writer import categories, encode_rle, image_record, instances_file, mask_area, mask_bbox
from mae.data.dense.scenes import ItemSource, SceneSettings, generate_split, write_scenes
from mae.data.fashion_mnist import CLASSES
from mae.runs.optional import MissingExtraError

HOW_TO_GET = "download COCO 2017 and set data.root"


@pytest.fixture
def coco_mask():
    return needs_extra("pycocotools.mask", "detect")


def box_mask(height: int, width: int, rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[rows, cols] = 1
    return mask


def small_coco(coco_mask) -> dict[str, Any]:
    """Four images (one without annotations, one with a crowd region only), non-contiguous category ids, masks as a
    polygon, an uncompressed RLE (counts by hand) and a compressed RLE, a box 0.5 px outside its image and three
    annotations that are skipped."""
    compressed = coco_mask.encode(np.asfortranarray(box_mask(4, 6, slice(0, 2), slice(4, 6))))
    compressed["counts"] = compressed["counts"].decode()  # as COCO's JSON stores it
    annotation = {"area": 1.0, "iscrowd": 0}
    return {
        "info": {"description": "a tiny COCO", "version": "1.0", "year": 2024},
        "licenses": [],
        "images": [
            {"id": 5, "file_name": "b.jpg", "width": 10, "height": 8, "license": 0},
            {"id": 2, "file_name": "a.png", "width": 6, "height": 4},
            {"id": 9, "file_name": "c.jpg", "width": 7, "height": 5},
            {"id": 11, "file_name": "d.png", "width": 3, "height": 2},
        ],
        "annotations": [
            # Polygon, the rectangle x 1-4, y 1-3: pixels of columns 1-3, rows 1-2.
            {**annotation, "id": 1, "image_id": 5, "category_id": 7, "bbox": [1, 1, 3, 2], "area": 6.0,
             "segmentation": [[1, 1, 4, 1, 4, 3, 1, 3]]},
            # Crowd, uncompressed RLE of rows 5-7 x columns 6-8, column by column: 6 empty columns and 5 rows (53
            # zeros), then 3 ones and 5 zeros three times, then the last column's 8 zeros.
            {**annotation, "id": 2, "image_id": 5, "category_id": 12, "bbox": [6, 5, 3, 3], "area": 9.0,
             "iscrowd": 1, "segmentation": {"counts": [53, 3, 5, 3, 5, 3, 8], "size": [8, 10]}},
            {**annotation, "id": 3, "image_id": 2, "category_id": 3, "bbox": [4, 0, 2, 2], "area": 4.0,
             "segmentation": compressed},
            # 0.5 px beyond the right edge, 0.4 px beyond the bottom: clipped.
            {**annotation, "id": 4, "image_id": 5, "category_id": 3, "bbox": [8, 6, 2.5, 2.4], "area": 4.0,
             "segmentation": [[8, 6, 10, 6, 10, 8, 8, 8]]},
            # Skipped: zero width, under 1 pixel of area, a polygon of 2 points.
            {**annotation, "id": 5, "image_id": 5, "category_id": 3, "bbox": [2, 2, 0, 3],
             "segmentation": [[2, 2, 2, 5, 2, 2]]},
            {**annotation, "id": 6, "image_id": 5, "category_id": 3, "bbox": [2, 2, 0.5, 1.5],
             "segmentation": [[2, 2, 2.5, 2, 2.5, 3.5]]},
            {**annotation, "id": 7, "image_id": 2, "category_id": 7, "bbox": [0, 0, 2, 2],
             "segmentation": [[0, 0, 2, 2]]},
            {**annotation, "id": 8, "image_id": 11, "category_id": 7, "bbox": [0, 0, 3, 2], "iscrowd": 1,
             "segmentation": {"counts": [0, 6], "size": [2, 3]}},
        ],
        "categories": [
            {"id": 7, "name": "cat", "supercategory": "animal"},
            {"id": 3, "name": "dog", "supercategory": "animal"},
            {"id": 12, "name": "bird", "supercategory": "animal"},
        ],
    }  # fmt: skip


def write_coco(
    root: Path, content: dict[str, Any], sizes: dict[str, tuple[int, int]] | None = None
) -> tuple[Path, Path]:
    """COCO as downloaded: ``root/images/<file_name>`` (RGB, of the JSON's size unless ``sizes`` says otherwise)
    and ``root/annotations/instances.json``; returns the two paths."""
    image_dir, annotation_file = root / "images", root / "annotations" / "instances.json"
    image_dir.mkdir(parents=True)
    annotation_file.parent.mkdir()
    rng = np.random.default_rng(0)
    for image in content["images"]:
        width, height = (sizes or {}).get(image["file_name"], (image["width"], image["height"]))
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(image_dir / image["file_name"])
    annotation_file.write_text(json.dumps(content))
    return image_dir, annotation_file


# -- the reader -------------------------------------------------------------------------------------------------------
def test_targets_follow_torchvisions_detection_convention(tmp_path, coco_mask):
    image_dir, annotation_file = write_coco(tmp_path, small_coco(coco_mask))
    dataset = CocoInstances(image_dir, annotation_file, 3, HOW_TO_GET)
    assert dataset.categories == [(3, "dog"), (7, "cat"), (12, "bird")] and dataset.num_classes == 3
    assert dataset.class_names == ["dog", "cat", "bird"]  # labels 1, 2, 3: sorted by category id
    assert dataset.image_ids == [2, 5, 9, 11] and len(dataset) == 4
    assert dataset.indices_with_instances() == [0, 1]  # 9 has no annotation, 11 only a crowd region
    assert dataset.skipped == {"box under 1 pixel": 2, "no polygon of 3 points": 1}

    image, target = dataset[1]
    assert image.shape == (3, 8, 10) and image.dtype == torch.uint8
    assert target["image_id"] == 5
    assert torch.equal(target["boxes"], torch.tensor([[1, 1, 4, 3], [6, 5, 9, 8], [8, 6, 10, 8]], dtype=torch.float32))
    assert torch.equal(target["labels"], torch.tensor([2, 3, 1]))
    assert torch.equal(target["iscrowd"], torch.tensor([0, 1, 0]))
    assert torch.equal(target["area"], torch.tensor([6.0, 9.0, 4.0]))
    places = [(slice(1, 3), slice(1, 4)), (slice(5, 8), slice(6, 9)), (slice(6, 8), slice(8, 10))]
    expected = np.stack([box_mask(8, 10, rows, cols) for rows, cols in places])
    assert target["masks"].dtype == torch.uint8 and torch.equal(target["masks"], torch.from_numpy(expected))

    image, target = dataset[0]  # the PNG, with the compressed RLE
    with Image.open(image_dir / "a.png") as png:
        assert torch.equal(image, torch.from_numpy(np.array(png)).permute(2, 0, 1))
    assert torch.equal(target["masks"], torch.from_numpy(box_mask(4, 6, slice(0, 2), slice(4, 6)))[None])
    assert target["boxes"].tolist() == [[4, 0, 6, 2]] and target["labels"].tolist() == [1]

    image, target = dataset[2]  # no annotations: empty tensors of the right shapes
    assert image.shape == (3, 5, 7) and target["image_id"] == 9
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["masks"].shape == (0, 5, 7) and target["masks"].dtype == torch.uint8
    for key, dtype in [("labels", torch.int64), ("iscrowd", torch.int64), ("area", torch.float32)]:
        assert target[key].shape == (0,) and target[key].dtype == dtype

    _, target = dataset[3]
    assert target["iscrowd"].tolist() == [1] and bool(target["masks"].all())
    grey, _ = CocoInstances(image_dir, annotation_file, 1, HOW_TO_GET)[1]
    assert grey.shape == (1, 8, 10)
    dataset.check(10)


def broken(content: dict[str, Any], change: str) -> dict[str, Any]:
    """A copy of ``content`` with one mistake."""
    content = copy.deepcopy(content)
    images, annotations, categories_ = content["images"], content["annotations"], content["categories"]
    if change == "duplicate image":
        images[1]["id"] = 5
    elif change == "duplicate category":
        categories_[2]["id"] = 3
    elif change == "unknown image":
        annotations[2]["image_id"] = 99
    elif change == "unknown category":
        annotations[0]["category_id"] = 4
    elif change == "missing file":
        images[2]["file_name"] = "missing.png"
    elif change == "box outside":
        annotations[0]["bbox"] = [8, 1, 3.5, 2]
    elif change == "negative box":
        annotations[0]["bbox"] = [8, 1, -1, 2]
    elif change == "RLE size":
        annotations[1]["segmentation"]["size"] = [10, 8]
    elif change == "RLE sum":
        annotations[1]["segmentation"]["counts"] = [53, 3, 5]
    elif change == "iscrowd":
        annotations[0]["iscrowd"] = 2
    elif change == "no bbox":
        del annotations[0]["bbox"]
    return content


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("duplicate image", ["image id 5 appears more than once"]),
        ("duplicate category", ["category id 3 appears more than once"]),
        ("unknown image", ["annotation id 3 has image_id=99, which 'images' does not list"]),
        ("unknown category", ["annotation id 1 has category_id=4, not one of the 3 category ids (3-12)"]),
        ("missing file", ["image id 9 has file_name='missing.png', which is not in"]),
        ("box outside", ["annotation id 1 has bbox=[8, 1, 3.5, 2]", "more than 1 pixel outside its 10x8 image"]),
        ("negative box", ["annotation id 1 has bbox=[8, 1, -1, 2]", "must not be negative"]),
        ("RLE size", ["annotation id 2 has an RLE of size [10, 8]", "'size': [8, 10]"]),
        ("RLE sum", ["annotation id 2 has RLE counts summing to 61", "10x8 image's 80 pixels"]),
        ("iscrowd", ["annotation id 1 has iscrowd=2, which must be 0 or 1"]),
        ("no bbox", ["annotation id 1 has no 'bbox'"]),
    ],
)
def test_bad_annotations_stop_on_construction_in_one_line(tmp_path, coco_mask, change, words):
    content = small_coco(coco_mask)
    image_dir, annotation_file = write_coco(tmp_path, content)
    annotation_file.write_text(json.dumps(broken(content, change)))  # the images of the correct file
    with pytest.raises(ValueError) as error:
        CocoInstances(image_dir, annotation_file, 3, HOW_TO_GET)
    assert_one_line(error, str(annotation_file), *words)


def test_bad_files_stop_on_construction_in_one_line(tmp_path, coco_mask):
    image_dir, annotation_file = write_coco(tmp_path / "ok", small_coco(coco_mask))
    with pytest.raises(FileNotFoundError) as error:
        CocoInstances(image_dir, tmp_path / "instances_val2017.json", 3, HOW_TO_GET)
    assert_one_line(error, f"annotation file {tmp_path / 'instances_val2017.json'} not found; {HOW_TO_GET}")
    with pytest.raises(FileNotFoundError) as error:
        CocoInstances(tmp_path / "val2017", annotation_file, 3, HOW_TO_GET)
    assert_one_line(error, f"image folder {tmp_path / 'val2017'} not found; {HOW_TO_GET}")
    with pytest.raises(ValueError) as error:
        CocoInstances(image_dir, annotation_file, 2, HOW_TO_GET)
    assert_one_line(error, "in_chans=2 must be 1 (grey) or 3 (RGB)")

    bad = tmp_path / "bad.json"
    for text, words in [
        ("{'images': []}", ["is not JSON (", "a COCO instances file is one JSON object"]),
        ("[1, 2]", ["holds a JSON list"]),
        ('{"images": [], "categories": []}', ["has no 'annotations'"]),
        ('{"images": {}, "annotations": [], "categories": []}', ["has a dict as 'images'"]),
        ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}', ["lists no image"]),
        ('{"images": [{"id": 1}], "annotations": [], "categories": []}', ["lists no category"]),
    ]:
        bad.write_text(text)
        with pytest.raises(ValueError) as error:
            CocoInstances(image_dir, bad, 3, HOW_TO_GET)
        assert_one_line(error, str(bad), *words)


def test_an_image_of_another_size_than_the_json_says_is_corrupt_on_load(tmp_path, coco_mask):
    image_dir, annotation_file = write_coco(tmp_path, small_coco(coco_mask), sizes={"c.jpg": (5, 7)})
    dataset = CocoInstances(image_dir, annotation_file, 3, HOW_TO_GET)
    dataset[1]
    with pytest.raises(CorruptDataError) as error:
        dataset[2]
    assert_one_line(error, f"image {image_dir / 'c.jpg'} is 5x7 pixels but {annotation_file} says 7x5")
    with pytest.raises(CorruptDataError):
        dataset.check(4)


def test_without_the_detect_extra_the_reader_stops_in_one_line_naming_it(tmp_path, monkeypatch):
    for name in [name for name in sys.modules if name == "pycocotools" or name.startswith("pycocotools.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    with pytest.raises(MissingExtraError) as error:
        CocoInstances(tmp_path, tmp_path / "instances.json", 3, HOW_TO_GET)
    assert_one_line(error, "COCO masks (data=coco, task=detect) needs pycocotools", "mae-lightning[detect]")
    # Writing the scenes' instances needs no extra.
    assert encode_rle(torch.ones(2, 2, dtype=torch.bool))["counts"] == [0, 4]


# -- the writer -------------------------------------------------------------------------------------------------------
def test_rle_counts_run_column_by_column_from_zeros():
    mask = torch.tensor([[0, 1], [0, 1], [1, 1]], dtype=torch.bool)
    # Columns: [0, 0, 1], [1, 1, 1].
    assert encode_rle(mask) == {"counts": [2, 4], "size": [3, 2]}
    assert encode_rle(mask.flip(1)) == {"counts": [0, 3, 2, 1], "size": [3, 2]}  # set first pixel: a run of 0 zeros
    assert encode_rle(torch.zeros(2, 3, dtype=torch.bool))["counts"] == [6]
    assert mask_bbox(mask) == [0, 0, 2, 3] and mask_area(mask) == 4
    hand = torch.zeros(8, 10, dtype=torch.bool)
    hand[5:8, 6:9] = True
    hand[2, 3] = True
    assert mask_bbox(hand) == [3, 2, 6, 6] and mask_area(hand) == 10  # x 3-8, y 2-7
    with pytest.raises(ValueError, match="empty mask"):
        mask_bbox(torch.zeros(2, 2, dtype=torch.bool))


def test_rle_round_trips_through_pycocotools(coco_mask):
    generator = torch.Generator().manual_seed(0)
    masks = [torch.rand(7, 5, generator=generator) < p for p in (0.1, 0.5, 0.9)]
    masks[1][:, 0] = False  # an empty first column
    masks[2][0, 0], masks[2][-1, -1] = True, True  # touching every edge, from the first pixel
    masks += [
        torch.ones(4, 6, dtype=torch.bool),
        torch.zeros(3, 3, dtype=torch.bool),
        torch.ones(1, 1, dtype=torch.bool),
    ]
    for mask in masks:
        rle = encode_rle(mask)
        height, width = mask.shape
        decoded = coco_mask.decode(coco_mask.frPyObjects(rle, height, width))
        assert np.array_equal(decoded, mask.numpy().astype(np.uint8)), rle
        assert int(coco_mask.area(coco_mask.frPyObjects(rle, height, width))) == mask_area(mask)


def test_hidden_items_are_counted_not_annotated():
    visible = torch.zeros(4, 4, dtype=torch.bool)
    visible[1:3, 2] = True
    record = image_record("x.png", 4, 4, [(3, torch.zeros(4, 4, dtype=torch.bool)), (5, visible)])
    assert record.hidden == 1 and len(record.annotations) == 1
    assert record.annotations[0] == {
        "category_id": 5,
        "segmentation": {"counts": [9, 2, 5], "size": [4, 4]},
        "area": 2,
        "bbox": [2, 1, 1, 2],
        "iscrowd": 0,
    }
    coco = instances_file([record, record], categories(["a", "b"], "letters"), {"description": "two"})
    assert [(a["id"], a["image_id"]) for a in coco["annotations"]] == [(1, 1), (2, 2)]
    assert coco["images"][1] == {"id": 2, "file_name": "x.png", "width": 4, "height": 4}
    assert coco["categories"] == [
        {"id": 1, "name": "a", "supercategory": "letters"},
        {"id": 2, "name": "b", "supercategory": "letters"},
    ]


def test_scenes_instances_read_back_as_their_masks_and_classes(tmp_path, coco_mask):
    counts = {"training": 3, "validation": 2}
    # Validation: two 28 px items on a 28 px canvas, the second exactly over the first: the first is hidden.
    covering = SceneSettings(28, (2, 2), (1.0, 1.0), 32, (0, 60), (3,), 0.0)
    item = fake_items("train", 1, seed=0)
    doubled = ItemSource("train", item.images.expand(2, -1, -1, -1), torch.tensor([2, 7]), torch.arange(2))
    settings = {"training": (fake_sources()["training"], scene_settings()), "validation": (doubled, covering)}

    def scenes(split: str):
        return generate_split(*settings[split], 0, split, counts[split])

    root = tmp_path / "scenes"
    write_scenes(root, {split: scenes(split) for split in counts}, {"seed": 0})
    info = json.loads((root / "scenes.json").read_text())
    assert info["counts"] == counts and info["hidden_items"]["validation"] == 2
    for split in counts:
        dataset = CocoInstances(root / "images" / split, root / "annotations" / f"instances_{split}.json", 1, "")
        assert dataset.class_names == list(CLASSES) and dataset.categories[0] == (1, CLASSES[0])
        assert dataset.image_ids == list(range(1, counts[split] + 1)) and dataset.skipped == {}
        hidden = 0
        for index, scene in enumerate(scenes(split)):
            image, target = dataset[index]
            visible = [instance for instance in scene.instances if instance.mask.any()]
            hidden += len(scene.instances) - len(visible)
            assert torch.equal(image, scene.image)
            assert torch.equal(target["masks"].bool(), torch.stack([instance.mask for instance in visible]))
            assert target["labels"].tolist() == [instance.category for instance in visible]
            for box, instance in zip(target["boxes"].tolist(), visible):
                rows, cols = torch.nonzero(instance.mask, as_tuple=True)
                assert box == [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
            assert target["area"].tolist() == [float(instance.mask.sum()) for instance in visible]
        assert hidden == info["hidden_items"][split]
    coco = json.loads((root / "annotations" / "instances_validation.json").read_text())
    assert {c["supercategory"] for c in coco["categories"]} == {"fashion"}
    assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
    assert coco["images"][0] == {"id": 1, "file_name": "scene_00000001.png", "width": 28, "height": 28}
