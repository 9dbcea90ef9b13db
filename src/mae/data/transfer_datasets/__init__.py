"""Labelled datasets for transfer learning (fine-tuning, linear probing), each read from its official layout."""

from mae.data.transfer_datasets.base import ListedImages, TransferDataModule
from mae.data.transfer_datasets.cifar import CIFAR10DataModule, CIFAR100DataModule
from mae.data.transfer_datasets.flowers102 import Flowers102DataModule
from mae.data.transfer_datasets.food101 import Food101DataModule
from mae.data.transfer_datasets.inaturalist import INaturalistDataModule
from mae.data.transfer_datasets.oxford_pets import OxfordPetsDataModule
from mae.data.transfer_datasets.places365 import Places365DataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "Flowers102DataModule",
    "Food101DataModule",
    "INaturalistDataModule",
    "ListedImages",
    "OxfordPetsDataModule",
    "Places365DataModule",
    "TransferDataModule",
]
