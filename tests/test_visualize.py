"""Reconstruction inspection: `python -m mae.jobs.visualize` and notebooks/reconstruction.ipynb on checkpoints made here.

Tiny MAEs for 28 px Fashion-MNIST (the default data, read offline) are saved as this project's Lightning checkpoint
(next to a run's config_resolved.yaml) and as reference-style files, with and without decoder.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import yaml
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from mae.evaluation.reconstruction_grid import COLUMN_LABELS, COLUMNS, header_row
from mae.jobs.harness import SetupError
from mae.jobs.visualize import compose_config, prepare, visualize
from mae.model_files.export import save_mae
from mae.model_files.loading import has_decoder
from mae.models import MaskedAutoencoderViT

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "reconstruction.ipynb"
NO_DECODER = (
    "has no decoder weights (an encoder-only or fine-tuned file): reconstructions need a pre-training "
    "checkpoint or a full MAE export"
)

TINY = {
    "img_size": 28,
    "patch_size": 7,
    "in_chans": 1,
    "embed_dim": 16,
    "depth": 1,
    "num_heads": 2,
    "decoder_embed_dim": 8,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
    "norm_pix_loss": True,
}
# The same architecture from the default model group (mae_vit_tiny_patch7: 28 px, 7x7 patches, norm_pix_loss).
TINY_OVERRIDES = [
    "model.embed_dim=16",
    "model.depth=1",
    "model.num_heads=2",
    "model.decoder_embed_dim=8",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
]
NUM_IMAGES, TILE, PAD, SCALE = 3, 28, 2, 4


def tiny_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return MaskedAutoencoderViT(**TINY).state_dict()


def lightning_checkpoint(run_dir: Path, state: dict[str, torch.Tensor]) -> Path:
    """A pre-training run's layout: <run dir>/config_resolved.yaml and <run dir>/checkpoints/last.ckpt."""
    (run_dir / "checkpoints").mkdir(parents=True)
    config = {"task_name": "pretrain", "model": {"_target_": "mae.models.MaskedAutoencoderViT", **TINY}}
    (run_dir / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    path = run_dir / "checkpoints" / "last.ckpt"
    torch.save({"epoch": 0, "state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    return path


def reference_checkpoint(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"model": state}, path)
    return path


def mae_export(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """``python -m mae.model_files.export mae``'s file: safetensors with the architecture in a .json beside it."""
    model = MaskedAutoencoderViT(**TINY)
    model.load_state_dict(state)
    return save_mae(model, path)


def encoder_only(path: Path, state: dict[str, torch.Tensor]) -> Path:
    return reference_checkpoint(path, {k: v for k, v in state.items() if not k.startswith(("decoder_", "mask_token"))})


def commands(runs: dict[str, list[str]], cwd: Path) -> dict[str, subprocess.CompletedProcess]:
    """``python -m mae.jobs.visualize <args>`` for each entry, all started at once (each mostly imports torch/Lightning)."""
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "mae.jobs.visualize", *args],
            cwd=cwd,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, args in runs.items()
    }
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return results


def grid_tiles(path: Path) -> np.ndarray:
    """``(rows, 4, 28, 28)`` gray tiles of a PNG grid, after checking its pixel size: 28-pixel images enlarged 4x
    (conf/visualize.yaml's min_cell_size, 112) under a header row naming the columns (labels=true)."""
    cell = TILE * SCALE
    width = 4 * (cell + PAD) + PAD
    header = header_row([COLUMN_LABELS[name] for name in COLUMNS], cell, PAD, width).shape[1]
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size == (width, header + NUM_IMAGES * (cell + PAD) + PAD)  # (width, height)
        pixels = np.asarray(png.convert("L"))
    assert (pixels[:header] < 128).any()  # dark text on the white strip
    pixels = pixels[header:]
    cells = np.stack(
        [
            np.stack([pixels[PAD + r * (cell + PAD) :][:cell, PAD + c * (cell + PAD) :][:, :cell] for c in range(4)])
            for r in range(NUM_IMAGES)
        ]
    )
    tiles = cells[..., ::SCALE, ::SCALE]
    assert np.array_equal(cells, tiles.repeat(SCALE, axis=-2).repeat(SCALE, axis=-1))  # nearest-neighbour blocks
    return tiles


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("checkpoints")
    first, second = tiny_state(0), tiny_state(1)
    return {
        "lightning": lightning_checkpoint(tmp / "run", first),
        "same_as_reference": reference_checkpoint(tmp / "same.pth", first),
        "other_as_reference": reference_checkpoint(tmp / "other.pth", second),
        "encoder_only": encoder_only(tmp / "encoder.pth", first),
        "export": mae_export(tmp / "export.safetensors", first),
    }


@pytest.fixture(scope="module")
def command_runs(checkpoints, tmp_path_factory) -> tuple[dict[str, subprocess.CompletedProcess], Path]:
    """The command on the Lightning checkpoint (no model overrides: the default model group, 192 wide, would not
    fit, so the run's config_resolved.yaml must give the architecture) and on the encoder-only file."""
    cwd = tmp_path_factory.mktemp("command")
    runs = {
        "lightning": [f"ckpt_path={checkpoints['lightning']}", "out=grid.png", f"num_images={NUM_IMAGES}"],
        "encoder_only": [f"ckpt_path={checkpoints['encoder_only']}", "out=encoder.png", *TINY_OVERRIDES],
    }
    return commands(runs, cwd), cwd


@pytest.fixture
def visualize_config():
    def make(ckpt_path: Path, overrides: list[str] = ()):
        return compose_config(ckpt_path, [f"num_images={NUM_IMAGES}", *overrides])

    yield make
    GlobalHydra.instance().clear()


def test_command_writes_a_grid_that_depends_on_the_checkpoint(tmp_path, checkpoints, command_runs, visualize_config):
    results, cwd = command_runs
    result = results["lightning"]
    assert result.returncode == 0, result.stderr
    assert f"architecture from {checkpoints['lightning'].parents[1] / 'config_resolved.yaml'}" in result.stdout
    from_lightning = grid_tiles(cwd / "grid.png")  # `out` is relative to the working directory

    # The same weights as a reference-style file, architecture from model overrides: the same grid.
    visualize(visualize_config(checkpoints["same_as_reference"], [*TINY_OVERRIDES, f"out={tmp_path / 'same.png'}"]))
    assert np.array_equal(grid_tiles(tmp_path / "same.png"), from_lightning)
    # ... and as a safetensors export, architecture from its .json (the default model group would not fit).
    visualize(visualize_config(checkpoints["export"], [f"out={tmp_path / 'export.png'}"]))
    assert np.array_equal(grid_tiles(tmp_path / "export.png"), from_lightning)

    # Other weights, same images and mask: original and masked columns agree, reconstructions do not.
    other = checkpoints["other_as_reference"]
    visualize(visualize_config(other, [*TINY_OVERRIDES, f"out={tmp_path / 'other.png'}"]))
    from_other = grid_tiles(tmp_path / "other.png")
    assert np.array_equal(from_other[:, :2], from_lightning[:, :2])
    assert from_lightning[:, 0].std() > 10  # real images, not blank tiles
    for column in (2, 3):
        assert np.abs(from_other[:, column].astype(int) - from_lightning[:, column]).mean() > 1

    # Another seed hides other patches of the same images.
    visualize(visualize_config(other, [*TINY_OVERRIDES, "seed=1", f"out={tmp_path / 'seed1.png'}"]))
    from_seed1 = grid_tiles(tmp_path / "seed1.png")
    assert np.array_equal(from_seed1[:, 0], from_other[:, 0]) and not np.array_equal(from_seed1[:, 1], from_other[:, 1])


def test_encoder_only_checkpoint_is_a_one_line_error_with_exit_code_2(checkpoints, command_runs):
    results, cwd = command_runs
    result, ckpt = results["encoder_only"], checkpoints["encoder_only"]
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: checkpoint {ckpt} {NO_DECODER}"
    assert not (cwd / "encoder.png").exists()
    assert not has_decoder(torch.load(ckpt)["model"]) and has_decoder(tiny_state(0))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.embed_dim=32"], "cls_token has shape (1, 1, 16), this model expects (1, 1, 32)"),
        (["model.decoder_depth=2"], "lacks decoder weights ['decoder_blocks.1."),
        (
            ["data.img_size=32", "model.img_size=28"],
            "takes 28 px images with 1 channels, but the data serves 32 px with 1",
        ),
        (["mask_ratio=1.0"], "mask_ratio=1.0 is outside [0, 1)"),
        (["min_cell_size=-1"], "min_cell_size=-1 must be non-negative"),
    ],
)
def test_bad_input_is_one_line(checkpoints, visualize_config, overrides, message):
    with pytest.raises(SetupError) as error:
        prepare(visualize_config(checkpoints["same_as_reference"], [*TINY_OVERRIDES, *overrides]))
    assert message in str(error.value) and "\n" not in str(error.value)


# -- the notebook ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kernel_name() -> str:
    """``python3``, installed into this environment (``--sys-prefix``) when no such kernel is registered."""
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix"], check=True, capture_output=True)
    return "python3"


def notebook_client(ckpt: Path, kernel_name: str):
    """A client for the notebook with ``CKPT_PATH`` injected in a cell after its parameter cell."""
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    injected = f"CKPT_PATH = {str(ckpt)!r}\nNUM_IMAGES = {NUM_IMAGES}"
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]}))
    return NotebookClient(
        nb, timeout=180, kernel_name=kernel_name, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )


@pytest.fixture(scope="module")
def notebook_runs(checkpoints, kernel_name) -> dict[str, list]:
    """Every output of the notebook run top to bottom on the Lightning checkpoint and on the encoder-only file
    (two kernels at once: each mostly imports torch/Lightning)."""
    clients = {name: notebook_client(checkpoints[name], kernel_name) for name in ("lightning", "encoder_only")}

    async def execute_all() -> None:
        await asyncio.gather(*(client.async_execute() for client in clients.values()))

    asyncio.run(execute_all())
    return {
        name: [output for cell in client.nb.cells if cell.cell_type == "code" for output in cell.outputs]
        for name, client in clients.items()
    }


def printed(outputs: list) -> str:
    return "".join(output.get("text", "") for output in outputs if output.output_type == "stream")


def errors(outputs: list) -> list:
    return [f"{output.ename}: {output.evalue}" for output in outputs if output.output_type == "error"]


def test_notebook_is_committed_without_outputs_and_defaults_to_the_latest_run():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    parameters = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1
    assert 'CKPT_PATH = "../outputs/pretrain/latest/checkpoints/last.ckpt"' in parameters[0].source


def test_notebook_shows_the_reconstructions_of_a_checkpoint(notebook_runs, checkpoints):
    outputs = notebook_runs["lightning"]
    assert errors(outputs) == []
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 1
    assert f"architecture from {checkpoints['lightning'].parents[1] / 'config_resolved.yaml'}" in printed(outputs)


def test_notebook_says_when_the_checkpoint_has_no_decoder(notebook_runs, checkpoints):
    outputs = notebook_runs["encoder_only"]
    assert errors(outputs) == []
    assert not any("image/png" in output.get("data", {}) for output in outputs)
    assert f"{checkpoints['encoder_only']} {NO_DECODER}" in printed(outputs)
