"""Result rows of the benchmark, ``benchmarks/results.json`` and the markdown table the README shows.

Every row is a dict with ``kind`` and that kind's fields:

- ``step``: ``preset``, ``batch``, ``dtype``, ``compiled``, ``device``, ``s_per_step``, ``img_per_s``,
  ``gflops_per_s``, ``pct_of_peak``, ``peak_mem_mb``; measured rows also carry ``peak_dtype`` and
  ``peak_gflops_per_s`` (the peak the share is taken of) and ``peak_note`` (why there is no share, else None);
- ``speedup``: ``preset``, ``decoder_depth``, ``ratio``;
- ``loader``: ``pipeline``, ``img_per_s_per_worker``;
- ``peak``: ``dtype``, ``gflops_per_s``; measured rows also carry ``native`` (whether the device has
  instructions for the dtype; None: unknown), ``machine`` (what they were measured on), ``by_layout`` and
  ``mixed_gflops_per_s`` (a training step's mix of operand layouts, see :mod:`~mae.benchmarking.peak`);
- ``fast_path`` (this project's addition): ``name``, ``preset``, ``batch``, ``s_per_step_without``,
  ``s_per_step_with``, ``step_speedup``, ``peak_mem_mb_without``, ``peak_mem_mb_with``: one fast path switched
  off and on in the same run (e.g. the fused AdamW kernel, activation checkpointing);
- ``demo`` (this project's addition): ``preset``, ``s_per_update``: one update of the reconstruction demo on the
  server (a 640x480 upload decoded and fitted, the MAE's forward, four PNG pictures), median.
- ``listing`` (this project's addition): ``operation``, ``files``, ``seconds``, ``files_per_s``: listing a generated
  folder of empty image files (``list_image_files``) or splitting off its held-out files (``split_held_out``), as
  ``data=unlabeled`` does before a run; with the ``machine`` (CPU) and ``filesystem`` they ran on.

Rows may carry further, informative fields (e.g. ``s_optimizer``); a configuration that failed (say, a
``torch.compile`` this machine cannot do) keeps its identifying fields, ``None`` for the measured ones and an
``error`` message.

A step's share of peak (:func:`peak_share`) is its GFLOP/s over the matmul peak of the dtype its matmuls run in
(:data:`~mae.benchmarking.step.MATMUL_DTYPES`), measured on the same machine in the same run. It is left out,
with a ``peak_note`` saying why, where it would mislead: a dtype the device does not run natively, or whose peak
is under :data:`SLOW_PEAK_FRACTION` of fp32's (its "peak" is an emulation's, which a step may well beat), and a
share above 100% (the peak measurement then does not represent the step's matmuls).

``results.md`` is only ever rendered from ``results.json`` (:func:`write_markdown`); :func:`render_check` says whether
a results.md is exactly that rendering, as the result tables of the docs are checked against their files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mae.benchmarking.step import MATMUL_DTYPES, StepResult
from mae.runs.atomic_files import write_text_atomically

Row = dict[str, Any]

SCHEMA: dict[str, tuple[str, ...]] = {
    "step": (
        "preset",
        "batch",
        "dtype",
        "compiled",
        "device",
        "s_per_step",
        "img_per_s",
        "gflops_per_s",
        "pct_of_peak",
        "peak_mem_mb",
    ),
    "speedup": ("preset", "decoder_depth", "ratio"),
    "loader": ("pipeline", "img_per_s_per_worker"),
    "peak": ("dtype", "gflops_per_s"),
    "fast_path": (
        "name",
        "preset",
        "batch",
        "s_per_step_without",
        "s_per_step_with",
        "step_speedup",
        "peak_mem_mb_without",
        "peak_mem_mb_with",
    ),
    "demo": ("preset", "s_per_update"),
    "listing": ("operation", "files", "seconds", "files_per_s"),
}
"""The fields every row of a kind has."""
SLOW_PEAK_FRACTION = 0.25
"""A dtype whose matmul peak is under this fraction of fp32's on the same device is no fast path there
(emulated, whatever the flags say), and a share of that peak says nothing about the step."""


@dataclass(frozen=True)
class Peaks:
    """The matmul peaks (GFLOP/s) of one run on one device, per dtype name, whether the device runs each dtype
    natively (None or absent: unknown), and the rate of a step's mix of operand layouts (absent: the peak)."""

    gflops: Mapping[str, float]
    native: Mapping[str, bool | None] = field(default_factory=dict)
    mixed: Mapping[str, float] = field(default_factory=dict)

    def step_rate(self, dtype: str) -> float:
        """The best GFLOP/s a training step's matmuls in ``dtype`` can reach: the layout mix's, else the peak."""
        return self.mixed.get(dtype, self.gflops[dtype])

    @classmethod
    def from_rows(cls, rows: Iterable[Row]) -> Peaks:
        """The peaks of the measured ``peak`` rows among ``rows`` (so that a results file can be re-assessed)."""
        peaks = [row for row in rows if row.get("kind") == "peak" and row.get("gflops_per_s")]
        return cls(
            {row["dtype"]: row["gflops_per_s"] for row in peaks},
            {row["dtype"]: row.get("native") for row in peaks},
            {row["dtype"]: row["mixed_gflops_per_s"] for row in peaks if row.get("mixed_gflops_per_s")},
        )


def device_noun(device: str) -> str:
    """How notes name ``device``: "CPU", "GPU" (CUDA), or the device string itself."""
    return "CPU" if device.startswith("cpu") else "GPU" if device.startswith("cuda") else device


def unusable_peak(dtype: str, device: str, peaks: Peaks) -> str | None:
    """Why the measured matmul peak of ``dtype`` is no yardstick on ``device``, or None when it is one."""
    noun = device_noun(device)
    peak, fp32 = peaks.gflops.get(dtype), peaks.gflops.get("fp32")
    if peak is None:
        return f"no {dtype} matmul peak measured in this run"
    if peaks.native.get(dtype) is False:
        return f"{dtype} not native on this {noun} (emulated)"
    if fp32 is not None and peak < SLOW_PEAK_FRACTION * fp32:
        return (
            f"{dtype} slow on this {noun} (matmul peak {peak:.1f} GFLOP/s, under {SLOW_PEAK_FRACTION:.0%} of "
            f"fp32's {fp32:.1f}: emulated or no fast kernel)"
        )
    return None


def peak_share(gflops: float, dtype: str, device: str, peaks: Peaks) -> Row:
    """The share-of-peak fields of a step of precision ``dtype`` that achieved ``gflops`` on ``device``:
    ``pct_of_peak`` (None where it would mislead), ``peak_dtype``, ``peak_gflops_per_s`` and ``peak_note``
    (why there is no share, naming the dtype and the step's GFLOP/s; None when there is one)."""
    matmul = MATMUL_DTYPES.get(dtype, dtype)
    peak = peaks.gflops.get(matmul)
    share: Row = {"pct_of_peak": None, "peak_dtype": matmul, "peak_gflops_per_s": peak, "peak_note": None}
    reason = unusable_peak(matmul, device, peaks)
    if reason is not None:
        return {**share, "peak_note": f"{reason}: {gflops:.1f} GFLOP/s, no share of peak"}
    pct = 100 * gflops / peak
    if pct > 100:
        return {
            **share,
            "peak_note": f"inconsistent peak measurement: {gflops:.1f} GFLOP/s would be {pct:.0f}% "
            f"of the {matmul} matmul peak ({peak:.1f} GFLOP/s), no share of peak",
        }
    return {**share, "pct_of_peak": pct}


def reassess_share(row: Row, peaks: Peaks) -> Row:
    """``row`` with its share of peak taken anew against ``peaks`` (a measured step row; others unchanged), so
    that a results file written by older code is re-rendered by the current rules without re-measuring."""
    if row.get("kind") != "step" or row.get("gflops_per_s") is None:
        return row
    return {**row, **peak_share(row["gflops_per_s"], row["dtype"], row["device"], peaks)}


def achieved_gflops(forward_flops: int, batch: int, seconds: float) -> float:
    """GFLOP/s of a training step: 3x the forward FLOPs per image, times the batch, over the step time."""
    return 3 * forward_flops * batch / seconds / 1e9


def step_row(
    preset: str, batch: int, dtype: str, compiled: bool, device: str, result: StepResult, peaks: Peaks, **extra: Any
) -> Row:
    """A ``step`` row from a measurement and the run's matmul peaks (see :func:`peak_share`)."""
    gflops = achieved_gflops(result.forward_flops, batch, result.s_per_step)
    return {
        "kind": "step",
        "preset": preset,
        "batch": batch,
        "dtype": dtype,
        "compiled": compiled,
        "device": device,
        "s_per_step": result.s_per_step,
        "img_per_s": batch / result.s_per_step,
        "gflops_per_s": gflops,
        **peak_share(gflops, dtype, device, peaks),
        "peak_mem_mb": result.peak_mem_mb,
        "forward_gflop_per_img": result.forward_flops / 1e9,
        "s_forward_backward": result.s_forward_backward,
        "s_optimizer": result.s_optimizer,
        "warmup_s": result.warmup_s,
        "memory_method": result.memory_method,
        **extra,
    }


def failed_step_row(
    preset: str, batch: int, dtype: str, compiled: bool, device: str, error: BaseException, **extra: Any
) -> Row:
    """A ``step`` row for a configuration that could not be measured."""
    row: Row = {
        "kind": "step",
        "preset": preset,
        "batch": batch,
        "dtype": dtype,
        "compiled": compiled,
        "device": device,
    }
    row.update({name: None for name in SCHEMA["step"] if name not in row})
    message = f"{type(error).__name__}: {error}".strip().splitlines()
    return {**row, **extra, "error": message[0][:500] if message else type(error).__name__}


def speedup_row(
    preset: str, decoder_depth: int, all_tokens: StepResult, mae: StepResult, batch: int, dtype: str
) -> Row:
    """A ``speedup`` row: forward + backward time of the all-tokens model over MAE's (the paper's Table 2
    measures training time at a batch where the optimizer is negligible); the whole-step ratio, optimizer
    included, and the FLOP ratio come along."""
    return {
        "kind": "speedup",
        "preset": preset,
        "decoder_depth": decoder_depth,
        "ratio": all_tokens.s_forward_backward / mae.s_forward_backward,
        "ratio_full_step": all_tokens.s_per_step / mae.s_per_step,
        "flops_ratio": all_tokens.forward_flops / mae.forward_flops,
        "batch": batch,
        "dtype": dtype,
        "s_all_tokens": all_tokens.s_forward_backward,
        "s_mae": mae.s_forward_backward,
        "s_optimizer": mae.s_optimizer,
    }


def loader_row(pipeline: str, img_per_s_per_worker: float, **extra: Any) -> Row:
    return {"kind": "loader", "pipeline": pipeline, "img_per_s_per_worker": img_per_s_per_worker, **extra}


def demo_row(preset: str, s_per_update: float, **extra: Any) -> Row:
    return {"kind": "demo", "preset": preset, "s_per_update": s_per_update, **extra}


def listing_row(operation: str, files: int, seconds: float, files_per_s: float, **extra: Any) -> Row:
    return {
        "kind": "listing",
        "operation": operation,
        "files": files,
        "seconds": seconds,
        "files_per_s": files_per_s,
        **extra,
    }


def peak_row(dtype: str, gflops_per_s: float, **extra: Any) -> Row:
    return {"kind": "peak", "dtype": dtype, "gflops_per_s": gflops_per_s, **extra}


def fast_path_row(name: str, preset: str, batch: int, without: StepResult, with_: StepResult, **extra: Any) -> Row:
    """A fast path measured off (``without``) and on (``with_``) on the same step; the optimizer times too."""
    return {
        "kind": "fast_path",
        "name": name,
        "preset": preset,
        "batch": batch,
        "s_per_step_without": without.s_per_step,
        "s_per_step_with": with_.s_per_step,
        "step_speedup": without.s_per_step / with_.s_per_step,
        "s_optimizer_without": without.s_optimizer,
        "s_optimizer_with": with_.s_optimizer,
        "peak_mem_mb_without": without.peak_mem_mb,
        "peak_mem_mb_with": with_.peak_mem_mb,
        **extra,
    }


def missing_fields(row: Row) -> list[str]:
    """Schema fields ``row`` lacks (an unknown ``kind`` lacks everything)."""
    if row.get("kind") not in SCHEMA:
        return ["kind"]
    return [name for name in SCHEMA[row["kind"]] if name not in row]


def write_json(rows: Sequence[Row], path: Path) -> None:
    write_text_atomically(path, json.dumps(list(rows), indent=2) + "\n")


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


def _native_note(peak: Row) -> str:
    """The line under the peak table for a dtype the device does not run natively, which says why its step
    rows have no share of peak."""
    return (
        f"{peak['dtype']} is not native on this {device_noun(str(peak.get('device', 'cpu')))} (no {peak['dtype']} "
        f"matmul instructions; emulated): its step rows give GFLOP/s, not a share of peak."
    )


def _share_cell(step: Row) -> str:
    """The "% of peak" cell: the share, or else the note saying why there is none."""
    return _fmt(step["pct_of_peak"], 1) if step["pct_of_peak"] is not None else step.get("peak_note") or "-"


def markdown(rows: Sequence[Row], title: str = "MAE pre-training benchmark", note: str = "") -> str:
    """The rows as markdown tables, one per kind, under ``title`` and an optional ``note`` paragraph."""
    by_kind = {kind: [row for row in rows if row.get("kind") == kind] for kind in SCHEMA}
    out = [f"# {title}", ""] + ([note, ""] if note else [])
    if by_kind["peak"]:
        out += ["Matmul peak (square matmuls, median of repeats, best size):", ""]
        out += _table(
            ["dtype", "device", "GFLOP/s", "native"],
            [
                [r["dtype"], _fmt(r.get("device")), _fmt(r["gflops_per_s"], 1), _fmt(r.get("native"))]
                for r in by_kind["peak"]
            ],
        )
        out.append("")
        notes = [_native_note(r) for r in by_kind["peak"] if r.get("native") is False]
        out += notes + ([""] if notes else [])
    if by_kind["step"]:
        out += ["Full pre-training step (forward, loss, backward, AdamW), median after warm-up:", ""]
        lines = []
        for r in by_kind["step"]:
            lines.append(
                [
                    r["preset"],
                    str(r["batch"]),
                    r["dtype"],
                    _fmt(r["compiled"]),
                    r["device"],
                    _fmt(r["s_per_step"], 3),
                    _fmt(r["img_per_s"], 1),
                    _fmt(r["gflops_per_s"], 1),
                    _share_cell(r),
                    _fmt(r.get("s_optimizer"), 3),
                    _fmt(r["peak_mem_mb"], 0),
                    r.get("error", ""),
                ]
            )
        out += _table(
            [
                "preset",
                "batch",
                "dtype",
                "compiled",
                "device",
                "s/step",
                "img/s",
                "GFLOP/s",
                "% of peak",
                "s optimizer",
                "peak MiB",
                "error",
            ],
            lines,
        )
        out.append("")
    if by_kind["speedup"]:
        out += ["Table 2 (encoder with mask tokens for all patches vs MAE), forward + backward time ratio:", ""]
        out += _table(
            ["preset", "decoder depth", "batch", "dtype", "ratio", "ratio incl. optimizer", "FLOP ratio"],
            [
                [
                    r["preset"],
                    str(r["decoder_depth"]),
                    _fmt(r.get("batch")),
                    _fmt(r.get("dtype")),
                    _fmt(r["ratio"]),
                    _fmt(r.get("ratio_full_step")),
                    _fmt(r.get("flops_ratio")),
                ]
                for r in by_kind["speedup"]
            ],
        )
        out.append("")
    if by_kind["loader"]:
        out += ["Data pipeline, JPEG file to augmented tensor, one worker (one thread):", ""]
        out += _table(
            ["pipeline", "img/s per worker", "vs PIL + torchvision"],
            [
                [r["pipeline"], _fmt(r["img_per_s_per_worker"], 1), _fmt(r.get("vs_pil_torchvision"))]
                for r in by_kind["loader"]
            ],
        )
        out.append("")
    if by_kind["fast_path"]:
        out += ["Fast paths, each measured off and on in this run (fp32 step, median after warm-up):", ""]
        out += _table(
            [
                "fast path",
                "preset",
                "batch",
                "s/step off",
                "s/step on",
                "step speed-up",
                "s optimizer off",
                "s optimizer on",
                "peak MiB off",
                "peak MiB on",
            ],
            [
                [
                    r["name"],
                    r["preset"],
                    str(r["batch"]),
                    _fmt(r["s_per_step_without"], 3),
                    _fmt(r["s_per_step_with"], 3),
                    _fmt(r["step_speedup"]),
                    _fmt(r.get("s_optimizer_without"), 3),
                    _fmt(r.get("s_optimizer_with"), 3),
                    _fmt(r["peak_mem_mb_without"], 0),
                    _fmt(r["peak_mem_mb_with"], 0),
                ]
                for r in by_kind["fast_path"]
            ],
        )
        out.append("")
    if by_kind["demo"]:
        out += [
            "Reconstruction demo, one update on the server (upload decoded and fitted, forward, four PNGs), median:",
            "",
        ]
        out += _table(
            ["preset", "image", "upload", "ms per update", "threads"],
            [
                [
                    r["preset"],
                    f"{_fmt(r.get('img_size'))} px x {_fmt(r.get('in_chans'))}",
                    _fmt(r.get("upload")),
                    _fmt(1000 * r["s_per_update"], 1),
                    _fmt(r.get("threads")),
                ]
                for r in by_kind["demo"]
            ],
        )
        out.append("")
    if by_kind["listing"]:
        out += [
            "Listing a folder of empty image files, 1,000 per folder (data=unlabeled before a run), median of repeats:",
            "",
        ]
        out += _table(
            ["operation", "files", "seconds", "files/s", "file system", "machine"],
            [
                [
                    r["operation"],
                    f"{r['files']:,}",
                    _fmt(r["seconds"], 3),
                    f"{r['files_per_s']:,.0f}" if r["files_per_s"] is not None else "-",
                    _fmt(r.get("filesystem")),
                    _fmt(r.get("machine")),
                ]
                for r in by_kind["listing"]
            ],
        )
        out.append("")
    return "\n".join(out)


def note_of(markdown_text: str) -> str:
    """The note paragraph of a :func:`markdown` text, so that a re-rendered results.md keeps the run's
    environment line: the paragraph after the title, unless it is the line above a table."""
    paragraphs = markdown_text.split("\n\n")
    if not markdown_text.startswith("# ") or len(paragraphs) < 2:
        return ""
    followed_by_table = len(paragraphs) > 2 and paragraphs[2].startswith("|")
    return "" if followed_by_table or paragraphs[1].startswith("|") else paragraphs[1].strip()


def write_markdown(rows: Sequence[Row], path: Path, note: str = "") -> None:
    write_text_atomically(path, markdown(rows, note=note))


def rendered(results_dir: Path) -> str:
    """The results.md that ``results_dir``'s results.json renders to: :func:`markdown` of its rows, exactly as
    :func:`write_markdown` writes them, with the note of the results.md there (:func:`note_of`; none when there is
    no results.md). Re-assesses nothing and measures nothing."""
    rows = json.loads((results_dir / "results.json").read_text())
    existing = results_dir / "results.md"
    return markdown(rows, note=note_of(existing.read_text()) if existing.exists() else "")


def render_check(results_dir: Path) -> bool:
    """Whether ``results_dir``'s results.md is exactly what its results.json renders to (:func:`rendered`): a
    number typed into results.md by hand, or a table left behind by a results.json edit, makes it False."""
    path = results_dir / "results.md"
    return path.exists() and path.read_text() == rendered(results_dir)


def render(results_dir: Path) -> bool:
    """Rewrite ``results_dir``'s results.md from its results.json (:func:`rendered`), results.json untouched;
    whether the file changed."""
    path = results_dir / "results.md"
    text = rendered(results_dir)
    changed = not path.exists() or path.read_text() != text
    if changed:
        write_text_atomically(path, text)
    return changed
