"""Data modules serving images for MAE pre-training, kNN evaluation, fine-tuning and linear probing.

Every module is an :class:`ImageDataModule` with one interface: ``img_size``, ``in_chans``, ``mean``, ``std``, ``batch_size``,
``num_classes``, ``train_dataloader()``, ``val_dataloader()``, ``knn_dataloaders()`` and ``sample_images(n)``.
"""

from mae.data.base import ImageDataModule
from mae.data.errors import CorruptDataError
from mae.data.fashion_mnist import FashionMNISTDataModule, read_idx
from mae.data.image_folder import ImageFolderDataModule, ImageNetDataModule
from mae.data.loaders import EpochSeededSampler
from mae.data.transfer_datasets import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    Flowers102DataModule,
    Food101DataModule,
    INaturalistDataModule,
    OxfordPetsDataModule,
    Places365DataModule,
    TransferDataModule,
)
from mae.data.transforms import eval_transform, pretrain_transform, train_transform
from mae.data.unlabeled import UnlabeledImagesDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CorruptDataError",
    "EpochSeededSampler",
    "FashionMNISTDataModule",
    "Flowers102DataModule",
    "Food101DataModule",
    "INaturalistDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "OxfordPetsDataModule",
    "Places365DataModule",
    "TransferDataModule",
    "UnlabeledImagesDataModule",
    "eval_transform",
    "pretrain_transform",
    "read_idx",
    "train_transform",
]
