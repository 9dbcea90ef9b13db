"""What every image data module serves (pre-training, kNN, fine-tuning, linear probing) once ``setup()`` ran."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mae.data.decoding import ImageLoader
from mae.data.errors import check_int, check_optional_limit
from mae.data.loaders import (
    LoaderSettings,
    Splits,
    first_images,
    process_slot,
    resume_position,
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


class ImageDataModule(L.LightningDataModule):
    """The interface the training code relies on; subclasses find, check and load a dataset.

    Every setting is keyword-only and has no default here: the data group's YAML file holds each dataset's values
    (``conf/data/``), and a module built in Python names every setting. This constructor validates the settings
    every dataset shares (one-line ``ValueError`` naming value and rule);
    a subclass also sets ``num_classes`` and, from ``setup()``, calls :meth:`set_splits` with the transforms of
    :meth:`transforms`. ``rand_augment`` (a timm policy string) and ``random_erasing`` (a probability) switch the
    training augmentation to the reference's fine-tuning pipeline; otherwise it is the paper's crop + flip.
    """

    _splits: Splits | None = None
    eval_split = "val"
    """Which of the dataset's official splits the evaluation split is (results files say it)."""

    def __init__(self, *, img_size: int, in_chans: int, batch_size: int, num_workers: int, pin_memory: bool,
                 persistent_workers: bool, seed: int, crop_scale: Sequence[float], hflip: bool,
                 mean: Sequence[float], std: Sequence[float], train_samples: int | None,
                 knn_train_samples: int | None, knn_val_samples: int | None, interpolation: str,
                 rand_augment: str | None, random_erasing: float) -> None:
        super().__init__()
        self.img_size = check_int("img_size", img_size, 1)
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans={in_chans} must be 1 (grayscale) or 3 (RGB)")
        self.in_chans = in_chans
        self.mean, self.std = check_normalization(mean, std, in_chans)
        self.crop_scale = check_crop_scale(crop_scale)
        self.hflip = bool(hflip)
        interpolation_mode(interpolation)
        self.interpolation = interpolation
        self.rand_augment = rand_augment
        self.random_erasing = float(random_erasing)
        self.transforms()  # builds nothing lasting: validates the augmentation settings before any work
        self.train_samples = check_optional_limit("train_samples", train_samples)
        self.loaders = LoaderSettings(batch_size, num_workers, pin_memory, persistent_workers, seed,
                                      knn_train_samples, knn_val_samples)

    def read_image_files(self, decoder: str, eval_resize_ratio: float, on_bad_image: str,
                         max_bad_fraction: float) -> None:
        """For datasets of image files: decode them with ``decoder`` into this module's channels (an undecodable
        file handled as ``on_bad_image`` says, see :class:`~mae.data.decoding.ImageLoader`), and resize to
        ``img_size / eval_resize_ratio`` before the evaluation's centre crop."""
        if not 0.0 < eval_resize_ratio <= 1.0:
            raise ValueError(f"eval_resize_ratio={eval_resize_ratio} must be in (0, 1]")
        self.eval_resize_ratio = float(eval_resize_ratio)
        self.image_loader = ImageLoader.for_channels(self.in_chans, decoder, on_bad_image, max_bad_fraction)

    @property
    def batch_size(self) -> int:
        return self.loaders.batch_size

    def transforms(self, eval_resize_ratio: float = 0.875):
        """(training augmentation, evaluation transform) from this module's settings; see
        :func:`~mae.data.transforms.train_transform` and :func:`~mae.data.transforms.eval_transform`."""
        augment = train_transform(self.img_size, self.crop_scale, self.hflip, self.mean, self.std, self.interpolation,
                                  self.rand_augment, self.random_erasing)
        return augment, eval_transform(self.img_size, self.mean, self.std, self.interpolation, eval_resize_ratio)

    def set_splits(self, train: Dataset, val: Dataset, augment, evaluate) -> None:
        """Serve ``train`` augmented (a seeded subset when ``train_samples`` is set) and both splits unaugmented."""
        self._splits = Splits(
            train=Transformed(seeded_subset(train, self.train_samples, self.loaders.seed), augment),
            train_eval=Transformed(train, evaluate),
            val=Transformed(val, evaluate),
        )

    @property
    def splits(self) -> Splits:
        """The datasets served (built by ``setup()`` on first use)."""
        if self._splits is None:
            self.setup()
        assert self._splits is not None
        return self._splits

    def train_dataloader(self) -> DataLoader:
        rank, world_size = process_slot(self)
        batches_per_epoch = len(self.splits.train) // world_size // self.batch_size  # type: ignore[arg-type]
        epoch, batches_done = resume_position(self, batches_per_epoch)
        return self.loaders.train_loader(self.splits, epoch, batches_done, rank, world_size)

    def val_dataloader(self) -> DataLoader:
        return self.loaders.eval_loader(self.splits.val)

    def eval_train_dataloader(self) -> DataLoader:
        """The whole training split, unaugmented, in order (feature extraction, evaluation on train)."""
        return self.loaders.eval_loader(self.splits.train_eval)

    def knn_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        return self.loaders.knn_loaders(self.splits)

    def sample_images(self, n: int) -> torch.Tensor:
        """The first ``n`` validation images, eval transform applied, stacked ``(n, C, H, W)``."""
        return first_images(self.splits.val, n)
