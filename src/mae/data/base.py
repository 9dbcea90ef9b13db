"""What every pre-training data module serves, once its ``setup()`` has built the splits."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mae.data.sampling import LoaderSettings, Splits, current_epoch, first_images, seeded_subset
from mae.data.transforms import Transformed


class PretrainDataModule(L.LightningDataModule):
    """The interface the training code relies on; subclasses find, check and load a dataset.

    A subclass sets ``img_size``, ``in_chans``, ``mean``, ``std``, ``num_classes``, ``train_samples`` and
    ``loaders`` (a :class:`LoaderSettings`) in its constructor and calls :meth:`set_splits` from ``setup()``.
    """

    loaders: LoaderSettings
    train_samples: int | None
    _splits: Splits | None = None

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
