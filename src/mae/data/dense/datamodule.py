"""The semantic-segmentation data module: a dataset in ADE20K's layout (ADE20K itself, the Fashion-MNIST scenes)
with MMSegmentation's augmentation, served by the project's seeded, resumable loaders."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from mae.data.dense.ade20k import IGNORE_INDEX, SegmentationFolder
from mae.data.dense.checks import check_input, check_probability, check_ratio_range, int_pair
from mae.data.dense.transforms import Paired, SegmentationEvalTransform, SegmentationTrainTransform
from mae.data.errors import check_int, check_optional_limit
from mae.data.loaders import LoaderSettings, Splits, SplitsDataModule, seeded_subset


class SegmentationDataModule(SplitsDataModule):
    """Semantic segmentation in ADE20K's layout (:class:`~mae.data.dense.ade20k.SegmentationFolder`).

    Batches: training ``(images (B, C, crop_h, crop_w) float32, labels (B, crop_h, crop_w) int64)``, augmented by
    :class:`~mae.data.dense.transforms.SegmentationTrainTransform` with a seed per sample and epoch; validation and
    test one image at a time (sizes differ), ``(1, C, h, w)`` rescaled to fit ``scale`` with its labels ``(1, H, W)``
    at their original resolution. Labels are classes 0..num_classes-1 and :attr:`ignore_index` (255).

    Every setting is keyword-only without a default here: the segmentation groups of ``conf/data/`` hold them. The split
    folders are listed and paired, and ``check_samples`` pairs of each split loaded, on construction: a missing or
    broken dataset stops a run before anything is built (one line naming the path).

    Args:
        root: the dataset's folder (``images/<split>/``, ``annotations/<split>/``).
        train_split, val_split, test_split: split folder names; the test split may be the validation split
            (ADE20K's benchmark: :attr:`val_is_test`).
        num_classes: K, the annotations' values 1..K (0 is ignored).
        class_names: K names, or None.
        in_chans: 1 (grey) or 3 (RGB).
        crop_size: training crop, an int or ``[height, width]``.
        slide_stride: step between the sliding windows (of ``crop_size``) that score evaluation images larger than
            the crop; kept here for the segmentation module, which reads it from the config.
        scale: the base scale ``[long, short]`` (either order): evaluation rescales to fit it, training to fit it times
            a ratio drawn from ``ratio_range``.
        ratio_range: range of that ratio.
        cat_max_ratio: largest share of a crop one class may cover before the crop is redrawn (1: never).
        hflip: probability of a horizontal flip.
        mean, std: per-channel normalisation of the [0, 1] pixels (the pre-training's: the encoder expects them).
        batch_size, num_workers, pin_memory, persistent_workers: training loader settings (persistent workers only
            with ``num_workers > 0``).
        eval_batch_size: images per evaluation batch: 1 as MMSegmentation evaluates, where evaluation images differ
            in size; more only where they all have one size (the scenes), which scores the same, faster.
        seed: seeds the per-epoch shuffling, the augmentation and ``train_samples``' subset.
        train_samples: train on a fixed seeded subset of this many images (None: all).
        check_samples: pairs of each split loaded on construction, evenly spaced (0: none).
        how_to_get: how to get the data: the end of the error for a missing split folder.
    """

    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        *,
        root: str,
        train_split: str,
        val_split: str,
        test_split: str,
        num_classes: int,
        class_names: Sequence[str] | None,
        in_chans: int,
        crop_size: int | Sequence[int],
        slide_stride: int,
        scale: int | Sequence[int],
        ratio_range: Sequence[float],
        cat_max_ratio: float,
        hflip: float,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        pin_memory: bool,
        persistent_workers: bool,
        seed: int,
        train_samples: int | None,
        check_samples: int,
        how_to_get: str,
    ) -> None:
        super().__init__()
        for name, split in (("train_split", train_split), ("val_split", val_split), ("test_split", test_split)):
            if not isinstance(split, str) or not split or "/" in split:
                raise ValueError(f"{name}={split!r} must be the name of a split folder")
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.num_classes = check_int("num_classes", num_classes, 1)
        if self.num_classes > IGNORE_INDEX:
            raise ValueError(
                f"num_classes={num_classes} must be at most {IGNORE_INDEX} (8-bit label maps, 255 ignored)"
            )
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(class_names)} names; num_classes={num_classes} needs one per class")
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self.in_chans, self.mean, self.std = check_input(in_chans, mean, std, "segmentation")
        self.crop_size, self.scale = int_pair("crop_size", crop_size), int_pair("scale", scale)
        self.slide_stride = check_int("slide_stride", slide_stride, 1)
        if self.slide_stride > min(self.crop_size):
            raise ValueError(
                f"slide_stride={slide_stride} must be at most crop_size={crop_size}: windows would skip pixels"
            )
        self.augment = SegmentationTrainTransform(
            self.scale,
            check_ratio_range(ratio_range),
            self.crop_size,
            check_probability("cat_max_ratio", cat_max_ratio, low_open=True),
            check_probability("hflip", hflip),
            self.mean,
            self.std,
        )
        self.evaluate = SegmentationEvalTransform(self.scale, self.mean, self.std)
        self.train_samples = check_optional_limit("train_samples", train_samples)
        self.loaders = LoaderSettings(batch_size, num_workers, pin_memory, persistent_workers, seed, None, None)
        self.eval_batch_size = check_int("eval_batch_size", eval_batch_size, 1)
        check_samples = check_int("check_samples", check_samples, 0)
        self.datasets = {
            split: SegmentationFolder(root, split, self.num_classes, in_chans, how_to_get)
            for split in dict.fromkeys((train_split, val_split, test_split))
        }
        for dataset in self.datasets.values():
            dataset.check(check_samples)

    @property
    def eval_settings(self) -> LoaderSettings:
        return dataclasses.replace(self.loaders, batch_size=self.eval_batch_size)

    @property
    def val_is_test(self) -> bool:
        """The validation split is the test split (ADE20K's benchmark evaluates on its validation images)."""
        return self.val_split == self.test_split

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        train = self.datasets[self.train_split]
        self._splits = Splits(
            train=Paired(seeded_subset(train, self.train_samples, self.loaders.seed), self.augment),
            train_eval=Paired(train, self.evaluate),
            val=Paired(self.datasets[self.val_split], self.evaluate),
            test=Paired(self.datasets[self.test_split], self.evaluate),
            val_is_test=self.val_is_test,
        )
