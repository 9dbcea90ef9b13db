"""MAE pre-training benchmark: matmul peak, full training steps, Table 2's speed-up, data loading, file listing.

    python -m mae.benchmarking            # the full set (`make bench`); minutes, on a CPU
    python -m mae.benchmarking --quick    # tiny settings, seconds (what the tests run)

Writes ``results.json`` (a list of rows, see :mod:`mae.benchmarking.report`) and ``results.md`` into ``--out``
(default: benchmarks/ under the working directory, where `make bench` runs), after every row, so an interrupted run keeps what it measured. The cheap and eager
rows come first and the ``torch.compile`` rows last; a configuration that fails, or runs past ``--row-timeout``
(say, a ``torch.compile`` too slow for this machine), is recorded with an ``error``. ``--merge`` keeps the rows
of an earlier results.json that this run does not measure again (and its peak rows when they were measured on
this machine, so that every ``pct_of_peak`` in the file refers to the peak rows in it), e.g. for ``--kinds step
--compile only``. ``--rerender`` re-assesses the step rows of ``--out``'s results.json against its peak rows by
the current rules (see :func:`mae.benchmarking.report.peak_share`) and rewrites both files, measuring nothing.
``--render-only`` rewrites results.md from results.json as it stands (``--check``: compares, exit 1 on a
difference), so that the committed tables are checked like the other result tables.
``--kinds listing --merge`` lists a generated folder of a million empty image files (``--listing-files``) and
keeps the other rows.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import torch

from mae.benchmarking import report
from mae.benchmarking.demo import measure_demo_update
from mae.benchmarking.listing import measure_listing
from mae.benchmarking.loader import measure_loaders
from mae.benchmarking.peak import measure_peak, native_support
from mae.benchmarking.step import COMPILE_SCOPES, DTYPES, MATMUL_DTYPES, build_model, forward_flops_of, measure_step

TINY = ("mae_vit_tiny_patch7", {"in_chans": 1})  # 28 px, 1 channel: the Fashion-MNIST preset
STEP_ROWS = {  # preset, its model arguments, batch
    "full": [(*TINY, 256), ("mae_vit_base_patch16", {}, 8), ("mae_vit_large_patch16", {}, 2)],
    "quick": [(*TINY, 4)],
}
SPEEDUP_PRESET = {"full": ("mae_vit_large_patch16", {}), "quick": TINY}
SPEEDUP_DEPTHS = (8, 1)
PEAK_SIZES = {"full": (256, 512, 1024, 2048, 3072), "quick": (128, 256)}
FAST_PATHS = {  # name: (what is switched off, what is switched on), as measure_step keyword arguments
    "fused_adamw": ({"adamw_kwargs": {"fused": False}}, {"adamw_kwargs": {"fused": True}}),
    "grad_checkpointing": ({"grad_checkpointing": False}, {"grad_checkpointing": True}),
}
FAST_PATH_ROWS = {  # name, preset, its model arguments, batch
    "full": [
        ("fused_adamw", *TINY, 256),
        ("fused_adamw", "mae_vit_base_patch16", {}, 8),
        # A batch whose activations outweigh weights and AdamW state, so that the memory saving shows.
        ("grad_checkpointing", "mae_vit_base_patch16", {}, 16),
    ],
    "quick": [("fused_adamw", *TINY, 4), ("grad_checkpointing", *TINY, 4)],
}
DEMO_ROWS = {  # preset, its model arguments: the Fashion-MNIST presets the demo serves on a CPU
    "full": [(*TINY,), ("mae_vit_tiny_patch4", {"in_chans": 1, "img_size": 28})],
    "quick": [(*TINY,)],
}
LISTING_FILES = {"full": 1_000_000, "quick": 2_000}
KINDS = ("peak", "step", "speedup", "loader", "fast_path", "demo", "listing")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mae.benchmarking", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny settings for tests: the tiny preset only (batch 4), 1 repeat, no compile, "
        "small peak matmuls and loader run",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per row (default 3; quick 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; quick 1)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks"),
        help="folder for results.json and results.md (default: benchmarks/)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--compile",
        choices=("on", "off", "only"),
        default=None,
        help="torch.compile rows too (default), not at all (default with --quick), or only them",
    )
    parser.add_argument(
        "--row-timeout",
        type=float,
        default=240,
        help="seconds after which a step row is abandoned and recorded with an error (0: none); "
        "a row that could not finish in time even at the dtype's matmul peak is not started",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of an existing results.json in --out that this run does not redo",
    )
    parser.add_argument(
        "--compile-scope",
        choices=COMPILE_SCOPES,
        default="model",
        help="torch.compile the whole model (default) or each transformer block",
    )
    parser.add_argument("--speedup-batch", type=int, default=4, help="batch of the Table 2 rows")
    parser.add_argument("--speedup-dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument(
        "--loader-images", type=int, default=None, help="JPEGs written and decoded (default 64; quick 8)"
    )
    parser.add_argument(
        "--listing-files",
        type=int,
        default=None,
        help="empty image files generated and listed (default 1,000,000; quick 2,000)",
    )
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="which kinds of rows to run")
    parser.add_argument(
        "--rerender",
        action="store_true",
        help="measure nothing: re-assess the share of peak of --out's results.json by the current "
        "rules and rewrite results.json and results.md (keeping results.md's note)",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: rewrite --out's results.md from its results.json as it stands (results.md's note "
        "kept, results.json untouched, no share re-assessed)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="with --render-only (implied): write nothing, exit 1 if results.md is not exactly what results.json "
        "renders to",
    )
    args = parser.parse_args(argv)
    args.render_only = args.render_only or args.check
    if args.render_only and args.rerender:
        parser.error("--render-only/--check and --rerender exclude each other")
    mode = "quick" if args.quick else "full"
    args.mode = mode
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.warmup = (1 if args.quick else 2) if args.warmup is None else args.warmup
    args.loader_images = args.loader_images or (8 if args.quick else 64)
    args.listing_files = LISTING_FILES[mode] if args.listing_files is None else args.listing_files
    if args.listing_files < 1:
        parser.error(f"--listing-files={args.listing_files} must be at least 1")
    args.compile = args.compile or ("off" if args.quick else "on")
    return args


class Results:
    """Rows so far, rewritten to disk after every addition."""

    ORDER: ClassVar[dict[str, int]] = {kind: index for index, kind in enumerate(KINDS)}

    IDENTITY: ClassVar[dict[str, tuple[str, ...]]] = {
        "step": ("preset", "batch", "dtype", "compiled", "device", "compile_scope"),
        "speedup": ("preset", "decoder_depth"),
        "loader": ("pipeline",),
        "peak": ("dtype",),
        "fast_path": ("name", "preset", "batch"),
        "demo": ("preset",),
        "listing": ("operation",),
    }

    def __init__(self, out: Path, header: str, earlier: list[report.Row] | None = None) -> None:
        self.rows: list[report.Row] = list(earlier or [])
        self.out, self.header = out, header

    @classmethod
    def position(cls, row: report.Row) -> tuple:
        """Sort key: kind, then step rows by model size, dtype and compiled (stable: run order otherwise)."""
        if row["kind"] != "step":
            return (cls.ORDER[row["kind"]],)
        sizes = {preset: index for index, (preset, _, _) in enumerate(STEP_ROWS["full"])}
        return (
            cls.ORDER["step"],
            sizes.get(row["preset"], len(sizes)),
            list(DTYPES).index(row["dtype"]),
            row["compiled"],
            str(row.get("compile_scope")),
        )

    def key(self, row: report.Row) -> tuple:
        return (row["kind"], *(row.get(name) for name in self.IDENTITY[row["kind"]]))

    def add(self, row: report.Row) -> None:
        self.rows = [old for old in self.rows if self.key(old) != self.key(row)] + [row]
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        ordered = sorted(self.rows, key=self.position)
        report.write_json(ordered, self.out / "results.json")
        report.write_markdown(ordered, self.out / "results.md", self.header)


def machine(device: str) -> str:
    """What the peaks are measured on: the GPU's name, or the CPU's model, torch's threads and ISA level (peak
    rows carry it, and ``--merge`` reuses earlier peaks only when it is this machine's)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if cpuinfo.exists()
        else platform.processor()
    )
    return f"{cpu}, {torch.get_num_threads()} threads, ISA {torch.backends.cpu.get_cpu_capability()}"


def environment(args: argparse.Namespace, earlier_note: str = "") -> str:
    """The results' note: when and on what this run measured; with ``--merge``, which rows are this run's and
    the earlier note for the others (they may come from another machine)."""
    native = {True: "yes", False: "no", None: "unknown"}[native_support("bf16", torch.device(args.device))]
    source = "torch.cuda.is_bf16_supported" if args.device.startswith("cuda") else "avx512_bf16/amx_bf16 flags"
    device = f"{machine(args.device)}, native bf16 ({source}): {native}"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    this_run = (
        f"{stamp}; {device}; torch {torch.__version__}; mode {args.mode}, warm-up {args.warmup}, "
        f"repeats {args.repeats}, compile scope {args.compile_scope}."
    )
    if not args.merge:
        return this_run
    return f"Rows of kind {', '.join(args.kinds)}: {this_run} The other rows come from an earlier run (--merge)" + (
        f": {earlier_note}" if earlier_note else "."
    )


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``TimeoutError`` in the main thread once ``seconds`` have passed (0: no limit)."""
    if seconds <= 0:
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"abandoned after the row time limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_peaks(args: argparse.Namespace, results: Results) -> report.Peaks:
    """The fp32 and bf16 peaks of this machine: measured now, or with ``--merge`` the earlier ones where those
    were measured on this machine and device (a share of peak is only taken of the same machine's peak)."""
    here = machine(args.device)
    earlier = [
        row
        for row in results.rows
        if row["kind"] == "peak" and row.get("device") == args.device and row.get("machine") == here
    ]
    if args.merge and {"fp32", "bf16"} <= {row["dtype"] for row in earlier}:
        peaks = report.Peaks.from_rows(earlier)
        print(f"using the peaks of the earlier results on this machine: {dict(peaks.gflops)}")
        return peaks
    device, measured = torch.device(args.device), []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        result = measure_peak(dtype, device, PEAK_SIZES[args.mode], repeats=3 if args.quick else 5)
        measured.append(
            report.peak_row(
                name,
                result.gflops_per_s,
                device=args.device,
                native=native_support(name, device),
                machine=here,
                mixed_gflops_per_s=result.mixed_gflops_per_s,
                by_size={str(k): v for k, v in result.by_size.items()},
                by_layout={layout: {str(k): v for k, v in rates.items()} for layout, rates in result.by_layout.items()},
            )
        )
        results.add(measured[-1])
    return report.Peaks.from_rows(measured)


def too_slow(args: argparse.Namespace, preset: str, model_kwargs: dict, batch: int, peak: float) -> float:
    """Seconds the row's steps would take at ``peak`` GFLOP/s (the best a step's mix of matmul layouts reaches)
    when that exceeds the row limit, else 0."""
    if args.row_timeout <= 0:
        return 0.0
    with torch.device("meta"):
        flops = forward_flops_of(build_model(preset, **model_kwargs))
    seconds = (args.warmup + args.repeats) * 3 * flops * batch / (peak * 1e9)
    return seconds if seconds > args.row_timeout else 0.0


def run_steps(args: argparse.Namespace, results: Results, peaks: report.Peaks, compiled: bool) -> None:
    for preset, model_kwargs, batch in STEP_ROWS[args.mode]:
        for dtype in DTYPES:
            extra = {"compile_scope": args.compile_scope} if compiled else {}
            matmul, rate = MATMUL_DTYPES[dtype], peaks.step_rate(MATMUL_DTYPES[dtype])
            shortest = too_slow(args, preset, model_kwargs, batch, rate)
            if shortest:
                error = TimeoutError(
                    f"not started: even at the measured {matmul} matmul rate of a step's "
                    f"layouts ({rate:.1f} "
                    f"GFLOP/s) its {args.warmup + args.repeats} steps would take >= {shortest:.0f} s, "
                    f"over the row limit of {args.row_timeout:.0f} s"
                )
                results.add(report.failed_step_row(preset, batch, dtype, compiled, args.device, error, **extra))
                continue
            try:
                with time_limit(args.row_timeout):
                    result = measure_step(
                        preset,
                        batch,
                        dtype,
                        compiled,
                        args.device,
                        args.warmup,
                        args.repeats,
                        compile_scope=args.compile_scope,
                        **model_kwargs,
                    )
                results.add(report.step_row(preset, batch, dtype, compiled, args.device, result, peaks, **extra))
            except Exception as error:
                results.add(report.failed_step_row(preset, batch, dtype, compiled, args.device, error, **extra))
            finally:
                if compiled:
                    torch._dynamo.reset()
                gc.collect()


def run_speedups(args: argparse.Namespace, results: Results) -> None:
    preset, model_kwargs = SPEEDUP_PRESET[args.mode]
    for depth in SPEEDUP_DEPTHS:
        timings = {}
        for all_tokens in (True, False):
            timings[all_tokens] = measure_step(
                preset,
                args.speedup_batch,
                args.speedup_dtype,
                False,
                args.device,
                max(args.warmup - 1, 1),
                args.repeats,
                all_tokens=all_tokens,
                decoder_depth=depth,
                **model_kwargs,
            )
        results.add(
            report.speedup_row(preset, depth, timings[True], timings[False], args.speedup_batch, args.speedup_dtype)
        )


def run_loaders(args: argparse.Namespace, results: Results) -> None:
    rows = measure_loaders(args.loader_images, repeats=args.repeats)
    baseline = next(row["img_per_s_per_worker"] for row in rows if row["pipeline"] == "pil_torchvision")
    for row in rows:
        pipeline, rate = row.pop("pipeline"), row.pop("img_per_s_per_worker")
        results.add(report.loader_row(pipeline, rate, vs_pil_torchvision=rate / baseline, **row))


def run_listing(args: argparse.Namespace, results: Results) -> None:
    for row in measure_listing(args.listing_files, repeats=args.repeats):
        results.add(
            report.listing_row(
                row.pop("operation"),
                row.pop("files"),
                row.pop("seconds"),
                row.pop("files_per_s"),
                machine=machine("cpu"),
                **row,
            )
        )


def run_fast_paths(args: argparse.Namespace, results: Results) -> None:
    for name, preset, model_kwargs, batch in FAST_PATH_ROWS[args.mode]:
        timings = []
        for switch in FAST_PATHS[name]:
            timings.append(
                measure_step(
                    preset, batch, "fp32", False, args.device, args.warmup, args.repeats, **{**model_kwargs, **switch}
                )
            )
            gc.collect()
        results.add(report.fast_path_row(name, preset, batch, *timings, device=args.device))


def run_demo_updates(args: argparse.Namespace, results: Results) -> None:
    for preset, model_kwargs in DEMO_ROWS[args.mode]:
        row = measure_demo_update(preset, repeats=3 if args.quick else 21, **model_kwargs)
        results.add(report.demo_row(row.pop("preset"), row.pop("s_per_update"), **row))


def rerender(out: Path) -> list[report.Row]:
    """Rewrite ``out``'s results.json and results.md from that results.json, each step row's share of peak
    re-assessed against the file's peak rows, results.md's note kept: measures nothing."""
    rows = json.loads((out / "results.json").read_text())
    peaks = report.Peaks.from_rows(rows)
    rows = [report.reassess_share(row, peaks) for row in rows]
    old_md = out / "results.md"
    note = report.note_of(old_md.read_text()) if old_md.exists() else ""
    report.write_json(rows, out / "results.json")
    report.write_markdown(rows, old_md, note)
    print(f"re-rendered {out / 'results.json'}, {old_md}")
    return rows


def render_only(out: Path, check: bool) -> list[report.Row]:
    """Rewrite (or, with ``check``, only compare) ``out``'s results.md from its results.json as it stands: the
    tables ``make bench`` wrote, re-rendered by :func:`report.rendered`. A failed check exits 1."""
    rows = json.loads((out / "results.json").read_text())
    markdown = out / "results.md"
    if check:
        if not report.render_check(out):
            raise SystemExit(
                f"{markdown} is not what {out / 'results.json'} renders to (edited by hand, or stale): "
                f"python -m mae.benchmarking --render-only --out {out}"
            )
        print(f"{markdown} is what {out / 'results.json'} renders to")
    else:
        changed = report.render(out)
        print(f"{'re-rendered' if changed else 'unchanged:'} {markdown}")
    return rows


def main(argv: list[str] | None = None) -> list[report.Row]:
    args = parse_args(argv)
    if args.render_only:
        return render_only(args.out, args.check)
    if args.rerender:
        return rerender(args.out)
    existing = args.out / "results.json"
    earlier = json.loads(existing.read_text()) if args.merge and existing.exists() else []
    earlier_markdown = args.out / "results.md"
    earlier_note = report.note_of(earlier_markdown.read_text()) if earlier and earlier_markdown.exists() else ""
    results = Results(args.out, environment(args, earlier_note), earlier)
    start = time.perf_counter()
    peaks = run_peaks(args, results) if {"peak", "step"} & set(args.kinds) else report.Peaks({})
    if "step" in args.kinds and args.compile != "only":
        run_steps(args, results, peaks, compiled=False)
    if "speedup" in args.kinds and args.compile != "only":
        run_speedups(args, results)
    if "loader" in args.kinds and args.compile != "only":
        run_loaders(args, results)
    if "listing" in args.kinds and args.compile != "only":
        run_listing(args, results)
    if "demo" in args.kinds and args.compile != "only":
        run_demo_updates(args, results)
    if "fast_path" in args.kinds and args.compile != "only":
        run_fast_paths(args, results)
    if "step" in args.kinds and args.compile != "off":
        run_steps(args, results, peaks, compiled=True)
    print(f"done in {time.perf_counter() - start:.0f} s: {args.out / 'results.json'}, {args.out / 'results.md'}")
    return results.rows


if __name__ == "__main__":
    main()
