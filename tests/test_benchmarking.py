"""The benchmark harness: analytic FLOP counts, the all-tokens comparison model, and the rows that
``python -m mae.benchmarking --quick`` writes. Nothing here asserts a speed: the timings only have to be consistent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mae.benchmarking import report
from mae.benchmarking.__main__ import main as benchmark_main
from mae.benchmarking.flops import MAEShape, all_tokens_forward_flops, block_flops, mae_forward_flops, train_flops
from mae.benchmarking.peak import LAYOUTS, cpu_flags, layout_mix_gflops, measure_peak, native_bf16_cpu, native_support
from mae.benchmarking.report import Peaks, peak_share
from mae.benchmarking.simmim import AllTokensMAE
from mae.benchmarking.step import MATMUL_DTYPES, StepResult, build_model, forward_flops_of
from mae.models import mae_vit_base_patch16, mae_vit_huge_patch14, mae_vit_large_patch16, mae_vit_tiny_patch7

ROOT = Path(__file__).resolve().parents[1]


def meta_shape(factory, **kwargs) -> MAEShape:
    """The FLOP-relevant configuration of a preset, read off a weightless (meta-device) instance."""
    with torch.device("meta"):
        return MAEShape.from_model(factory(**kwargs))


def test_block_formula_at_mlp_ratio_4():
    assert block_flops(50, 768) == 24 * 50 * 768**2 + 4 * 50**2 * 768


def test_vit_b_forward_flops_match_reference():
    shape = meta_shape(mae_vit_base_patch16)
    assert (shape.num_patches, shape.embed_dim, shape.depth, shape.decoder_embed_dim, shape.decoder_depth) == (
        196,
        768,
        12,
        512,
        8,
    )
    assert mae_forward_flops(shape) / 1e9 == pytest.approx(19.56, abs=0.01)
    assert train_flops(mae_forward_flops(shape)) / 1e9 == pytest.approx(58.7, abs=0.05)


@pytest.mark.parametrize("factory, per_trained_image", [(mae_vit_large_patch16, 124.5), (mae_vit_huge_patch14, 291.4)])
def test_large_and_huge_train_flops_match_reference(factory, per_trained_image):
    assert train_flops(mae_forward_flops(meta_shape(factory))) / 1e9 == pytest.approx(per_trained_image, abs=0.1)


def test_count_is_the_sum_of_its_parts():
    shape = meta_shape(mae_vit_base_patch16)
    kept, length, d, e, pd = 49 + 1, 196 + 1, 768, 512, 16 * 16 * 3
    expected = (
        2 * 196 * pd * d
        + 12 * block_flops(kept, d)
        + 2 * kept * d * e
        + 8 * block_flops(length, e)
        + 2 * length * e * pd
    )
    assert mae_forward_flops(shape) == expected


@pytest.mark.parametrize(
    "factory, ratio", [(mae_vit_base_patch16, 2.351), (mae_vit_large_patch16, 3.228), (mae_vit_huge_patch14, 3.594)]
)
def test_all_tokens_encoder_costs_the_expected_multiple(factory, ratio):
    shape = meta_shape(factory)
    mae, all_tokens = mae_forward_flops(shape), all_tokens_forward_flops(shape)
    # Only the encoder blocks and decoder_embed see more tokens: 197 (or 257) instead of kept + 1.
    length, kept = shape.num_patches + 1, int(shape.num_patches * 0.25) + 1
    extra = (
        shape.depth * (block_flops(length, shape.embed_dim) - block_flops(kept, shape.embed_dim))
        + 2 * (length - kept) * shape.embed_dim * shape.decoder_embed_dim
    )
    assert all_tokens - mae == extra
    assert all_tokens / mae == pytest.approx(ratio, abs=1e-3)


def test_all_tokens_gap_shrinks_with_the_decoder_only_through_the_denominator():
    deep, shallow = meta_shape(mae_vit_large_patch16), meta_shape(mae_vit_large_patch16, decoder_depth=1)
    assert all_tokens_forward_flops(deep) - mae_forward_flops(deep) == (
        all_tokens_forward_flops(shallow) - mae_forward_flops(shallow)
    )
    assert all_tokens_forward_flops(shallow) / mae_forward_flops(shallow) > 3.7


def test_all_tokens_model_composes_mae_and_encodes_every_patch():
    torch.manual_seed(0)
    mae = mae_vit_tiny_patch7(in_chans=1)
    model = AllTokensMAE(mae)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in mae.parameters()) + 192
    seen = []
    mae.blocks[0].register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    imgs = torch.randn(2, 1, 28, 28)
    out = model(imgs)
    assert seen == [16 + 1]
    assert out.pred.shape == (2, 16, 49) and out.mask.shape == (2, 16)
    assert out.mask.sum().item() == 2 * 12 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.encoder_mask_token.grad is not None and model.encoder_mask_token.grad.abs().sum() > 0
    assert forward_flops_of(model) == all_tokens_forward_flops(MAEShape.from_model(mae))
    mae(imgs)
    assert seen[-1] == 4 + 1  # the wrapped MAE itself still keeps 25%


def test_build_model_rejects_unknown_presets():
    with pytest.raises(ValueError, match="unknown preset"):
        build_model("resnet50")


def test_failed_row_keeps_the_schema():
    row = report.failed_step_row("mae_vit_tiny_patch7", 4, "bf16", True, "cpu", RuntimeError("no compiler\nmore"))
    assert report.missing_fields(row) == [] and row["error"] == "RuntimeError: no compiler"
    assert row["s_per_step"] is None


X86_CPUINFO = """processor\t: {n}
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma {extra}
bugs\t\t: sysret_ss_attrs

"""
AVX2 = X86_CPUINFO.format(n=0, extra="") + X86_CPUINFO.format(n=1, extra="")
ZEN4 = X86_CPUINFO.format(n=0, extra="avx512f avx512_bf16") + X86_CPUINFO.format(n=1, extra="avx512f avx512_bf16")
ARM = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"


def test_cpu_flags_are_those_every_processor_lists():
    assert {"avx2", "fma", "avx512_bf16"} <= cpu_flags(ZEN4) and "sysret_ss_attrs" not in cpu_flags(ZEN4)
    mixed = X86_CPUINFO.format(n=0, extra="amx_bf16") + X86_CPUINFO.format(n=1, extra="")
    assert "amx_bf16" not in cpu_flags(mixed) and "avx2" in cpu_flags(mixed)
    assert "bf16" in cpu_flags(ARM) and cpu_flags("processor\t: 0\n") == frozenset()


def test_native_bf16_needs_bf16_matmul_instructions():
    assert native_bf16_cpu(cpu_flags(ZEN4)) and native_bf16_cpu(cpu_flags(ARM))
    assert native_bf16_cpu(frozenset({"avx512f", "amx_bf16"}))
    assert not native_bf16_cpu(cpu_flags(AVX2)) and not native_bf16_cpu(frozenset({"avx512f", "avx512bw"}))


def test_native_support_reads_the_cpuinfo_file(tmp_path):
    cpuinfo, cpu = tmp_path / "cpuinfo", torch.device("cpu")
    cpuinfo.write_text(AVX2)
    assert native_support("fp32", cpu, cpuinfo) is True and native_support("bf16", cpu, cpuinfo) is False
    cpuinfo.write_text(ZEN4)
    assert native_support("bf16", cpu, cpuinfo) is True
    assert native_support("bf16", cpu, tmp_path / "absent") is None  # no /proc/cpuinfo: cannot tell


EMULATED = Peaks({"fp32": 150.0, "bf16": 1.3}, {"fp32": True, "bf16": False})


def test_emulated_bf16_step_gets_its_gflops_and_no_share():
    share = peak_share(30.0, "bf16", "cpu", EMULATED)
    assert share["pct_of_peak"] is None and share["peak_dtype"] == "bf16" and share["peak_gflops_per_s"] == 1.3
    assert "bf16 not native on this CPU (emulated)" in share["peak_note"] and "30.0 GFLOP/s" in share["peak_note"]
    fp32 = peak_share(90.0, "fp32", "cpu", EMULATED)  # the fp32 row of the same run keeps its share of fp32's peak
    assert fp32["pct_of_peak"] == pytest.approx(60.0) and fp32["peak_note"] is None


def test_bf16_peak_far_below_fp32_gives_no_share_even_without_flags():
    share = peak_share(30.0, "bf16", "cpu", Peaks({"fp32": 150.0, "bf16": 1.3}))  # native unknown
    assert share["pct_of_peak"] is None and "bf16 slow on this CPU" in share["peak_note"]
    assert "1.3" in share["peak_note"] and "30.0 GFLOP/s" in share["peak_note"]


def test_native_bf16_step_is_a_share_of_the_bf16_peak():
    peaks = Peaks({"fp32": 150.0, "bf16": 300.0}, {"fp32": True, "bf16": True})
    share = peak_share(30.0, "bf16", "cpu", peaks)
    assert share["pct_of_peak"] == pytest.approx(10.0) and share["peak_note"] is None
    assert share["peak_gflops_per_s"] == 300.0
    assert peak_share(30.0, "bf16", "cuda", peaks)["pct_of_peak"] == pytest.approx(10.0)


def test_share_above_100_percent_is_flagged_not_reported():
    peaks = Peaks({"fp32": 150.0, "bf16": 300.0}, {"fp32": True, "bf16": True})
    for dtype, gflops in (("fp32", 450.0), ("bf16", 900.0)):
        share = peak_share(gflops, dtype, "cpu", peaks)
        assert share["pct_of_peak"] is None and "inconsistent peak measurement" in share["peak_note"]
        assert f"{gflops:.1f} GFLOP/s" in share["peak_note"] and "300%" in share["peak_note"]
    assert peak_share(150.0, "fp32", "cpu", peaks)["pct_of_peak"] == pytest.approx(100.0)  # at the peak: kept


def test_missing_peak_gives_no_share():
    share = peak_share(30.0, "bf16", "cuda", Peaks({"fp32": 150.0}))
    assert share["pct_of_peak"] is None and "no bf16 matmul peak" in share["peak_note"]


def test_bf16_autocast_runs_the_steps_matmuls_in_bf16():
    # Why MATMUL_DTYPES maps bf16 steps to the bf16 peak: autocast casts every matmul's inputs, weights stay fp32.
    layer, x = torch.nn.Linear(8, 8), torch.randn(2, 4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        attention = torch.nn.functional.scaled_dot_product_attention(x, x, x)
    assert out.dtype == attention.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32
    assert MATMUL_DTYPES == {"fp32": "fp32", "bf16": "bf16"}


def fake_step(s_per_step: float, forward_flops: int = 10**9) -> StepResult:
    return StepResult(s_per_step, s_per_step * 0.9, s_per_step * 0.1, 1.0, 100.0, "test", forward_flops, 1000)


def test_step_rows_and_markdown_never_show_a_share_of_an_emulated_peak():
    # 3 * 1 GFLOP * 10 images / 1 s = 30 GFLOP/s: the bf16 row, about 2300% of the emulated 1.3.
    bf16 = report.step_row("mae_vit_tiny_patch7", 10, "bf16", False, "cpu", fake_step(1.0), EMULATED)
    fp32 = report.step_row("mae_vit_tiny_patch7", 10, "fp32", False, "cpu", fake_step(0.5), EMULATED)
    assert report.missing_fields(bf16) == [] and bf16["gflops_per_s"] == pytest.approx(30.0)
    assert bf16["pct_of_peak"] is None and fp32["pct_of_peak"] == pytest.approx(40.0)
    peak_rows = [
        report.peak_row("fp32", 150.0, device="cpu", native=True),
        report.peak_row("bf16", 1.3, device="cpu", native=False),
    ]
    text = report.markdown([*peak_rows, bf16, fp32], note="env line")
    assert "| bf16 | cpu | 1.3 | no |" in text and "bf16 is not native on this CPU" in text
    assert "| 30.0 | bf16 not native on this CPU (emulated): 30.0 GFLOP/s, no share of peak |" in text
    assert "| 60.0 | 40.0 |" in text and "2307" not in text
    assert report.note_of(text) == "env line" and report.note_of(report.markdown(peak_rows)) == ""


def test_reassessing_an_old_row_replaces_its_share():
    old = {
        "kind": "step",
        "preset": "p",
        "batch": 256,
        "dtype": "bf16",
        "compiled": False,
        "device": "cpu",
        "gflops_per_s": 4.03,
        "pct_of_peak": 299.99,
    }
    peak_rows = [
        {"kind": "peak", "dtype": "fp32", "gflops_per_s": 153.1},
        {"kind": "peak", "dtype": "bf16", "gflops_per_s": 1.34},
    ]  # written before `native` existed
    new = report.reassess_share(old, Peaks.from_rows(peak_rows))
    assert new["pct_of_peak"] is None and "bf16 slow on this CPU" in new["peak_note"] and new["batch"] == 256
    failed = report.failed_step_row("p", 4, "bf16", False, "cpu", TimeoutError("not started"))
    assert report.reassess_share(failed, Peaks.from_rows(peak_rows)) == failed


def test_committed_results_have_no_share_above_100_percent():
    rows = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    for row in (row for row in rows if row["kind"] == "step" and row.get("gflops_per_s") is not None):
        assert row["pct_of_peak"] is None or row["pct_of_peak"] <= 100, row
        assert row["pct_of_peak"] is not None or row["peak_note"], row


def test_committed_results_md_is_what_results_json_renders_to():
    # benchmarks/results.md is rendered from results.json, never typed: if this fails, re-render it with
    # `python -m mae.benchmarking --render-only` (or re-run `make bench`), do not edit it.
    assert report.render_check(ROOT / "benchmarks"), "benchmarks/results.md differs from what results.json renders to"
    assert benchmark_main(["--check", "--out", str(ROOT / "benchmarks")]) == json.loads(
        (ROOT / "benchmarks" / "results.json").read_text()
    )


def test_a_number_edited_by_hand_in_results_md_fails_the_check(tmp_path):
    for name in ("results.json", "results.md"):
        (tmp_path / name).write_text((ROOT / "benchmarks" / name).read_text())
    committed = (tmp_path / "results.md").read_text()
    assert report.render_check(tmp_path) and report.note_of(committed)
    cell = "| 153.1 |"  # the committed fp32 matmul peak, as rendered
    assert committed.count(cell) == 1
    (tmp_path / "results.md").write_text(committed.replace(cell, "| 163.1 |"))
    assert not report.render_check(tmp_path)
    with pytest.raises(SystemExit, match="is not what .* renders to"):
        benchmark_main(["--render-only", "--check", "--out", str(tmp_path)])
    assert (tmp_path / "results.md").read_text() != committed  # a check writes nothing
    json_before = (tmp_path / "results.json").read_text()
    benchmark_main(["--render-only", "--out", str(tmp_path)])  # re-rendered from results.json, its note kept
    assert (tmp_path / "results.md").read_text() == committed and report.render_check(tmp_path)
    assert (tmp_path / "results.json").read_text() == json_before
    # A number changed in results.json is a stale results.md until it is re-rendered.
    (tmp_path / "results.json").write_text(json_before.replace("153.11446527696862", "163.11446527696862", 1))
    assert not report.render_check(tmp_path)
    assert report.render(tmp_path) and "| 163.1 |" in (tmp_path / "results.md").read_text()
    assert report.render_check(tmp_path) and not report.render(tmp_path)
    assert not report.render_check(tmp_path / "absent")  # no results.md: nothing to match


def test_peak_is_the_best_size_and_layout():
    result = measure_peak(torch.float32, torch.device("cpu"), sizes=(16, 32), repeats=1)
    assert set(result.by_layout) == set(LAYOUTS) and all(set(rates) == {16, 32} for rates in result.by_layout.values())
    assert result.by_size == {size: max(rates[size] for rates in result.by_layout.values()) for size in (16, 32)}
    assert result.gflops_per_s == max(result.by_size.values()) > 0 and result.dtype == "fp32"
    assert 0 < result.mixed_gflops_per_s <= result.gflops_per_s


def test_a_steps_layout_mix_runs_at_the_harmonic_mean():
    # Say emulated bf16 on a CPU's fallback GEMM at 3, 4 and 24 GFLOP/s: a third of the FLOPs in each takes
    # (1/3 + 1/4 + 1/24) / 3 s per GFLOP, i.e. 4.8 GFLOP/s, far from the best layout's 24.
    assert layout_mix_gflops({"nn": 3.0, "nt": 4.0, "tn": 24.0}) == pytest.approx(4.8)
    assert layout_mix_gflops({"nn": 150.0}) == pytest.approx(150.0)
    rows = [report.peak_row("bf16", 24.0, mixed_gflops_per_s=4.8), report.peak_row("fp32", 150.0)]
    peaks = Peaks.from_rows(rows)
    assert peaks.step_rate("bf16") == 4.8 and peaks.step_rate("fp32") == 150.0 and peaks.gflops["bf16"] == 24.0


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    benchmark_main(["--quick", "--out", str(out)])
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_quick_run_rows_match_the_schema(quick_results):
    rows, _ = quick_results
    for row in rows:
        assert report.missing_fields(row) == [], row
    kinds = [row["kind"] for row in rows]
    assert kinds.count("peak") == 2 and kinds.count("step") == 2 and kinds.count("speedup") == 2
    assert {row["name"] for row in rows if row["kind"] == "fast_path"} == {"fused_adamw", "grad_checkpointing"}
    assert {row["pipeline"] for row in rows if row["kind"] == "loader"} == {
        "project",
        "project_pil",
        "pil_torchvision",
        "project_stream",
    }
    assert {row["decoder_depth"] for row in rows if row["kind"] == "speedup"} == {8, 1}
    assert {(row["dtype"], row["compiled"]) for row in rows if row["kind"] == "step"} == {
        ("fp32", False),
        ("bf16", False),
    }


def test_quick_run_rows_are_internally_consistent(quick_results):
    rows, markdown = quick_results
    peaks = {row["dtype"]: row["gflops_per_s"] for row in rows if row["kind"] == "peak"}
    assert set(peaks) == {"fp32", "bf16"} and min(peaks.values()) > 0
    for row in (row for row in rows if row["kind"] == "peak"):
        assert set(row["by_layout"]) == set(LAYOUTS) and row["gflops_per_s"] == max(row["by_size"].values())
        assert 0 < row["mixed_gflops_per_s"] <= row["gflops_per_s"]
        assert row["native"] is True if row["dtype"] == "fp32" else row["native"] in (True, False, None)
    with torch.device("meta"):
        forward = mae_forward_flops(MAEShape.from_model(mae_vit_tiny_patch7(in_chans=1)))
    for row in (row for row in rows if row["kind"] == "step"):
        assert "error" not in row, row
        assert row["preset"] == "mae_vit_tiny_patch7" and row["batch"] == 4 and row["device"] == "cpu"
        assert row["s_per_step"] > 0 and row["peak_mem_mb"] > 0
        assert row["img_per_s"] == pytest.approx(row["batch"] / row["s_per_step"], rel=1e-9)
        assert row["gflops_per_s"] == pytest.approx(3 * forward * row["batch"] / row["s_per_step"] / 1e9, rel=1e-9)
        assert row["peak_dtype"] == row["dtype"] and row["peak_gflops_per_s"] == peaks[row["dtype"]]
        if row["pct_of_peak"] is None:  # emulated bf16, or a share over 100% under this machine's load
            assert row["dtype"] in row["peak_note"] and "GFLOP/s" in row["peak_note"]
        else:
            assert row["pct_of_peak"] == pytest.approx(100 * row["gflops_per_s"] / peaks[row["dtype"]], rel=1e-9)
            assert row["pct_of_peak"] <= 100 and row["peak_note"] is None
        assert row["s_forward_backward"] + row["s_optimizer"] == pytest.approx(row["s_per_step"], rel=0.5)
    for row in (row for row in rows if row["kind"] == "speedup"):
        assert row["ratio"] == pytest.approx(row["s_all_tokens"] / row["s_mae"], rel=1e-9) and row["ratio"] > 0
    for row in (row for row in rows if row["kind"] == "loader"):
        assert row["img_per_s_per_worker"] > 0
    for row in (row for row in rows if row["kind"] == "fast_path"):
        assert row["step_speedup"] == pytest.approx(row["s_per_step_without"] / row["s_per_step_with"], rel=1e-9)
        assert min(row["peak_mem_mb_without"], row["peak_mem_mb_with"], row["s_optimizer_with"]) > 0
    demo_rows = [row for row in rows if row["kind"] == "demo"]
    assert [(row["preset"], row["img_size"], row["in_chans"]) for row in demo_rows] == [("mae_vit_tiny_patch7", 28, 1)]
    assert 0 < demo_rows[0]["s_per_update"] < 60
    for heading in (
        "Matmul peak",
        "Full pre-training step",
        "Table 2",
        "Data pipeline",
        "Fast paths",
        "Reconstruction demo",
        "Listing a folder",
    ):
        assert heading in markdown


def test_a_merged_run_says_which_rows_it_measured_and_keeps_the_earlier_runs_note(tmp_path):
    benchmark_main(["--quick", "--kinds", "demo", "--out", str(tmp_path)])
    first_note = report.note_of((tmp_path / "results.md").read_text())
    (tmp_path / "results.json").write_text(
        json.dumps(json.loads((tmp_path / "results.json").read_text()) + [report.loader_row("project", 1.0)])
    )
    benchmark_main(["--quick", "--kinds", "demo", "--merge", "--out", str(tmp_path)])
    note = report.note_of((tmp_path / "results.md").read_text())
    assert note.startswith("Rows of kind demo: ") and "mode quick" in note
    assert note.endswith(f"The other rows come from an earlier run (--merge): {first_note}")
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [row["kind"] for row in rows] == ["loader", "demo"]  # the earlier loader row kept, the demo row new


def test_listing_rows_count_every_generated_file_and_leave_no_folder_behind(tmp_path, monkeypatch):
    import tempfile

    from mae.benchmarking.listing import image_name
    from mae.data.file_listing import split_held_out

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the generated folder goes
    rows = benchmark_main(["--quick", "--kinds", "listing", "--listing-files", "2500", "--out", str(tmp_path / "out")])
    assert list(scratch.iterdir()) == []
    assert rows == json.loads((tmp_path / "out" / "results.json").read_text())
    assert [row["kind"] for row in rows] == ["listing", "listing"] and all(report.missing_fields(r) == [] for r in rows)
    listed, split = rows
    assert (listed["operation"], split["operation"]) == ("list_image_files", "split_held_out")
    for row in rows:
        assert row["files"] == 2500 and row["seconds"] > 0 and row["machine"]
        assert row["files_per_s"] == pytest.approx(2500 / row["seconds"], rel=1e-9)
    assert (listed["folders"], listed["files_per_folder"]) == (3, 1000)  # and a notes.txt in each, not listed
    held = split_held_out([image_name(index) for index in range(2500)], 0.05, 0)[1]
    assert (split["held_out"], split["training"]) == (len(held), 2500 - len(held)) and 0 < len(held) < 2500
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| list_image_files | 2,500 |" in markdown and "| split_held_out | 2,500 |" in markdown
