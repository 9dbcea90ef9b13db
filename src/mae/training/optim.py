"""The reference recipe's optimisation rules: lr scaling, weight-decay groups, warmup + half-cycle cosine,
layer-wise lr decay for fine-tuning and the LARS optimiser of the linear probe."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Sequence

import torch
from torch import nn

# The names the reference's ViT (timm 0.3.2) exempts from weight decay by ``no_weight_decay()``.
REFERENCE_NO_WEIGHT_DECAY = ("pos_embed", "cls_token", "dist_token")


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


def vit_layer_id(name: str, num_layers: int) -> int:
    """The reference's layer of a ViT parameter: cls token, position and patch embedding 0, block ``i`` ``i + 1``,
    everything else (the final ``norm``, ``fc_norm``, the head) ``num_layers`` (depth + 1)."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    return num_layers


def layer_decay_param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float,
    no_weight_decay: Collection[str] = REFERENCE_NO_WEIGHT_DECAY,
) -> list[dict]:
    """Fine-tuning's AdamW groups, the reference's ``param_groups_lrd``: one group per (layer, decay or not).

    Each group has ``lr_scale = layer_decay ** (num_layers - layer)`` with ``num_layers = len(model.blocks) + 1``
    and the layer of :func:`vit_layer_id`; ``weight_decay`` on every parameter but 1-D ones and those named in
    ``no_weight_decay``. Frozen parameters are left out. Not timm's ``param_groups_layer_decay``: its group matcher
    puts the final ``norm`` (used by ``global_pool="token"``) at the last block's scale, the reference at 1.
    """
    return layer_decay_groups(model.named_parameters(), len(model.blocks), weight_decay, layer_decay, no_weight_decay)


def layer_decay_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    depth: int,
    weight_decay: float,
    layer_decay: float,
    no_weight_decay: Collection[str] = REFERENCE_NO_WEIGHT_DECAY,
    decayed: Callable[[str, nn.Parameter], bool] | None = None,
) -> list[dict]:
    """:func:`layer_decay_param_groups` for parameters named as in a timm ViT of ``depth`` blocks; any other name
    (a dense task's neck and heads) is in the top layer, at scale 1, as in MMSegmentation's and Detectron2's
    layer-decay rules for ViTs, which give the same scales. A name whose last part is in ``no_weight_decay``
    (e.g. ``relative_position_bias_table``) is not decayed either. ``decayed(name, param)``, when given, decides
    instead which parameters are decayed (Detectron2's rule decays biases and spares norm layers)."""
    num_layers = depth + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        if decayed is not None:
            decay = decayed(name, param)
        else:
            decay = not (param.ndim == 1 or name in no_weight_decay or name.rsplit(".", 1)[-1] in no_weight_decay)
        layer = vit_layer_id(name, num_layers)
        group = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (num_layers - layer),
            },
        )
        group["params"].append(param)
    return list(groups.values())


def warmup_poly_lr(
    step: int, lr: float, min_lr: float, warmup_steps: int, total_steps: int, power: float, warmup_start: float
) -> float:
    """MMSegmentation's iteration schedule (mmengine ``LinearLR`` then ``PolyLR``): the lr factor rises linearly
    from ``warmup_start`` to 1 over steps ``0 .. warmup_steps - 1``, then decays as
    ``(1 - t / T) ** power`` to ``min_lr``, with ``t`` the steps since warmup and ``T = total - warmup - 1``
    (mmengine's ``end - begin - 1``), so the last step runs at ``min_lr``."""
    if step < warmup_steps:
        ramp = step / (warmup_steps - 1) if warmup_steps > 1 else 1.0
        return lr * (warmup_start + (1.0 - warmup_start) * ramp)
    span = max(total_steps - warmup_steps - 1, 1)
    return min_lr + (lr - min_lr) * (1.0 - min(step - warmup_steps, span) / span) ** power


def warmup_step_lr(
    step: int,
    lr: float,
    warmup_steps: int,
    warmup_factor: float,
    total_steps: int,
    milestones: Sequence[float],
    gamma: float,
    cosine: bool,
    min_lr: float,
) -> float:
    """Detectron2's ``WarmupParamScheduler`` over a ``MultiStepParamScheduler`` (ViTDet's COCO recipes) or a
    ``CosineParamScheduler``, per step.

    Main schedule: ``lr * gamma ** k`` with ``k`` the milestones reached (``step >= milestone``), the milestones
    given as fractions of ``total_steps`` (ViTDet 100 epochs: 163889 and 177546 of 184375); or cosine from ``lr`` to
    ``min_lr`` over all ``total_steps``. Warmup (Detectron2's ``linear`` method): over steps ``0 .. warmup_steps``
    the lr moves linearly from ``warmup_factor`` times the main schedule's first value to its value at
    ``warmup_steps``."""

    def main(at: int) -> float:
        if cosine:
            return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(at / total_steps, 1.0)))
        return lr * gamma ** sum(at >= round(fraction * total_steps) for fraction in milestones)

    if step < warmup_steps:
        start, end = warmup_factor * main(0), main(warmup_steps)
        return start + (end - start) * step / warmup_steps
    return main(step)


class LARS(torch.optim.Optimizer):
    """The reference's LARS (``util/lars.py``): SGD with momentum, and on parameters with ``ndim > 1`` weight decay
    and a trust ratio computed on the decayed update.

    For a weight ``p``: ``dp = grad + weight_decay * p``, scaled by ``trust_coefficient * |p| / |dp|`` (1 where
    either norm is 0). Biases and other parameters with ``ndim <= 1`` take ``dp = grad``, whatever the group's
    weight decay. Then ``buf = momentum * buf + dp`` (``buf`` starts at 0) and ``p -= lr * buf``. Not timm's
    ``Lars``: with weight decay its trust ratio divides by ``|grad| + weight_decay * |p|`` instead of ``|dp|``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ) -> None:
        for key, value in (("lr", lr), ("weight_decay", weight_decay), ("momentum", momentum)):
            if value < 0:
                raise ValueError(f"{key}={value} must be non-negative")
        if trust_coefficient <= 0:
            raise ValueError(f"trust_coefficient={trust_coefficient} must be positive")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if param.ndim > 1:
                    update = update.add(param, alpha=group["weight_decay"])
                    param_norm = torch.linalg.vector_norm(param)
                    update_norm = torch.linalg.vector_norm(update)
                    one = torch.ones_like(param_norm)
                    trust = torch.where(
                        param_norm > 0,
                        torch.where(update_norm > 0, group["trust_coefficient"] * param_norm / update_norm, one),
                        one,
                    )
                    update = update.mul(trust)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update)
                param.add_(buffer, alpha=-group["lr"])
        return loss
