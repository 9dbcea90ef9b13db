"""Transfer-learning datasets, each read from a tiny copy written in its exact on-disk format.

Every image is a flat colour chosen by its true label (``PALETTE``), so the label the module serves can be checked
against the pixels it serves, file by file, whatever the dataset's way of storing labels.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_module
from hydra.utils import instantiate
from PIL import Image
from scipy.io import savemat

from mae.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    CorruptDataError,
    Flowers102DataModule,
    Food101DataModule,
    INaturalistDataModule,
    OxfordPetsDataModule,
    Places365DataModule,
)
from mae.data.transfer_datasets import TransferDataModule

PALETTE = ((200, 40, 40), (40, 200, 40), (40, 40, 200))  # the colour of label 0, 1, 2
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GARBAGE = b"\x80\x04 this is not what the format promises {["


@dataclass
class Tiny:
    """A tiny dataset copy and what its module must make of it."""

    cls: type[TransferDataModule]
    root: Path
    config: str
    num_classes: int
    sizes: tuple[int, int]
    """(training, evaluation) images."""
    missing: Path
    """A file whose absence the constructor must report."""
    metadata: Path
    """A metadata file the module parses."""
    image: Path | None = None
    """A training image file (None: the pixels are in the metadata)."""
    args: dict = field(default_factory=dict)
    """Dataset-specific constructor arguments."""


def write_jpeg(path: Path, label: int, index: int = 0) -> str:
    """A flat picture in the colour of ``label``, 16-40 px per side (JPEG keeps a flat colour exactly enough)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = (16 + (7 * index) % 25, 40 - (5 * index) % 25)
    Image.new("RGB", size, PALETTE[label]).save(path, quality=95)
    return str(path)


CONFIG_GROUPS = {
    CIFAR10DataModule: "cifar10",
    CIFAR100DataModule: "cifar100",
    Flowers102DataModule: "flowers102",
    Food101DataModule: "food101",
    INaturalistDataModule: "inat2018",
    OxfordPetsDataModule: "oxford_pets",
    Places365DataModule: "places365",
}


def module(cls: type[TransferDataModule], root: Path, **overrides) -> TransferDataModule:
    """``cls`` as its config group builds it, on a tiny copy at ``root``, small and in-process."""
    args = dict(root=str(root), img_size=32, batch_size=2, num_workers=0, pin_memory=False, persistent_workers=False)
    dm = data_module(CONFIG_GROUPS[cls], **{**args, **overrides})
    assert type(dm) is cls
    return dm


def served_label(img: torch.Tensor) -> int:
    """The palette index of a served (normalised) flat image."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(-1, 1, 1), torch.tensor(IMAGENET_STD).view(-1, 1, 1)
    colour = ((img * std + mean) * 255).mean(dim=(1, 2))
    return int(torch.cdist(colour[None], torch.tensor(PALETTE, dtype=torch.float32))[0].argmin())


def one_line_naming(error: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    message = str(error.value)
    assert str(path) in message and "\n" not in message, message
    for word in words:
        assert word in message, message


# -- tiny copies in the exact on-disk formats ------------------------------------------------------------------
def cifar_row(hwc: np.ndarray) -> np.ndarray:
    """The CIFAR row format as documented: the 1024 red values (row-major), then green, then blue."""
    return np.concatenate([hwc[:, :, channel].ravel() for channel in range(3)])


def cifar_rows(labels: list[int]) -> np.ndarray:
    return np.stack([cifar_row(np.full((32, 32, 3), PALETTE[label], dtype=np.uint8)) for label in labels])


def write_pickle(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(content, f, protocol=2)


CIFAR10_TRAIN = [[0, 1], [2, 0], [1, 2], [0, 1], [2, 2]]  # data_batch_1 .. data_batch_5
CIFAR10_TEST = [2, 1, 0]


def write_cifar10(root: Path) -> Tiny:
    folder = root / "cifar-10-batches-py"
    for number, labels in enumerate(CIFAR10_TRAIN, 1):
        write_pickle(
            folder / f"data_batch_{number}",
            {
                "batch_label": f"training batch {number} of 5",
                "labels": labels,
                "data": cifar_rows(labels),
                "filenames": [f"img_{number}_{i}.png" for i in range(len(labels))],
            },
        )
    write_pickle(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": CIFAR10_TEST,
            "data": cifar_rows(CIFAR10_TEST),
            "filenames": ["a.png", "b.png", "c.png"],
        },
    )
    write_pickle(
        folder / "batches.meta",
        {"num_cases_per_batch": 2, "label_names": ["airplane", "automobile", "bird"], "num_vis": 3072},
    )
    return Tiny(
        CIFAR10DataModule,
        root,
        "cifar10",
        3,
        (10, 3),
        missing=folder / "data_batch_4",
        metadata=folder / "data_batch_3",
    )


def write_cifar100(root: Path) -> Tiny:
    folder = root / "cifar-100-python"
    for name, fine in (("train", [0, 1, 2, 2, 1, 0]), ("test", [1, 2, 0])):
        coarse = [1 - (label % 2) for label in fine]  # deliberately not the fine labels: those are the task
        write_pickle(
            folder / name,
            {
                "filenames": [f"{name}_{i}.png" for i in range(len(fine))],
                "batch_label": f"{name} batch",
                "fine_labels": fine,
                "coarse_labels": coarse,
                "data": cifar_rows(fine),
            },
        )
    write_pickle(
        folder / "meta",
        {"fine_label_names": ["apple", "aquarium_fish", "baby"], "coarse_label_names": ["aquatic_mammals", "fish"]},
    )
    return Tiny(CIFAR100DataModule, root, "cifar100", 3, (6, 3), missing=folder / "meta", metadata=folder / "meta")


INAT_FOLDERS = {2017: "train_val_images", 2018: "train_val2018", 2019: "train_val2019"}
INAT_CATEGORIES = [(9, "Turdus migratorius", "Aves"), (2, "Quercus robur", "Plantae"), (5, "Vulpes vulpes", "Mammalia")]
INAT_LABEL = {2: 0, 5: 1, 9: 2}  # the ids sorted, numbered from 0


def coco_document(year: int, items: list[tuple[int, int, str]], categories: list[tuple[int, str, str]]) -> dict:
    """The official JSON structure for ``(image id, category id, file name)`` items; annotations out of order."""
    return {
        "info": {"year": year, "version": "1.0", "description": f"iNaturalist {year} tiny copy"},
        "licenses": [{"id": 1, "name": "CC BY-NC", "url": "http://creativecommons.org/licenses/by-nc/4.0/"}],
        "images": [
            {"id": image_id, "file_name": name, "width": 24, "height": 30, "license": 1} for image_id, _, name in items
        ],
        "annotations": [
            {"id": 100 + image_id, "image_id": image_id, "category_id": category}
            for image_id, category, _ in reversed(items)
        ],
        "categories": [{"id": category, "name": name, "supercategory": group} for category, name, group in categories],
    }


def write_inat(root: Path, year: int) -> Tiny:
    folder = INAT_FOLDERS[year]
    splits: dict[str, list[tuple[int, int, str]]] = {"train": [], "val": []}
    image_id = 1000
    for category, name, group in INAT_CATEGORIES:
        class_folder = name if year == 2017 else str(category)  # 2017 names class folders, 2018-19 number them
        for split, count in (("train", 2), ("val", 1)):
            for _ in range(count):
                image_id += 1
                file_name = f"{folder}/{group}/{class_folder}/{image_id:08x}.jpg"
                write_jpeg(root / file_name, INAT_LABEL[category], image_id)
                splits[split].append((image_id, category, file_name))
    for split, items in splits.items():
        (root / f"{split}{year}.json").write_text(json.dumps(coco_document(year, items, INAT_CATEGORIES)))
    return Tiny(
        INaturalistDataModule,
        root,
        f"inat{year}",
        3,
        (6, 3),
        missing=root / f"val{year}.json",
        metadata=root / f"train{year}.json",
        image=root / splits["train"][1][2],
        args={"year": year},
    )


PLACES_CATEGORIES = ["/a/airfield", "/b/bakery/shop", "/c/canyon"]


def write_places365(root: Path, small: bool = True, train_folder: str | None = None) -> Tiny:
    train_folder = train_folder or ("data_256_standard" if small else "data_large_standard")
    val_folder = "val_256" if small else "val_large"
    root.mkdir(parents=True, exist_ok=True)
    (root / "categories_places365.txt").write_text("".join(f"{name} {i}\n" for i, name in enumerate(PLACES_CATEGORIES)))
    train_lines, val_lines, index = [], [], 0
    for label, name in enumerate(PLACES_CATEGORIES):
        for number in range(1, 3):
            write_jpeg(root / train_folder / name.lstrip("/") / f"{number:08d}.jpg", label, index := index + 1)
            train_lines.append(f"{name}/{number:08d}.jpg {label}\n")
    for number, label in enumerate([2, 0, 1], 1):
        write_jpeg(root / val_folder / f"Places365_val_{number:08d}.jpg", label, number)
        val_lines.append(f"Places365_val_{number:08d}.jpg {label}\n")
    (root / "places365_train_standard.txt").write_text("".join(train_lines))
    (root / "places365_val.txt").write_text("".join(val_lines))
    return Tiny(
        Places365DataModule,
        root,
        "places365",
        3,
        (6, 3),
        missing=root / "categories_places365.txt",
        metadata=root / "places365_train_standard.txt",
        image=root / train_folder / "b/bakery/shop/00000002.jpg",
        args={"small": small},
    )


FLOWER_LABELS = [3, 1, 2, 2, 1, 3, 1, 3, 2]  # 1-based, of image_00001.jpg .. image_00009.jpg
FLOWER_SPLITS = {"trnid": [2, 3, 1], "valid": [5, 4, 6], "tstid": [7, 9, 8]}  # one image per class each


def write_flowers102(root: Path) -> Tiny:
    folder = root / "flowers-102"
    for image_id, label in enumerate(FLOWER_LABELS, 1):
        write_jpeg(folder / "jpg" / f"image_{image_id:05d}.jpg", label - 1, image_id)
    # As in the release: MATLAB doubles, row vectors.
    savemat(folder / "imagelabels.mat", {"labels": np.array([FLOWER_LABELS], dtype=np.float64)})
    savemat(folder / "setid.mat", {key: np.array([ids], dtype=np.float64) for key, ids in FLOWER_SPLITS.items()})
    return Tiny(
        Flowers102DataModule,
        root,
        "flowers102",
        3,
        (6, 3),
        missing=folder / "setid.mat",
        metadata=folder / "imagelabels.mat",
        image=folder / "jpg" / "image_00004.jpg",
    )


PET_BREEDS = [("Abyssinian", 1, 1), ("american_bulldog", 2, 1), ("Bengal", 1, 2)]  # class 1-3: (breed, species, id)


def write_oxford_pets(root: Path) -> Tiny:
    folder = root / "oxford-iiit-pet"
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    for label, (breed, species, breed_id) in enumerate(PET_BREEDS):
        for number, split in ((100, "trainval"), (101, "trainval"), (102, "test")):
            write_jpeg(folder / "images" / f"{breed}_{number}.jpg", label, number + label)
            lines[split].append(f"{breed}_{number} {label + 1} {species} {breed_id}\n")
    for split, split_lines in lines.items():
        (folder / "annotations").mkdir(parents=True, exist_ok=True)
        (folder / "annotations" / f"{split}.txt").write_text("".join(split_lines))
    return Tiny(
        OxfordPetsDataModule,
        root,
        "oxford_pets",
        3,
        (6, 3),
        missing=folder / "annotations" / "test.txt",
        metadata=folder / "annotations" / "trainval.txt",
        image=folder / "images" / "american_bulldog_101.jpg",
    )


FOOD_CLASSES = ["apple_pie", "baby_back_ribs", "baklava"]


def write_food101(root: Path) -> Tiny:
    folder = root / "food-101"
    listings: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for label, name in reversed(list(enumerate(FOOD_CLASSES))):  # JSON keys out of label order
        for number, split in ((1005649, "train"), (1014775, "train"), (1026328, "test")):
            write_jpeg(folder / "images" / name / f"{number + label}.jpg", label, number % 7 + label)
            listings[split].setdefault(name, []).append(f"{name}/{number + label}")
    (folder / "meta").mkdir(parents=True)
    for split, listing in listings.items():
        (folder / "meta" / f"{split}.json").write_text(json.dumps(listing))
    (folder / "meta" / "classes.txt").write_text("".join(f"{name}\n" for name in FOOD_CLASSES))
    return Tiny(
        Food101DataModule,
        root,
        "food101",
        3,
        (6, 3),
        missing=folder / "meta" / "classes.txt",
        metadata=folder / "meta" / "test.json",
        image=folder / "images" / "baklava" / "1005651.jpg",
    )


WRITERS: dict[str, Callable[[Path], Tiny]] = {
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "inat2017": lambda root: write_inat(root, 2017),
    "inat2018": lambda root: write_inat(root, 2018),
    "inat2019": lambda root: write_inat(root, 2019),
    "places365": write_places365,
    "flowers102": write_flowers102,
    "oxford_pets": write_oxford_pets,
    "food101": write_food101,
}
WITH_IMAGE_FILES = [name for name in WRITERS if not name.startswith("cifar")]


@pytest.fixture(params=list(WRITERS))
def data_tiny(request, tmp_path) -> Tiny:
    """Each dataset's tiny copy in turn."""
    return WRITERS[request.param](tmp_path / request.param)


@pytest.fixture(params=WITH_IMAGE_FILES)
def data_tiny_files(request, tmp_path) -> Tiny:
    """The tiny copies of the datasets whose images are files."""
    return WRITERS[request.param](tmp_path / request.param)


# -- what every module does -------------------------------------------------------------------------------------
def test_classes_and_split_sizes(data_tiny):
    dm = module(data_tiny.cls, data_tiny.root, **data_tiny.args)
    assert dm.num_classes == len(dm.classes) == data_tiny.num_classes
    dm.setup()
    assert (len(dm.splits.train_eval), len(dm.splits.val)) == data_tiny.sizes
    assert len(dm.splits.train) == data_tiny.sizes[0]


def test_every_served_image_carries_its_label(data_tiny):
    dm = module(data_tiny.cls, data_tiny.root, **data_tiny.args)
    for split in (dm.splits.train_eval, dm.splits.val):
        items = [split[i] for i in range(len(split))]
        assert all(img.shape == (3, 32, 32) and img.dtype == torch.float32 for img, _ in items)
        assert [label for _, label in items] == [served_label(img) for img, _ in items]
        assert {label for _, label in items} == {0, 1, 2}  # the copies have every class in both splits


def test_loader_batches(data_tiny):
    dm = module(data_tiny.cls, data_tiny.root, **data_tiny.args)
    imgs, labels, _ = next(iter(dm.train_dataloader()))
    assert imgs.shape == (2, 3, 32, 32) and imgs.dtype == torch.float32 and labels.dtype == torch.int64
    assert len(dm.train_dataloader()) == data_tiny.sizes[0] // 2
    val = torch.cat([imgs for imgs, _ in dm.val_dataloader()])
    assert val.shape == (data_tiny.sizes[1], 3, 32, 32)
    assert torch.equal(dm.sample_images(2), val[:2])


def test_grayscale_mode(data_tiny):
    dm = module(data_tiny.cls, data_tiny.root, in_chans=1, mean=(0.5,), std=(0.25,), **data_tiny.args)
    img, _ = dm.splits.val[0]
    train_img, _ = dm.splits.train[0]
    assert img.shape == train_img.shape == (1, 32, 32)


def test_a_missing_file_is_named_at_construction(data_tiny):
    data_tiny.missing.unlink()
    with pytest.raises(FileNotFoundError) as error:
        module(data_tiny.cls, data_tiny.root, **data_tiny.args)
    fix = "inat_comp/tree/master/" if data_tiny.cls is INaturalistDataModule else "data.download=true"
    one_line_naming(error, data_tiny.missing, "not found", "data.root=", fix)


def test_a_missing_root_names_the_layout(data_tiny, tmp_path):
    root = tmp_path / "elsewhere"
    with pytest.raises(FileNotFoundError) as error:
        module(data_tiny.cls, root, **data_tiny.args)
    one_line_naming(error, root, f"expected {root}/")


def test_a_corrupt_metadata_file_is_named(data_tiny):
    data_tiny.metadata.write_bytes(GARBAGE)
    with pytest.raises(CorruptDataError) as error:
        module(data_tiny.cls, data_tiny.root, **data_tiny.args).setup()  # construction or setup: either reports it
    one_line_naming(error, data_tiny.metadata, "corrupt")


def test_a_corrupt_image_is_named_when_served(data_tiny_files):
    data_tiny_files.image.write_bytes(GARBAGE)
    dm = module(data_tiny_files.cls, data_tiny_files.root, **data_tiny_files.args)
    dm.setup()  # images are only opened when served
    index = dm.splits.train_eval.dataset.paths.index(str(data_tiny_files.image))
    with pytest.raises(CorruptDataError) as error:
        dm.splits.train_eval[index]
    one_line_naming(error, data_tiny_files.image, "cannot decode image")


def test_the_hydra_config_instantiates(data_tiny, config_factory):
    cfg = config_factory(
        [
            f"data={data_tiny.config}",
            f"data.root={data_tiny.root}",
            "data.img_size=32",
            "data.num_workers=0",
            "data.batch_size=2",
        ]
    )
    assert cfg.data.root == str(data_tiny.root) and cfg.data.crop_scale == [0.08, 1.0]
    dm = instantiate(cfg.data)
    assert type(dm) is data_tiny.cls and dm.num_classes == data_tiny.num_classes
    assert all(getattr(dm, key) == value for key, value in data_tiny.args.items())
    assert (dm.mean, dm.std, dm.interpolation) == (IMAGENET_MEAN, IMAGENET_STD, "bicubic")
    assert len(dm.splits.val) == data_tiny.sizes[1]


def test_default_config_root_is_the_named_data_folder(data_tiny, config_factory):
    cfg = config_factory([f"data={data_tiny.config}"])
    assert Path(cfg.data.root) == Path(cfg.paths.data_dir) / data_tiny.config
    assert cfg.data.download is False and cfg.data.img_size == 224


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"eval_resize_ratio": 0.0}, "eval_resize_ratio=0.0"),
        ({"crop_scale": (0.5, 0.1)}, "crop_scale=[0.5, 0.1]"),
        ({"interpolation": "lanczos"}, "interpolation='lanczos'"),
        ({"batch_size": 0}, "batch_size=0"),
    ],
)
def test_invalid_values_raise_one_line_value_errors(tmp_path, overrides, named):
    tiny = write_food101(tmp_path / "food")
    with pytest.raises(ValueError) as error:
        module(tiny.cls, tiny.root, **overrides)
    assert named in str(error.value) and "\n" not in str(error.value)


DOWNLOADERS = {
    "cifar10": ("CIFAR10", 10),
    "cifar100": ("CIFAR100", 100),
    "places365": ("Places365", 365),
    "flowers102": ("Flowers102", 102),
    "oxford_pets": ("OxfordIIITPet", 37),
    "food101": ("Food101", 101),
}


@pytest.mark.parametrize("name", list(DOWNLOADERS))
def test_download_happens_in_prepare_data_with_torchvision(tmp_path, monkeypatch, name):
    calls = []

    def fake_torchvision_dataset(root, download, **kwargs):  # writes the layout torchvision would, no network
        calls.append((root, download))
        WRITERS[name](Path(root))

    torchvision_name, release_classes = DOWNLOADERS[name]
    monkeypatch.setattr(f"torchvision.datasets.{torchvision_name}", fake_torchvision_dataset)
    root = tmp_path / "download-here"
    dm = module(WRITERS[name](tmp_path / "probe").cls, root, download=True)  # nothing there yet: no error
    assert calls == [] and dm.num_classes == release_classes  # known before the download: the model comes first
    dm.prepare_data()
    assert calls and all(call == (str(root), True) for call in calls)
    assert dm.num_classes == 3 and len(dm.splits.val) == 3
    dm.prepare_data()  # everything there: no second download
    assert len(calls) == (2 if name == "places365" else 1)  # Places365: the training and the validation archives


# -- CIFAR --------------------------------------------------------------------------------------------------------
def test_cifar_pixels_are_read_in_the_documented_layout(tmp_path):
    tiny = write_cifar10(tmp_path)
    picture = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # (H, W, RGB)
    test_batch = tiny.root / "cifar-10-batches-py" / "test_batch"
    write_pickle(
        test_batch,
        {
            "batch_label": "testing batch 1 of 1",
            "labels": [1],
            "data": cifar_row(picture)[None],
            "filenames": ["x.png"],
        },
    )
    dm = module(CIFAR10DataModule, tiny.root)
    dm.setup()
    img, label = dm.splits.val.dataset[0]
    assert label == 1 and img.dtype == torch.uint8
    assert torch.equal(img, torch.from_numpy(picture).permute(2, 0, 1))
    gray = module(CIFAR10DataModule, tiny.root, in_chans=1, mean=(0.5,), std=(0.5,))
    gray.setup()
    expected = np.asarray(Image.fromarray(picture).convert("L"), dtype=np.int16)
    assert np.abs(gray.splits.val.dataset[0][0][0].numpy().astype(np.int16) - expected).max() <= 1  # PIL's luma


def test_cifar_is_resized_up_whole_for_evaluation(tmp_path):
    tiny = write_cifar10(tmp_path)
    half = np.zeros((32, 32, 3), dtype=np.uint8)
    half[:, 16:] = 255  # left black, right white: a centre crop would change the proportion
    write_pickle(
        tiny.root / "cifar-10-batches-py" / "test_batch",
        {"labels": [0], "data": cifar_row(half)[None], "batch_label": "", "filenames": ["h.png"]},
    )
    dm = module(CIFAR10DataModule, tiny.root, img_size=64)
    assert dm.eval_resize_ratio == 1.0 and dm.classes == ["airplane", "automobile", "bird"]
    img, _ = dm.splits.val[0]
    assert img.shape == (3, 64, 64)
    white = img[0] > 0
    assert white[:, :30].sum() == 0 and white[:, 34:].all()


@pytest.mark.parametrize(
    "content, problem",
    [
        ({"labels": [0, 7], "data": cifar_rows([0, 1])}, "label 7 outside 0-2"),
        ({"labels": [0, 1], "data": cifar_rows([0, 1])[:, :3000]}, "(N, 3072)"),
        ({"labels": [0], "data": cifar_rows([0, 1])}, "one integer per image"),
        ({"data": cifar_rows([0, 1])}, "'labels'"),
    ],
)
def test_cifar_batches_are_checked(tmp_path, content, problem):
    tiny = write_cifar10(tmp_path)
    batch = tiny.root / "cifar-10-batches-py" / "data_batch_2"
    write_pickle(batch, content)
    with pytest.raises(CorruptDataError) as error:
        module(CIFAR10DataModule, tiny.root).setup()
    one_line_naming(error, batch, problem)


# -- iNaturalist --------------------------------------------------------------------------------------------------
def test_inat_labels_follow_the_sorted_category_ids(tmp_path):
    tiny = write_inat(tmp_path, 2018)
    dm = module(INaturalistDataModule, tiny.root, year=2018)
    assert dm.classes == ["Quercus robur", "Vulpes vulpes", "Turdus migratorius"]  # ids 2, 5, 9
    dm.setup()
    by_file = dict(zip(dm.splits.val.dataset.paths, dm.splits.val.dataset.labels, strict=True))
    fox = next(path for path in by_file if "/Mammalia/5/" in path)
    assert by_file[fox] == 1 and dm.eval_split == "val"


def test_inat_validation_category_unknown_to_training_is_corrupt(tmp_path):
    tiny = write_inat(tmp_path, 2019)
    val_file = tiny.root / "val2019.json"
    document = json.loads(val_file.read_text())
    document["annotations"][0]["category_id"] = 77
    val_file.write_text(json.dumps(document))
    with pytest.raises(CorruptDataError) as error:
        module(INaturalistDataModule, tiny.root, year=2019).setup()
    one_line_naming(error, val_file, "category_id 77", "train2019.json")


def test_inat_image_without_annotation_is_corrupt(tmp_path):
    tiny = write_inat(tmp_path, 2017)
    document = json.loads(tiny.metadata.read_text())
    document["annotations"] = document["annotations"][1:]
    tiny.metadata.write_text(json.dumps(document))
    with pytest.raises(CorruptDataError) as error:
        module(INaturalistDataModule, tiny.root, year=2017)
    one_line_naming(error, tiny.metadata, "has no annotation")


def test_inat_year_and_download_are_checked(tmp_path):
    tiny = write_inat(tmp_path, 2018)
    with pytest.raises(ValueError, match=r"year=2020 must be one of 2017, 2018, 2019"):
        module(INaturalistDataModule, tiny.root, year=2020)
    with pytest.raises(ValueError) as error:
        module(INaturalistDataModule, tiny.root, year=2018, download=True)
    assert "https://github.com/visipedia/inat_comp/tree/master/2018" in str(error.value)
    with pytest.raises(FileNotFoundError) as error:
        module(INaturalistDataModule, tiny.root, year=2017)  # 2018's files do not make a 2017 copy
    one_line_naming(error, tiny.root / "train_val_images", str(tiny.root / "train2017.json"))


# -- Places365 ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("small, train_folder", [(True, "data_256"), (False, None), (False, "data_large")])
def test_places_folder_variants(tmp_path, small, train_folder):
    tiny = write_places365(tmp_path, small=small, train_folder=train_folder)
    dm = module(Places365DataModule, tiny.root, small=small)
    assert dm.classes == PLACES_CATEGORIES
    dm.setup()
    assert all(f"/{train_folder or 'data_large_standard'}/" in path for path in dm.splits.train_eval.dataset.paths)
    assert [served_label(img) for img, _ in (dm.splits.val[i] for i in range(3))] == [2, 0, 1]
    with pytest.raises(FileNotFoundError, match="val_256" if not small else "val_large"):
        module(Places365DataModule, tiny.root, small=not small)


def test_places_label_out_of_range_names_file_and_line(tmp_path):
    tiny = write_places365(tmp_path)
    val_list = tiny.root / "places365_val.txt"
    val_list.write_text(val_list.read_text() + "Places365_val_00000004.jpg 3\n")
    with pytest.raises(CorruptDataError) as error:
        module(Places365DataModule, tiny.root).setup()
    one_line_naming(error, val_list, "line 4", "class 3 outside 0-2")


def test_places_category_gap_is_corrupt(tmp_path):
    tiny = write_places365(tmp_path)
    categories = tiny.root / "categories_places365.txt"
    categories.write_text("/a/airfield 0\n/c/canyon 2\n")
    with pytest.raises(CorruptDataError) as error:
        module(Places365DataModule, tiny.root)
    one_line_naming(error, categories, "class 1 is absent")


# -- Flowers-102 --------------------------------------------------------------------------------------------------
def test_flowers_default_split_is_train_plus_val_against_test(tmp_path):
    tiny = write_flowers102(tmp_path)
    dm = module(Flowers102DataModule, tiny.root)
    assert dm.classes == ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    dm.setup()
    ids = [int(Path(path).stem.split("_")[1]) for path in dm.splits.train_eval.dataset.paths]
    assert ids == FLOWER_SPLITS["trnid"] + FLOWER_SPLITS["valid"]
    assert dm.splits.val.dataset.labels == [FLOWER_LABELS[i - 1] - 1 for i in FLOWER_SPLITS["tstid"]] == [0, 1, 2]
    assert dm.eval_split == "test"


def test_flowers_split_choice(tmp_path):
    tiny = write_flowers102(tmp_path)
    dm = module(Flowers102DataModule, tiny.root, train_splits=["train"], val_split="val")
    dm.setup()
    assert (len(dm.splits.train_eval), len(dm.splits.val), dm.eval_split) == (3, 3, "val")
    assert dm.splits.val.dataset.labels == [0, 1, 2]  # image ids 5, 4, 6: classes 1, 2, 3


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"train_splits": ["train", "holdout"]}, "train_splits=['train', 'holdout']"),
        ({"train_splits": []}, "train_splits=[]"),
        ({"val_split": "validation"}, "val_split='validation'"),
        ({"train_splits": ["train", "test"]}, "val_split='test' is also in train_splits"),
    ],
)
def test_flowers_bad_split_choices(tmp_path, overrides, named):
    tiny = write_flowers102(tmp_path)
    with pytest.raises(ValueError) as error:
        module(Flowers102DataModule, tiny.root, **overrides)
    assert named in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "file, content, problem",
    [
        ("imagelabels.mat", {"labels": np.array([[1, 0, 2]], dtype=np.float64)}, "label 0 outside 1-102"),
        ("imagelabels.mat", {"label": np.array([[1, 2]], dtype=np.float64)}, "no variable labels"),
        ("setid.mat", {"trnid": [[1, 2]], "valid": [[3]], "tstid": [[10]]}, "image id 10 outside 1-9"),
    ],
)
def test_flowers_mat_contents_are_checked(tmp_path, file, content, problem):
    tiny = write_flowers102(tmp_path)
    path = tiny.root / "flowers-102" / file
    savemat(path, content)
    with pytest.raises(CorruptDataError) as error:
        module(Flowers102DataModule, tiny.root).setup()
    one_line_naming(error, path, problem)


# -- Oxford-IIIT Pets ---------------------------------------------------------------------------------------------
def test_pets_class_names_and_files(tmp_path):
    tiny = write_oxford_pets(tmp_path)
    dm = module(OxfordPetsDataModule, tiny.root)
    assert dm.classes == ["Abyssinian", "American Bulldog", "Bengal"]
    dm.setup()
    assert dm.splits.val.dataset.paths[1] == str(tiny.root / "oxford-iiit-pet" / "images" / "american_bulldog_102.jpg")
    assert dm.splits.val.dataset.labels == [0, 1, 2]


def test_pets_test_class_unknown_to_trainval_is_corrupt(tmp_path):
    tiny = write_oxford_pets(tmp_path)
    test_list = tiny.root / "oxford-iiit-pet" / "annotations" / "test.txt"
    test_list.write_text(test_list.read_text() + "yorkshire_terrier_1 37 2 25\n")
    with pytest.raises(CorruptDataError) as error:
        module(OxfordPetsDataModule, tiny.root).setup()
    one_line_naming(error, test_list, "line 4", "class 37 outside 1-3")


def test_pets_short_line_is_corrupt(tmp_path):
    tiny = write_oxford_pets(tmp_path)
    tiny.metadata.write_text(tiny.metadata.read_text() + "Bengal_7 3\n")
    with pytest.raises(CorruptDataError) as error:
        module(OxfordPetsDataModule, tiny.root)
    one_line_naming(error, tiny.metadata, "line 7 has 2 of 4 fields")


# -- Food-101 -----------------------------------------------------------------------------------------------------
def test_food_labels_follow_classes_txt(tmp_path):
    tiny = write_food101(tmp_path)
    dm = module(Food101DataModule, tiny.root)
    assert dm.classes == FOOD_CLASSES
    dm.setup()
    by_file = dict(zip(dm.splits.val.dataset.paths, dm.splits.val.dataset.labels, strict=True))
    assert by_file[str(tiny.root / "food-101" / "images" / "baklava" / "1026330.jpg")] == 2


@pytest.mark.parametrize(
    "listing, problem",
    [
        ({"apple_pie": ["apple_pie/1"], "tiramisu": ["tiramisu/2"]}, "class 'tiramisu' is not in classes.txt"),
        ({"apple_pie": "apple_pie/1"}, "mapping each class to a list"),
    ],
)
def test_food_listing_is_checked(tmp_path, listing, problem):
    tiny = write_food101(tmp_path)
    train_json = tiny.root / "food-101" / "meta" / "train.json"
    train_json.write_text(json.dumps(listing))
    with pytest.raises(CorruptDataError) as error:
        module(Food101DataModule, tiny.root).setup()
    one_line_naming(error, train_json, problem)
