"""The reference recipe's optimisation rules: lr scaling, weight-decay groups, warmup + half-cycle cosine."""

from __future__ import annotations

import math

from torch import nn


def scaled_lr(base_lr: float, effective_batch: int) -> float:
    """Linear scaling rule of the reference: ``lr = blr * effective_batch / 256``."""
    return base_lr * effective_batch / 256


def warmup_cosine_lr(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """Learning rate at a fractional ``epoch``: linear warmup from 0, then half-cycle cosine down to ``min_lr``."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decay for weights, none for biases and 1-D parameters; frozen parameters left out.

    As in the reference, the cls and mask tokens (3-D) are decayed.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]
