"""Time one full MAE pre-training step: forward, loss, backward and the AdamW step.

The step is the project's: a preset factory from :mod:`mae.models`, AdamW over
:func:`mae.training.optim.param_groups_weight_decay` groups with betas (0.9, 0.95), optionally under bf16
autocast and optionally ``torch.compile``'d. Inputs are a fixed batch of random images; the masks are drawn
anew every step, as in training. Timing: ``warmup`` untimed steps (they include any compilation), then the
median over ``repeats`` timed steps; the forward + backward part and the optimizer part are also timed
separately (the device is synchronised between them).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import mae.models
from mae.benchmarking.flops import MAEShape, all_tokens_forward_flops, mae_forward_flops
from mae.benchmarking.memory import PeakMemory
from mae.benchmarking.peak import synchronize
from mae.benchmarking.simmim import AllTokensMAE
from mae.training.optim import param_groups_weight_decay

DTYPES = {"fp32": None, "bf16": torch.bfloat16}
"""Step precisions: plain fp32, or bf16 autocast over the forward and the loss (weights stay fp32)."""
MATMUL_DTYPES = {"fp32": "fp32", "bf16": "bf16"}
"""The dtype each step precision's matmuls run in, whose matmul peak its share of peak is taken of: bf16
autocast casts the inputs of every linear, convolution, matmul and attention to bf16 (the weights stay fp32,
but no counted FLOP runs in fp32), so a bf16 step is measured against the bf16 peak, not the fp32 one."""
COMPILE_SCOPES = ("model", "blocks")
"""What ``torch.compile`` wraps: the whole model, or each transformer block in place (one graph per shape)."""
WEIGHT_DECAY = 0.05
BETAS = (0.9, 0.95)
LR = 1.5e-4


@dataclass
class StepResult:
    """Timings (seconds) and memory of one benchmarked configuration."""

    s_per_step: float
    """Median seconds of a whole step (forward, backward, optimizer)."""
    s_forward_backward: float
    """Median seconds of the forward + backward part."""
    s_optimizer: float
    """Median seconds of ``zero_grad`` + ``optimizer.step``."""
    warmup_s: float
    """Seconds of all warm-up steps together (compilation included)."""
    peak_mem_mb: float
    memory_method: str
    forward_flops: int
    """Analytic forward FLOPs of one image."""
    params: int
    step_times: list[float] = field(default_factory=list)


def build_model(preset: str, all_tokens: bool = False, **model_kwargs: Any) -> nn.Module:
    """The preset ``preset`` (a factory name in :mod:`mae.models`), wrapped as all-tokens when asked."""
    factory: Callable[..., nn.Module] | None = getattr(mae.models, preset, None)
    if factory is None or not preset.startswith("mae_vit_"):
        raise ValueError(f"unknown preset {preset!r}; expected a factory of mae.models such as mae_vit_base_patch16")
    model = factory(**model_kwargs)
    return AllTokensMAE(model) if all_tokens else model


def forward_flops_of(model: nn.Module) -> int:
    """Analytic forward FLOPs of one image for ``model`` (MAE, or its all-tokens wrapper)."""
    shape = MAEShape.from_model(model)
    return all_tokens_forward_flops(shape) if isinstance(model, AllTokensMAE) else mae_forward_flops(shape)


def make_optimizer(model: nn.Module, **adamw_kwargs: Any) -> torch.optim.AdamW:
    """The project's AdamW: decay on weights only, betas (0.9, 0.95), fused kernel (as ``fused_optimizer``'s
    default); extra arguments (``fused=False``, ``foreach``) pass through."""
    groups = param_groups_weight_decay(model, WEIGHT_DECAY)
    return torch.optim.AdamW(groups, lr=LR, betas=BETAS, **{"fused": True, **adamw_kwargs})


def compile_model(model: nn.Module, scope: str) -> nn.Module:
    """``torch.compile`` the whole model (returns the compiled wrapper) or each block in place."""
    if scope == "model":
        return torch.compile(model)
    if scope == "blocks":
        inner = getattr(model, "mae", model)
        for block in [*inner.blocks, *inner.decoder_blocks]:
            block.compile()
        return model
    raise ValueError(f"compile scope {scope!r} is not one of {COMPILE_SCOPES}")


class TrainStep:
    """One configured pre-training step, callable in its two timed parts.

    Holds the model (compiled or not), its AdamW and a fixed batch of random images on ``device``.
    """

    def __init__(
        self,
        preset: str,
        batch: int,
        dtype: str = "fp32",
        compiled: bool = False,
        device: str | torch.device = "cpu",
        all_tokens: bool = False,
        compile_scope: str = "model",
        adamw_kwargs: dict[str, Any] | None = None,
        **model_kwargs: Any,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if batch < 1:
            raise ValueError(f"batch={batch} must be at least 1")
        self.device = torch.device(device)
        self.model = build_model(preset, all_tokens, **model_kwargs).to(self.device).train()
        self.forward_flops = forward_flops_of(self.model)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.optimizer = make_optimizer(self.model, **(adamw_kwargs or {}))
        self.runner = compile_model(self.model, compile_scope) if compiled else self.model
        inner = getattr(self.model, "mae", self.model)
        self.imgs = torch.randn(batch, inner.in_chans, inner.img_size, inner.img_size, device=self.device)
        self.autocast = DTYPES[dtype]

    def forward_backward(self) -> torch.Tensor:
        """Forward (under bf16 autocast when asked), loss, backward; returns the loss."""
        context = torch.autocast(self.device.type, dtype=self.autocast) if self.autocast is not None else nullcontext()
        with context:
            loss = self.runner(self.imgs).loss
        loss.backward()
        return loss.detach()

    def optimizer_step(self) -> None:
        """AdamW step, then gradients dropped (``set_to_none``)."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self) -> torch.Tensor:
        loss = self.forward_backward()
        self.optimizer_step()
        return loss


def measure_step(
    preset: str,
    batch: int,
    dtype: str = "fp32",
    compiled: bool = False,
    device: str | torch.device = "cpu",
    warmup: int = 2,
    repeats: int = 3,
    all_tokens: bool = False,
    compile_scope: str = "model",
    seed: int = 0,
    adamw_kwargs: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> StepResult:
    """Build the step, run ``warmup`` + ``repeats`` steps and return the timings.

    The memory peak covers the whole region: model, optimizer state, and every step's activations.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1 (got {warmup}, {repeats})")
    device = torch.device(device)
    torch.manual_seed(seed)
    with PeakMemory(device) as memory:
        step = TrainStep(
            preset, batch, dtype, compiled, device, all_tokens, compile_scope, adamw_kwargs, **model_kwargs
        )
        synchronize(device)
        start = time.perf_counter()
        for _ in range(warmup):
            step()
        synchronize(device)
        warmup_s = time.perf_counter() - start

        totals, fwd_bwd, opt = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step.forward_backward()
            synchronize(device)
            t1 = time.perf_counter()
            step.optimizer_step()
            synchronize(device)
            t2 = time.perf_counter()
            totals.append(t2 - t0)
            fwd_bwd.append(t1 - t0)
            opt.append(t2 - t1)
        flops, params = step.forward_flops, step.params
        del step
    return StepResult(
        s_per_step=statistics.median(totals),
        s_forward_backward=statistics.median(fwd_bwd),
        s_optimizer=statistics.median(opt),
        warmup_s=warmup_s,
        peak_mem_mb=memory.peak_mb,
        memory_method=memory.method,
        forward_flops=flops,
        params=params,
        step_times=totals,
    )
