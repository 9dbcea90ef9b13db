"""The benchmark harness (issue 5): analytic FLOP counts, the all-tokens comparison model, and the rows that
``benchmarks/run.py --quick`` writes. Nothing here asserts a speed: the timings only have to be consistent."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mae.benchmarking import report
from mae.benchmarking.flops import MAEShape, all_tokens_forward_flops, block_flops, mae_forward_flops, train_flops
from mae.benchmarking.simmim import AllTokensMAE
from mae.benchmarking.step import build_model, forward_flops_of
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
        196, 768, 12, 512, 8)
    assert mae_forward_flops(shape) / 1e9 == pytest.approx(19.56, abs=0.01)
    assert train_flops(mae_forward_flops(shape)) / 1e9 == pytest.approx(58.7, abs=0.05)


@pytest.mark.parametrize("factory, per_trained_image", [(mae_vit_large_patch16, 124.5), (mae_vit_huge_patch14, 291.4)])
def test_large_and_huge_train_flops_match_reference(factory, per_trained_image):
    assert train_flops(mae_forward_flops(meta_shape(factory))) / 1e9 == pytest.approx(per_trained_image, abs=0.1)


def test_count_is_the_sum_of_its_parts():
    shape = meta_shape(mae_vit_base_patch16)
    kept, length, d, e, pd = 49 + 1, 196 + 1, 768, 512, 16 * 16 * 3
    expected = (2 * 196 * pd * d + 12 * block_flops(kept, d) + 2 * kept * d * e + 8 * block_flops(length, e)
                + 2 * length * e * pd)
    assert mae_forward_flops(shape) == expected


@pytest.mark.parametrize("factory, ratio", [(mae_vit_base_patch16, 2.351), (mae_vit_large_patch16, 3.228),
                                            (mae_vit_huge_patch14, 3.594)])
def test_all_tokens_encoder_costs_the_expected_multiple(factory, ratio):
    shape = meta_shape(factory)
    mae, all_tokens = mae_forward_flops(shape), all_tokens_forward_flops(shape)
    # Only the encoder blocks and decoder_embed see more tokens: 197 (or 257) instead of kept + 1.
    length, kept = shape.num_patches + 1, int(shape.num_patches * 0.25) + 1
    extra = shape.depth * (block_flops(length, shape.embed_dim) - block_flops(kept, shape.embed_dim)) + 2 * (
        length - kept) * shape.embed_dim * shape.decoder_embed_dim
    assert all_tokens - mae == extra
    assert all_tokens / mae == pytest.approx(ratio, abs=1e-3)


def test_all_tokens_gap_shrinks_with_the_decoder_only_through_the_denominator():
    deep, shallow = meta_shape(mae_vit_large_patch16), meta_shape(mae_vit_large_patch16, decoder_depth=1)
    assert all_tokens_forward_flops(deep) - mae_forward_flops(deep) == (
        all_tokens_forward_flops(shallow) - mae_forward_flops(shallow))
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


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("bench")
    module.main(["--quick", "--out", str(out)])
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_quick_run_rows_match_the_schema(quick_results):
    rows, _ = quick_results
    for row in rows:
        assert report.missing_fields(row) == [], row
    kinds = [row["kind"] for row in rows]
    assert kinds.count("peak") == 2 and kinds.count("step") == 2 and kinds.count("speedup") == 2
    assert {row["name"] for row in rows if row["kind"] == "fast_path"} == {"fused_adamw", "grad_checkpointing"}
    assert {row["pipeline"] for row in rows if row["kind"] == "loader"} >= {"project", "pil_torchvision"}
    assert {row["decoder_depth"] for row in rows if row["kind"] == "speedup"} == {8, 1}
    assert {(row["dtype"], row["compiled"]) for row in rows if row["kind"] == "step"} == {("fp32", False),
                                                                                         ("bf16", False)}


def test_quick_run_rows_are_internally_consistent(quick_results):
    rows, markdown = quick_results
    peaks = {row["dtype"]: row["gflops_per_s"] for row in rows if row["kind"] == "peak"}
    assert set(peaks) == {"fp32", "bf16"} and min(peaks.values()) > 0
    with torch.device("meta"):
        forward = mae_forward_flops(MAEShape.from_model(mae_vit_tiny_patch7(in_chans=1)))
    for row in (row for row in rows if row["kind"] == "step"):
        assert "error" not in row, row
        assert row["preset"] == "mae_vit_tiny_patch7" and row["batch"] == 4 and row["device"] == "cpu"
        assert row["s_per_step"] > 0 and row["peak_mem_mb"] > 0
        assert row["img_per_s"] == pytest.approx(row["batch"] / row["s_per_step"], rel=1e-9)
        assert row["gflops_per_s"] == pytest.approx(3 * forward * row["batch"] / row["s_per_step"] / 1e9, rel=1e-9)
        assert row["pct_of_peak"] == pytest.approx(100 * row["gflops_per_s"] / peaks[row["dtype"]], rel=1e-9)
        assert row["s_forward_backward"] + row["s_optimizer"] == pytest.approx(row["s_per_step"], rel=0.5)
    for row in (row for row in rows if row["kind"] == "speedup"):
        assert row["ratio"] == pytest.approx(row["s_all_tokens"] / row["s_mae"], rel=1e-9) and row["ratio"] > 0
    for row in (row for row in rows if row["kind"] == "loader"):
        assert row["img_per_s_per_worker"] > 0
    for row in (row for row in rows if row["kind"] == "fast_path"):
        assert row["step_speedup"] == pytest.approx(row["s_per_step_without"] / row["s_per_step_with"], rel=1e-9)
        assert min(row["peak_mem_mb_without"], row["peak_mem_mb_with"], row["s_optimizer_with"]) > 0
    for heading in ("Matmul peak", "Full pre-training step", "Table 2", "Data pipeline", "Fast paths"):
        assert heading in markdown
