"""Labelled datasets for transfer learning (fine-tuning, linear probing), each read from its official layout."""

from mae.data.transfer.base import ListedImages, TransferDataModule
from mae.data.transfer.cifar import CIFAR10DataModule, CIFAR100DataModule
from mae.data.transfer.flowers102 import Flowers102DataModule
from mae.data.transfer.food101 import Food101DataModule
from mae.data.transfer.inaturalist import INaturalistDataModule
from mae.data.transfer.oxford_pets import OxfordPetsDataModule
from mae.data.transfer.places365 import Places365DataModule

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
