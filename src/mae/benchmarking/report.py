"""Result rows of the benchmark, ``benchmarks/results.json`` and the markdown table the README shows.

Every row is a dict with ``kind`` and that kind's fields (issue 5's schema):

- ``step``: ``preset``, ``batch``, ``dtype``, ``compiled``, ``device``, ``s_per_step``, ``img_per_s``,
  ``gflops_per_s``, ``pct_of_peak``, ``peak_mem_mb``;
- ``speedup``: ``preset``, ``decoder_depth``, ``ratio``;
- ``loader``: ``pipeline``, ``img_per_s_per_worker``;
- ``peak``: ``dtype``, ``gflops_per_s``;
- ``fast_path`` (this project's addition): ``name``, ``preset``, ``batch``, ``s_per_step_without``,
  ``s_per_step_with``, ``step_speedup``, ``peak_mem_mb_without``, ``peak_mem_mb_with``: one fast path switched
  off and on in the same run (e.g. the fused AdamW kernel, activation checkpointing).

Rows may carry further, informative fields (e.g. ``s_optimizer``); a configuration that failed (say, a
``torch.compile`` this machine cannot do) keeps its identifying fields, ``None`` for the measured ones and an
``error`` message.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mae.benchmarking.step import StepResult

Row = dict[str, Any]

SCHEMA: dict[str, tuple[str, ...]] = {
    "step": ("preset", "batch", "dtype", "compiled", "device", "s_per_step", "img_per_s", "gflops_per_s",
             "pct_of_peak", "peak_mem_mb"),
    "speedup": ("preset", "decoder_depth", "ratio"),
    "loader": ("pipeline", "img_per_s_per_worker"),
    "peak": ("dtype", "gflops_per_s"),
    "fast_path": ("name", "preset", "batch", "s_per_step_without", "s_per_step_with", "step_speedup",
                  "peak_mem_mb_without", "peak_mem_mb_with"),
}
"""The fields every row of a kind has."""


def achieved_gflops(forward_flops: int, batch: int, seconds: float) -> float:
    """GFLOP/s of a training step: 3x the forward FLOPs per image, times the batch, over the step time."""
    return 3 * forward_flops * batch / seconds / 1e9


def step_row(preset: str, batch: int, dtype: str, compiled: bool, device: str, result: StepResult,
             peak_gflops: float, **extra: Any) -> Row:
    """A ``step`` row from a measurement and the matmul peak of the row's dtype (GFLOP/s)."""
    gflops = achieved_gflops(result.forward_flops, batch, result.s_per_step)
    return {
        "kind": "step", "preset": preset, "batch": batch, "dtype": dtype, "compiled": compiled, "device": device,
        "s_per_step": result.s_per_step,
        "img_per_s": batch / result.s_per_step,
        "gflops_per_s": gflops,
        "pct_of_peak": 100 * gflops / peak_gflops,
        "peak_mem_mb": result.peak_mem_mb,
        "forward_gflop_per_img": result.forward_flops / 1e9,
        "s_forward_backward": result.s_forward_backward,
        "s_optimizer": result.s_optimizer,
        "warmup_s": result.warmup_s,
        "memory_method": result.memory_method,
        **extra,
    }


def failed_step_row(preset: str, batch: int, dtype: str, compiled: bool, device: str, error: BaseException,
                    **extra: Any) -> Row:
    """A ``step`` row for a configuration that could not be measured."""
    row: Row = {"kind": "step", "preset": preset, "batch": batch, "dtype": dtype, "compiled": compiled,
                "device": device}
    row.update({name: None for name in SCHEMA["step"] if name not in row})
    message = f"{type(error).__name__}: {error}".strip().splitlines()
    return {**row, **extra, "error": message[0][:500] if message else type(error).__name__}


def speedup_row(preset: str, decoder_depth: int, all_tokens: StepResult, mae: StepResult, batch: int,
                dtype: str) -> Row:
    """A ``speedup`` row: forward + backward time of the all-tokens model over MAE's (the paper's Table 2
    measures training time at a batch where the optimizer is negligible); the whole-step ratio, optimizer
    included, and the FLOP ratio come along."""
    return {
        "kind": "speedup", "preset": preset, "decoder_depth": decoder_depth,
        "ratio": all_tokens.s_forward_backward / mae.s_forward_backward,
        "ratio_full_step": all_tokens.s_per_step / mae.s_per_step,
        "flops_ratio": all_tokens.forward_flops / mae.forward_flops,
        "batch": batch, "dtype": dtype,
        "s_all_tokens": all_tokens.s_forward_backward, "s_mae": mae.s_forward_backward,
        "s_optimizer": mae.s_optimizer,
    }


def loader_row(pipeline: str, img_per_s_per_worker: float, **extra: Any) -> Row:
    return {"kind": "loader", "pipeline": pipeline, "img_per_s_per_worker": img_per_s_per_worker, **extra}


def peak_row(dtype: str, gflops_per_s: float, **extra: Any) -> Row:
    return {"kind": "peak", "dtype": dtype, "gflops_per_s": gflops_per_s, **extra}


def fast_path_row(name: str, preset: str, batch: int, without: StepResult, with_: StepResult, **extra: Any) -> Row:
    """A fast path measured off (``without``) and on (``with_``) on the same step; the optimizer times too."""
    return {"kind": "fast_path", "name": name, "preset": preset, "batch": batch,
            "s_per_step_without": without.s_per_step, "s_per_step_with": with_.s_per_step,
            "step_speedup": without.s_per_step / with_.s_per_step,
            "s_optimizer_without": without.s_optimizer, "s_optimizer_with": with_.s_optimizer,
            "peak_mem_mb_without": without.peak_mem_mb, "peak_mem_mb_with": with_.peak_mem_mb, **extra}


def missing_fields(row: Row) -> list[str]:
    """Schema fields ``row`` lacks (an unknown ``kind`` lacks everything)."""
    if row.get("kind") not in SCHEMA:
        return ["kind"]
    return [name for name in SCHEMA[row["kind"]] if name not in row]


def write_json(rows: Sequence[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(rows), indent=2) + "\n")


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(line) + " |" for line in lines]


def markdown(rows: Sequence[Row], title: str = "MAE pre-training benchmark", note: str = "") -> str:
    """The rows as markdown tables, one per kind, under ``title`` and an optional ``note`` paragraph."""
    by_kind = {kind: [row for row in rows if row.get("kind") == kind] for kind in SCHEMA}
    out = [f"# {title}", ""] + ([note, ""] if note else [])
    if by_kind["peak"]:
        out += ["Matmul peak (square matmuls, median of repeats, best size):", ""]
        out += _table(["dtype", "device", "GFLOP/s"],
                      [[r["dtype"], _fmt(r.get("device")), _fmt(r["gflops_per_s"], 1)] for r in by_kind["peak"]])
        out.append("")
    if by_kind["step"]:
        out += ["Full pre-training step (forward, loss, backward, AdamW), median after warm-up:", ""]
        lines = []
        for r in by_kind["step"]:
            lines.append([r["preset"], str(r["batch"]), r["dtype"], _fmt(r["compiled"]), r["device"],
                          _fmt(r["s_per_step"], 3), _fmt(r["img_per_s"], 1), _fmt(r["gflops_per_s"], 1),
                          _fmt(r["pct_of_peak"], 1), _fmt(r.get("s_optimizer"), 3), _fmt(r["peak_mem_mb"], 0),
                          r.get("error", "")])
        out += _table(["preset", "batch", "dtype", "compiled", "device", "s/step", "img/s", "GFLOP/s",
                       "% of peak", "s optimizer", "peak MiB", "error"], lines)
        out.append("")
    if by_kind["speedup"]:
        out += ["Table 2 (encoder with mask tokens for all patches vs MAE), forward + backward time ratio:", ""]
        out += _table(["preset", "decoder depth", "batch", "dtype", "ratio", "ratio incl. optimizer", "FLOP ratio"],
                      [[r["preset"], str(r["decoder_depth"]), _fmt(r.get("batch")), _fmt(r.get("dtype")),
                        _fmt(r["ratio"]), _fmt(r.get("ratio_full_step")), _fmt(r.get("flops_ratio"))]
                       for r in by_kind["speedup"]])
        out.append("")
    if by_kind["loader"]:
        out += ["Data pipeline, JPEG file to augmented tensor, one worker (one thread):", ""]
        out += _table(["pipeline", "img/s per worker", "vs PIL + torchvision"],
                      [[r["pipeline"], _fmt(r["img_per_s_per_worker"], 1), _fmt(r.get("vs_pil_torchvision"))]
                       for r in by_kind["loader"]])
        out.append("")
    if by_kind["fast_path"]:
        out += ["Fast paths, each measured off and on in this run (fp32 step, median after warm-up):", ""]
        out += _table(["fast path", "preset", "batch", "s/step off", "s/step on", "step speed-up", "s optimizer off",
                       "s optimizer on", "peak MiB off", "peak MiB on"],
                      [[r["name"], r["preset"], str(r["batch"]), _fmt(r["s_per_step_without"], 3),
                        _fmt(r["s_per_step_with"], 3), _fmt(r["step_speedup"]), _fmt(r.get("s_optimizer_without"), 3),
                        _fmt(r.get("s_optimizer_with"), 3), _fmt(r["peak_mem_mb_without"], 0),
                        _fmt(r["peak_mem_mb_with"], 0)] for r in by_kind["fast_path"]])
        out.append("")
    return "\n".join(out)


def write_markdown(rows: Sequence[Row], path: Path, note: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(rows, note=note))
