"""Data modules serving images for MAE pre-training and labelled images for kNN evaluation.

Both modules share one interface: ``img_size``, ``in_chans``, ``mean``, ``std``, ``batch_size``,
``num_classes``, ``train_dataloader()``, ``val_dataloader()``, ``knn_dataloaders()`` and ``sample_images(n)``.
"""

from mae.data.base import ImageDataModule
from mae.data.errors import CorruptDataError
from mae.data.fashion_mnist import FashionMNISTDataModule, read_idx
from mae.data.image_folder import ImageFolderDataModule, ImageNetDataModule
from mae.data.sampling import EpochSeededSampler
from mae.data.transforms import eval_transform, pretrain_transform, train_transform

__all__ = [
    "CorruptDataError",
    "EpochSeededSampler",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "ImageDataModule",
    "ImageNetDataModule",
    "eval_transform",
    "pretrain_transform",
    "train_transform",
    "read_idx",
]
