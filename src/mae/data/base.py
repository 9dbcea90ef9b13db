"""What every pre-training data module serves, once its ``setup()`` has built the splits."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mae.data.errors import check_int, check_optional_limit
from mae.data.sampling import LoaderSettings, Splits, current_epoch, first_images, seeded_subset
from mae.data.transforms import Transformed, check_crop_scale, check_normalization


class PretrainDataModule(L.LightningDataModule):
    """The interface the training code relies on; subclasses find, check and load a dataset.

    This constructor validates the settings every dataset shares (one-line ``ValueError`` naming value and rule);
    a subclass also sets ``num_classes`` and calls :meth:`set_splits` from ``setup()``.
    """

    _splits: Splits | None = None

    def __init__(self, img_size: int, in_chans: int, batch_size: int, num_workers: int, pin_memory: bool,
                 persistent_workers: bool, seed: int, crop_scale: Sequence[float], hflip: bool,
                 mean: Sequence[float], std: Sequence[float], train_samples: int | None,
                 knn_train_samples: int | None, knn_val_samples: int | None) -> None:
        super().__init__()
        self.img_size = check_int("img_size", img_size, 1)
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans={in_chans} must be 1 (grayscale) or 3 (RGB)")
        self.in_chans = in_chans
        self.mean, self.std = check_normalization(mean, std, in_chans)
        self.crop_scale = check_crop_scale(crop_scale)
        self.hflip = bool(hflip)
        self.train_samples = check_optional_limit("train_samples", train_samples)
        self.loaders = LoaderSettings(batch_size, num_workers, pin_memory, persistent_workers, seed,
                                      knn_train_samples, knn_val_samples)

    @property
    def batch_size(self) -> int:
        return self.loaders.batch_size

    def set_splits(self, train: Dataset, val: Dataset, augment, evaluate) -> None:
        """Serve ``train`` augmented (a seeded subset when ``train_samples`` is set) and both splits unaugmented."""
        self._splits = Splits(
            pretrain=Transformed(seeded_subset(train, self.train_samples, self.loaders.seed), augment),
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
        return self.loaders.pretrain_loader(self.splits, current_epoch(self))

    def val_dataloader(self) -> DataLoader:
        return self.loaders.eval_loader(self.splits.val)

    def knn_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        return self.loaders.knn_loaders(self.splits)

    def sample_images(self, n: int) -> torch.Tensor:
        """The first ``n`` validation images, eval transform applied, stacked ``(n, C, H, W)``."""
        return first_images(self.splits.val, n)
