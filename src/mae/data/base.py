"""What every image data module serves (pre-training, kNN, fine-tuning, linear probing) once ``setup()`` ran."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mae.data.decoding import ImageLoader
from mae.data.errors import check_int, check_optional_limit
from mae.data.image_statistics import ImageSample, check_decodable, sample_files
from mae.data.loaders import (
    LoaderSettings,
    Splits,
    SplitsDataModule,
    check_val_size,
    first_images,
    held_out,
    seeded_subset,
)
from mae.data.transforms import (
    Transformed,
    check_crop_scale,
    check_normalization,
    eval_transform,
    interpolation_mode,
    train_transform,
)


class InMemoryImages(Dataset):
    """``(uint8 image (C, H, W), label)`` pairs from tensors; the gray channel is repeated for ``channels=3``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, channels: int) -> None:
        # Labels as a list: indexing a tensor per item costs more than the rest of an eval item.
        self.images, self.labels, self.channels = images, labels.tolist(), channels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index]
        return (img.expand(self.channels, -1, -1) if self.channels != 1 else img), self.labels[index]


class ImageDataModule(SplitsDataModule):
    """The interface the training code relies on; subclasses find, check and load a dataset.

    Every setting is keyword-only and has no default here: the data group's YAML file holds each dataset's values
    (``conf/data/``), and a module built in Python names every setting. This constructor validates the settings
    every dataset shares (one-line ``ValueError`` naming value and rule);
    a subclass also sets ``num_classes`` and, from ``setup()``, calls :meth:`set_splits` with the transforms of
    :meth:`transforms`. ``rand_augment`` (a timm policy string) and ``random_erasing`` (a probability) switch the
    training augmentation to the reference's fine-tuning pipeline; otherwise it is the paper's crop + flip.
    """

    eval_split = "val"
    """Which of the dataset's official splits the test split is (results files say it)."""
    has_labels = True
    """Whether the data has classes (kNN, fine-tuning and probing need them; pre-training does not)."""
    measures_statistics = False
    """Whether ``mean: auto`` works: the module can measure its training images (:meth:`statistics_files`)."""
    stats_samples = 0
    stats_seed = 0
    _image_sample: ImageSample | None = None

    def __init__(
        self,
        *,
        img_size: int,
        in_chans: int,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        persistent_workers: bool,
        seed: int,
        crop_scale: Sequence[float],
        hflip: bool,
        mean: Sequence[float],
        std: Sequence[float],
        train_samples: int | None,
        knn_train_samples: int | None,
        knn_val_samples: int | None,
        val_size: int | float | None,
        val_split_seed: int,
        interpolation: str,
        rand_augment: str | None,
        random_erasing: float,
    ) -> None:
        super().__init__()
        self.img_size = check_int("img_size", img_size, 1)
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans={in_chans} must be 1 (grayscale) or 3 (RGB)")
        self.in_chans = in_chans
        self.mean, self.std = check_normalization(mean, std, in_chans)
        if self.mean is None and not self.measures_statistics:
            raise ValueError(
                f"mean=auto and std=auto are not available for {type(self).__name__}: give the dataset's mean and std"
            )
        self.crop_scale = check_crop_scale(crop_scale)
        self.hflip = bool(hflip)
        interpolation_mode(interpolation)
        self.interpolation = interpolation
        self.rand_augment = rand_augment
        self.random_erasing = float(random_erasing)
        self.transforms(placeholder=True)  # builds nothing lasting: validates the augmentation settings now
        self.train_samples = check_optional_limit("train_samples", train_samples)
        self.val_size = check_val_size(val_size)
        self.val_split_seed = check_int("val_split_seed", val_split_seed, 0)
        self.loaders = LoaderSettings(
            batch_size, num_workers, pin_memory, persistent_workers, seed, knn_train_samples, knn_val_samples
        )

    def read_image_files(
        self,
        decoder: str,
        eval_resize_ratio: float,
        on_bad_image: str,
        max_bad_fraction: float,
        stats_samples: int = 0,
        stats_seed: int = 0,
    ) -> None:
        """For datasets of image files: decode them with ``decoder`` into this module's channels (an undecodable
        file handled as ``on_bad_image`` says, see :class:`~mae.data.decoding.ImageLoader`), and resize to
        ``img_size / eval_resize_ratio`` before the evaluation's centre crop."""
        if not 0.0 < eval_resize_ratio <= 1.0:
            raise ValueError(f"eval_resize_ratio={eval_resize_ratio} must be in (0, 1]")
        self.eval_resize_ratio = float(eval_resize_ratio)
        self.image_loader = ImageLoader.for_channels(self.in_chans, decoder, on_bad_image, max_bad_fraction)
        if self.mean is None:  # mean: auto measures this many images, sampled with this seed
            self.stats_samples = check_int("stats_samples", stats_samples, 1)
            self.stats_seed = check_int("stats_seed", stats_seed, 0)

    def statistics_files(self) -> tuple[str, list[str]]:
        """``(root, paths relative to it)`` of the training images ``mean: auto`` measures a sample of."""
        raise NotImplementedError

    def image_sample(self) -> ImageSample:
        """A seeded sample of :meth:`statistics_files`, decoded once and checked (:func:`check_decodable`): the
        files that stop a run before it starts, and what ``mean: auto`` measures."""
        if self._image_sample is None:
            root, files = self.statistics_files()
            found = sample_files(root, files, self.image_loader, self.stats_samples, self.stats_seed)
            check_decodable(found, self.image_loader, root)
            self._image_sample = found
        return self._image_sample

    def prepare_run(
        self,
        stored_normalization: tuple[list[float], list[float]] | None = None,
        stored_in: str = "",
        resumed_run_dir: Path | None = None,
    ) -> None:
        """Everything that must be known before a run writes anything, each problem one line: here the
        normalisation of ``mean: auto`` (the numbers ``stored_in`` a file the run starts from holds, else measured
        on a seeded sample of training images, and printed). ``resumed_run_dir`` is the directory of the
        checkpoint a resumed run continues (subclasses read what its first attempt stored there)."""
        if self.mean is not None:
            return
        if stored_normalization is not None:
            self.mean, self.std = check_normalization(*stored_normalization, self.in_chans)
            where = stored_in
        else:
            found = self.image_sample()
            self.mean, self.std = check_normalization(*found.statistics(), self.in_chans)
            where = f"{found.decoded} training images (seeded sample, data.stats_samples={self.stats_samples})"
        print(f"data.mean=auto, data.std=auto: mean {list(self.mean)}, std {list(self.std)} from {where}", flush=True)

    def resolved_settings(self) -> dict[str, Any]:
        """Settings ``prepare_run`` measured, to store with the run (its config and checkpoints)."""
        return {"mean": list(self.mean), "std": list(self.std)} if self.mean is not None else {}

    def write_run_files(self, run_dir: Path) -> None:
        """Files the data keeps in the run directory (see subclasses); called once the run starts, on rank 0."""

    def transforms(self, eval_resize_ratio: float = 0.875, placeholder: bool = False):
        """(training augmentation, evaluation transform) from this module's settings; see
        :func:`~mae.data.transforms.train_transform` and :func:`~mae.data.transforms.eval_transform`.
        ``mean: auto`` is measured first unless ``placeholder`` (a check of the other settings) says not to."""
        if self.mean is None and not placeholder:
            self.prepare_run()
        mean, std = (self.mean, self.std) if self.mean is not None else ((0.5,) * self.in_chans, (0.5,) * self.in_chans)
        augment = train_transform(
            self.img_size,
            self.crop_scale,
            self.hflip,
            mean,
            std,
            self.interpolation,
            self.rand_augment,
            self.random_erasing,
        )
        return augment, eval_transform(self.img_size, mean, std, self.interpolation, eval_resize_ratio)

    def set_splits(self, train: Dataset, test: Dataset, augment, evaluate, val: Dataset | None = None) -> None:
        """Serve ``train`` augmented (a seeded subset when ``train_samples`` is set) and every split unaugmented.

        The validation split is ``val`` when the dataset has one of its own, else ``val_size`` images held out of
        ``train`` with ``val_split_seed`` (never trained on: neither the augmented nor the kNN bank's images
        include them), else, with ``val_size`` 0, the test split itself (``Splits.val_is_test``)."""
        if val is None:
            train, val = held_out(train, self.val_size, self.val_split_seed)
        elif self.val_size:
            raise ValueError(
                f"val_size={self.val_size}: {type(self).__name__} already has a validation split of its own; "
                "set data.val_size=0"
            )
        self._splits = Splits(
            train=Transformed(seeded_subset(train, self.train_samples, self.loaders.seed), augment),
            train_eval=Transformed(train, evaluate),
            val=Transformed(test if val is None else val, evaluate),
            test=Transformed(test, evaluate),
            val_is_test=val is None,
        )

    def validation_split(self) -> str:
        """What the validation split is, for results files and logs."""
        splits = self.splits
        if splits.val_is_test:
            return f"the {self.eval_split} split (no images held out: set data.val_size to hold some out)"
        if self.val_size:
            return f"{len(splits.val)} training images held out (data.val_split_seed={self.val_split_seed})"
        return "the dataset's own validation split"

    def eval_train_dataloader(self) -> DataLoader:
        """The whole training split, unaugmented, in order (feature extraction, evaluation on train)."""
        return self.loaders.eval_loader(self.splits.train_eval)

    def knn_dataloaders(self, split: str = "val") -> tuple[DataLoader, DataLoader]:
        """(bank, queries) of the kNN evaluation: training images and the ``split`` ("val" or "test") images."""
        return self.loaders.knn_loaders(self.splits, split)

    def sample_images(self, n: int) -> torch.Tensor:
        """The first ``n`` validation images (never trained on), eval transform applied, stacked ``(n, C, H, W)``."""
        return first_images(self.splits.val, n)
