"""The item kNN diagnostic (task=item_knn): an item's square crop and its mask-weighted token mean, checked by hand,
and the job end to end on tiny generated scenes; bad settings stop with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import compose_config, run_script
from extras import needs_extra
from test_dense_data import write_tiny_scenes

from mae.evaluation.items import crop_square, masked_mean, square_box
from mae.jobs.item_knn import item_features, item_knn
from mae.models import mae_vit_tiny_patch7
from mae.models.dense.backbone import vit_backbone_from_mae

COUNTS = {"training": 6, "validation": 3, "test": 2}


def test_the_square_box_is_centred_on_the_item_with_its_longer_side():
    assert square_box([4.0, 6.0, 10.0, 10.0]) == (4, 5, 6)  # 6 wide, 4 high: 6 x 6 around (7, 8)
    assert square_box([3.0, 0.0, 5.0, 8.0]) == (0, 0, 8)


def test_crop_square_cuts_the_box_out_and_fills_what_lies_outside():
    image = torch.arange(2 * 20 * 20, dtype=torch.float32).view(2, 20, 20)
    # At its own size the resize changes nothing: exactly the square's pixels.
    assert torch.equal(crop_square(image, [4.0, 6.0, 10.0, 10.0], 6, -1.0), image[:, 5:11, 4:10])
    # A box over the top-left corner: the part outside the image is the fill.
    corner = crop_square(image, [-2.0, -2.0, 2.0, 2.0], 4, -1.0)
    assert torch.equal(corner[:, 2:, 2:], image[:, :2, :2])
    assert (corner[:, :2] == -1).all() and (corner[:, :, :2] == -1).all()
    assert crop_square(image, [4.0, 6.0, 10.0, 10.0], 28, 0.0).shape == (2, 28, 28)


def test_masked_mean_weights_each_patch_by_its_covered_fraction():
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]])  # (D=2, 2, 2)
    mask = torch.zeros(4, 4)
    mask[:2, :2] = 1  # the top-left patch, whole
    mask[:2, 2] = 1  # half of the top-right one
    expected = (tokens[:, 0, 0] + 0.5 * tokens[:, 0, 1]) / 1.5
    assert torch.allclose(masked_mean(tokens, mask, 2), expected)
    assert masked_mean(tokens, torch.zeros(4, 4), 2) is None
    with pytest.raises(ValueError, match=r"a mask of \(4, 6\) pixels does not fit a \(2, 2\) grid of 2-pixel patches"):
        masked_mean(tokens, torch.zeros(4, 6), 2)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    needs_extra("pycocotools", "detect")  # the COCO masks
    root = tmp_path_factory.mktemp("item_knn")
    write_tiny_scenes(root / "fashion_mnist_scenes", counts=COUNTS)
    return root


def visible_items(data_dir: Path, split: str) -> int:
    content = json.loads((data_dir / "fashion_mnist_scenes" / "annotations" / f"instances_{split}.json").read_text())
    return sum(1 for annotation in content["annotations"] if not annotation["iscrowd"] and annotation["area"] > 0)


def test_item_knn_classifies_every_validation_item_in_both_views(data_dir, tmp_path):
    overrides = ["task=item_knn", f"paths.data_dir={data_dir}", "pretrained=null", "item_knn.train_items=5"]
    results = item_knn(compose_config(overrides, output_dir=tmp_path / "run"))
    assert results == json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "finished" and results["pretrained"] is None and "provenance" in results
    assert results["train_items"] == 5  # the bank stops at item_knn.train_items
    assert results["val_items"] == visible_items(data_dir, "validation") > 0
    assert results["block"] == 5  # the last of the default encoder's 6 blocks
    for key in ("val_top1_alone", "val_top1_in_scene"):
        assert 0.0 <= results[key] <= 100.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("item_knn.crop=30", "crop_size=30x30 is not divisible by the patch size 7"),
        ("item_knn.train_items=0", "item_knn.train_items=0 must be an integer of at least 1"),
        ("item_knn.block=6", "item_knn.block=6 must be a block index in [-6, 6) or null (the last)"),
    ],
)
def test_bad_settings_stop_with_one_line(data_dir, tmp_path, override, message):
    done = run_script(tmp_path / "run", "task=item_knn", f"paths.data_dir={data_dir}", "pretrained=null", override)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert not (tmp_path / "run" / "results.json").exists()


class OneScene:
    """A dataset of one scene, shaped as CocoInstances serves it."""

    annotation_file = "one scene"

    def __init__(self, image: torch.Tensor, target: dict) -> None:
        self.sample = (image, target)

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        return self.sample


def test_an_item_that_fills_its_scene_looks_the_same_in_both_views():
    # A scene of the pre-training's size whose one item covers it: cut out and resized to 28 pixels it is the scene
    # itself, so the two views must give the same feature; a crowd region is left out.
    torch.manual_seed(0)
    encoder = mae_vit_tiny_patch7(in_chans=1)
    alone = vit_backbone_from_mae(encoder, 28, [5], 0.0, False, None).eval()
    in_scene = vit_backbone_from_mae(encoder, 28, [5], 0.0, False, None).eval()
    image = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    target = {
        "boxes": torch.tensor([[0.0, 0.0, 28.0, 28.0], [0.0, 0.0, 5.0, 5.0]]),
        "masks": torch.ones(2, 28, 28, dtype=torch.uint8),
        "labels": torch.tensor([3, 1]),
        "iscrowd": torch.tensor([0, 1]),
    }
    features = item_features(OneScene(image, target), alone, in_scene, 28, [0.3], [0.35], None)
    assert features.labels.tolist() == [2]
    assert torch.allclose(features.alone, features.in_scene, atol=1e-5)
    assert torch.allclose(features.alone.norm(dim=1), torch.ones(1))
