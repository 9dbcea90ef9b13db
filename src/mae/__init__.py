"""Masked Autoencoders (He et al., 2021) with PyTorch Lightning and Hydra."""

from mae.evaluation.features import Features, extract_features
from mae.model_files.loading import load_model

__version__ = "0.1.0"

__all__ = ["Features", "extract_features", "load_model"]
