"""Loading never executes code: a pickled payload and a stored-config target, fed to every entry point and public
loading function, are refused with one line, and the marker file they would write never appears."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mae.model_files.checkpoint import CheckpointError, UnsafeCheckpointError, load_checkpoint_file
from mae.model_files.loading import load_pretrained
from mae.model_files.stored_config import MODEL_TARGETS, MODULE_TARGETS, trusted_node
from mae.models import MaskedAutoencoderViT

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(
    img_size=28,
    patch_size=7,
    in_chans=1,
    embed_dim=32,
    depth=1,
    num_heads=2,
    decoder_embed_dim=16,
    decoder_depth=1,
    decoder_num_heads=2,
)


class WritesMarker:
    """Unpickling this object would call ``exec`` and create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def pickled_payload(path: Path, marker: Path, **entries) -> Path:
    torch.save({"state_dict": {}, "model": {}, "payload": WritesMarker(marker), **entries}, path)
    return path


def run_entry_point(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


ENTRY_POINTS = {
    "resume": lambda ckpt, tmp: [str(ROOT / "train.py"), f"ckpt_path={ckpt}"],
    "finetune": lambda ckpt, tmp: [str(ROOT / "train.py"), "task=finetune", f"pretrained={ckpt}"],
    "linprobe": lambda ckpt, tmp: [str(ROOT / "train.py"), "task=linprobe", f"pretrained={ckpt}"],
    "eval": lambda ckpt, tmp: [str(ROOT / "eval.py"), f"ckpt_path={ckpt}"],
    "visualize": lambda ckpt, tmp: ["-m", "mae.jobs.visualize", f"ckpt_path={ckpt}", f"out={tmp / 'grid.png'}"],
}


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_pickled_payload_is_refused_by_every_entry_point(tmp_path, entry_point):
    marker = tmp_path / "marker"
    ckpt = pickled_payload(tmp_path / "evil.ckpt", marker)
    args = ENTRY_POINTS[entry_point](ckpt, tmp_path)
    result = run_entry_point(
        [*args, f"hydra.run.dir={tmp_path / 'run'}", f"paths.log_dir={tmp_path / 'outputs'}"], tmp_path
    )
    line = one_error_line(result)
    assert "asks for the global exec" in line and str(ckpt) in line, line
    assert not marker.exists()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_loading_functions_refuse_the_payload(tmp_path):
    marker = tmp_path / "marker"
    ckpt = pickled_payload(tmp_path / "evil.pth", marker)
    for load in (load_checkpoint_file, lambda path: load_pretrained(MaskedAutoencoderViT(**TINY), path)):
        with pytest.raises(UnsafeCheckpointError, match="asks for the global exec") as error:
            load(ckpt)
        assert "\n" not in str(error.value)
    assert not marker.exists()


def test_reference_checkpoint_with_its_namespace_loads_and_nothing_broader(tmp_path):
    """The reference's .pth files store their arguments as argparse.Namespace: exactly that class is allowed."""
    state = MaskedAutoencoderViT(**TINY).state_dict()
    reference = tmp_path / "checkpoint-799.pth"
    torch.save(
        {
            "model": state,
            "optimizer": {"state": {}, "param_groups": []},
            "epoch": 799,
            "args": argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75, norm_pix_loss=True),
        },
        reference,
    )
    loaded = load_checkpoint_file(reference)
    assert loaded["args"].mask_ratio == 0.75
    model = MaskedAutoencoderViT(**TINY)
    load_pretrained(model, reference)
    assert torch.equal(model.pos_embed, state["pos_embed"]) and torch.equal(
        model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"]
    )
    other = tmp_path / "other.pth"
    torch.save({"model": state, "args": argparse.FileType("r")}, other)
    with pytest.raises(UnsafeCheckpointError, match="argparse.FileType"):
        load_checkpoint_file(other)


def test_truncated_file_is_one_line_without_advice_to_unpickle(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": MaskedAutoencoderViT(**TINY).state_dict()}, good)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError) as error:
        load_checkpoint_file(bad)
    assert "\n" not in str(error.value) and "weights_only=False" not in str(error.value)


def stored_config_checkpoint(path: Path, marker: Path, model_node: dict) -> Path:
    """Loads under weights_only=True; its stored config would make a directory named after the marker."""
    module = {"_target_": "mae.training.LinearProbeModule"}
    torch.save(
        {"state_dict": {}, "mae_run_config": {"task_name": "linprobe", "model": model_node, "module": module}}, path
    )
    return path


@pytest.mark.parametrize("nested", [False, True])
def test_stored_config_target_is_refused_by_eval(tmp_path, nested):
    marker = tmp_path / "marker"
    payload = {"_target_": "os.mkdir", "_args_": [str(marker)]}
    node = {"_target_": "mae.models.MaskedAutoencoderViT", "norm_layer": payload, **TINY} if nested else payload
    ckpt = stored_config_checkpoint(tmp_path / "evil.ckpt", marker, node)
    result = run_entry_point(
        [str(ROOT / "eval.py"), f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path
    )
    line = one_error_line(result)
    assert "asks to build 'os.mkdir'" in line and str(ckpt) in line, line
    assert not marker.exists()


def test_config_beside_a_checkpoint_is_refused_by_visualize(tmp_path):
    marker = tmp_path / "marker"
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    state = MaskedAutoencoderViT(**TINY).state_dict()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    torch.save({"epoch": 0, "state_dict": {f"model.{k}": v for k, v in state.items()}}, ckpt)
    (run_dir / "config_resolved.yaml").write_text(
        yaml.safe_dump({"model": {"_target_": "os.mkdir", "_args_": [str(marker)]}})
    )
    result = run_entry_point(
        ["-m", "mae.jobs.visualize", f"ckpt_path={ckpt}", f"out={tmp_path / 'grid.png'}"], tmp_path
    )
    line = one_error_line(result)
    assert "asks to build 'os.mkdir'" in line and "config_resolved.yaml" in line, line
    assert not marker.exists() and not (tmp_path / "grid.png").exists()


def test_allow_lists_hold_every_model_and_module_the_configs_build():
    """The configs and the allow-lists name the same targets: a new preset or module cannot be forgotten."""
    models = {yaml.safe_load(path.read_text())["_target_"] for path in (ROOT / "conf" / "model").glob("*.yaml")}
    assert models <= MODEL_TARGETS
    modules = {
        yaml.safe_load(path.read_text()).get("module", {}).get("_target_")
        for path in (ROOT / "conf" / "task").glob("*.yaml")
    } - {None}
    assert modules == MODULE_TARGETS
    for target in MODEL_TARGETS | MODULE_TARGETS:
        trusted_node({"_target_": target}, MODEL_TARGETS | MODULE_TARGETS, "test")
