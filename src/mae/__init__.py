"""Masked Autoencoders (He et al., 2021) with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
