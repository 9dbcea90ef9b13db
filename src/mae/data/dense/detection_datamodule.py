"""The instance-detection data module: COCO-format instances (:class:`~mae.data.dense.coco.CocoInstances`) with
Detectron2's ViTDet large-scale jitter, served by the project's seeded, resumable loaders as lists (images differ in
size at evaluation, targets are dicts)."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Subset

from mae.data.dense.checks import check_input, int_pair
from mae.data.dense.detection_transforms import DetectionEvalTransform, LargeScaleJitter
from mae.data.dense.transforms import Paired
from mae.data.errors import check_int, check_optional_limit
from mae.data.loaders import LoaderSettings, Splits, SplitsDataModule, seeded_subset

if TYPE_CHECKING:
    from mae.data.dense.coco import CocoInstances

FilePath = str | PathLike


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict]]:
    """``(images, targets)`` as two lists, the form torchvision's detection models take (nothing is stacked: images
    may differ in size and targets in their number of instances)."""
    return [image for image, _ in batch], [target for _, target in batch]


def check_path(name: str, value: FilePath) -> FilePath:
    """A non-empty path (str or path-like); one line naming ``value`` otherwise (the reader reports a missing one)."""
    if not isinstance(value, (str, PathLike)) or value == "":
        raise ValueError(f"{name}={value!r} must be a path")
    return value


class DetectionDataModule(SplitsDataModule):
    """Instance detection and segmentation on COCO-format splits (an image folder and an instances JSON each).

    Batches are ``(images, targets)`` lists (:func:`collate_detection`): training images ``(C, out_h, out_w)``
    float32 in [0, 1] augmented by :class:`~mae.data.dense.detection_transforms.LargeScaleJitter` with a seed per
    sample and epoch, only images with at least one non-crowd instance (the reader's ``indices_with_instances()``, as
    Detectron2 filters empty images); validation and test images at their own size, float32 in [0, 1], with their
    targets unchanged (the model resizes them itself). Images are not normalised: torchvision's detection models
    normalise with :attr:`mean` and :attr:`std`, and the training padding is the mean, so that it becomes 0 there.
    Evaluation loaders use the training batch size (lists hold images of any size); a subclass may change
    :attr:`eval_settings`.

    Every setting is keyword-only without a default here: the detection groups of ``conf/data/`` hold them. Each
    split is read on construction, by :meth:`read_split`, and ``check_samples`` items of each loaded: a missing or
    broken dataset stops a run before anything is built.

    Args:
        train_images, train_annotations: the training split's image folder and instances JSON.
        val_images, val_annotations: the validation split's; it is the test split when both paths are the same
            (COCO's benchmark evaluates on val2017: :attr:`val_is_test`).
        test_images, test_annotations: the test split's.
        in_chans: 1 (grey) or 3 (RGB).
        image_size: the training output (LSJ's crop), an int or ``[height, width]``.
        scale_range: range of the jitter's scale on the factor that fits an image to ``image_size``.
        hflip: probability of a horizontal flip.
        recompute_boxes: training boxes from the transformed masks' extents (ViTDet's LSJ loader) instead of the
            transformed box corners.
        mean, std: per-channel normalisation of the [0, 1] pixels (the pre-training's: the encoder expects them).
        batch_size, num_workers, pin_memory, persistent_workers: loader settings (persistent workers only with
            ``num_workers > 0``).
        seed: seeds the per-epoch shuffling, the augmentation and ``train_samples``' subset.
        train_samples: train on a fixed seeded subset of this many trainable images (None: all).
        check_samples: items of each split loaded on construction, evenly spaced (0: none).
        how_to_get: how to get the data: the end of the reader's error for a missing file.
    """

    def __init__(
        self,
        *,
        train_images: FilePath,
        train_annotations: FilePath,
        val_images: FilePath,
        val_annotations: FilePath,
        test_images: FilePath,
        test_annotations: FilePath,
        in_chans: int,
        image_size: int | Sequence[int],
        scale_range: Sequence[float],
        hflip: float,
        recompute_boxes: bool,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        persistent_workers: bool,
        seed: int,
        train_samples: int | None,
        check_samples: int,
        how_to_get: str,
    ) -> None:
        super().__init__()
        paths = {
            name: check_path(name, value)
            for name, value in (
                ("train_images", train_images),
                ("train_annotations", train_annotations),
                ("val_images", val_images),
                ("val_annotations", val_annotations),
                ("test_images", test_images),
                ("test_annotations", test_annotations),
            )
        }
        self.split_files = {
            split: (str(paths[f"{split}_images"]), str(paths[f"{split}_annotations"]))
            for split in ("train", "val", "test")
        }
        self.in_chans, self.mean, self.std = check_input(in_chans, mean, std, "detection")
        self.how_to_get = how_to_get
        self.image_size = int_pair("image_size", image_size)
        # The jitter checks scale_range, hflip and recompute_boxes; it pads with the mean, which the model's
        # normalisation turns into 0.
        self.augment = LargeScaleJitter(self.image_size, scale_range, hflip, self.mean, recompute_boxes)
        self.evaluate = DetectionEvalTransform()
        self.train_samples = check_optional_limit("train_samples", train_samples)
        self.loaders = LoaderSettings(
            batch_size, num_workers, pin_memory, persistent_workers, seed, None, None, collate_detection
        )
        check_samples = check_int("check_samples", check_samples, 0)
        # One reader per distinct pair of files: the validation split is often the test split.
        self.datasets = {files: self.read_split(*files) for files in dict.fromkeys(self.split_files.values())}
        self.class_names = list(self.datasets[self.split_files["train"]].class_names)
        self.num_classes = len(self.class_names)
        for split, files in self.split_files.items():
            names = list(self.datasets[files].class_names)
            if names != self.class_names:
                raise ValueError(
                    f"{split}_annotations={files[1]} has {len(names)} categories that differ from the training "
                    f"split's {self.num_classes}: every split needs the same categories in the same order"
                )
        for dataset in self.datasets.values():
            dataset.check(check_samples)

    def read_split(self, images: str, annotations: str) -> CocoInstances:
        """The reader of one split's ``(image, target)`` items, with its ``class_names`` (label k is
        ``class_names[k - 1]``), ``indices_with_instances()`` (the images with a non-crowd instance) and
        ``check(samples)`` (load an evenly spaced sample)."""
        # Imported on use: only COCO-format data needs the reader and its extra (pycocotools, the detect extra).
        from mae.data.dense.coco import CocoInstances

        return CocoInstances(images, annotations, self.in_chans, self.how_to_get)

    @property
    def val_is_test(self) -> bool:
        """The validation split is the test split (COCO's benchmark evaluates on its validation images)."""
        return self.split_files["val"] == self.split_files["test"]

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        train = self.datasets[self.split_files["train"]]
        # Images without a non-crowd instance teach nothing and Detectron2 leaves them out of training.
        trainable = Subset(train, train.indices_with_instances())
        self._splits = Splits(
            train=Paired(seeded_subset(trainable, self.train_samples, self.loaders.seed), self.augment),
            train_eval=Paired(train, self.evaluate),
            val=Paired(self.datasets[self.split_files["val"]], self.evaluate),
            test=Paired(self.datasets[self.split_files["test"]], self.evaluate),
            val_is_test=self.val_is_test,
        )
