"""The demo's two doors to the server's files: an upload over Pillow's own pixel limit (a decompression bomb) gets
the same size message as any image over the demo's limit, and the compare tab's path box reads only under
``compare_root``, answering every other path, existing or not, with the same words."""

from __future__ import annotations

import io
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_demo import LIMITS, MEAN, STD, export

from mae.demo.images import ImageInputError, read_image
from mae.demo.reconstruction import load_demo_model
from mae.demo.session import EXAMPLE, UPLOAD, DemoSession, Example, PageError


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG of a few bytes whose header claims ``width`` x ``height`` pixels (what a bomb's header says)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # IHDR's first fields
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("width, height", [(20000, 20000), (2000, 1000)])  # over Pillow's limit; over the demo's
def test_an_image_over_any_pixel_limit_gets_the_size_message(tmp_path, width, height):
    path = png_claiming(tmp_path / "big.png", width, height)
    with pytest.raises(ImageInputError) as error:
        read_image(path, LIMITS.max_bytes, LIMITS.max_pixels)
    assert str(error.value) == f"big.png is {width}x{height} pixels; images up to 1 megapixels are accepted"


def test_pillows_bomb_warning_as_an_error_gets_the_size_message(tmp_path):
    path = png_claiming(tmp_path / "big.png", 10000, 10000)  # between Pillow's warning and error limits
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageInputError, match=r"^big.png is 10000x10000 pixels; images up to 1 megapixels"):
            read_image(path, LIMITS.max_bytes, LIMITS.max_pixels)


@pytest.fixture
def served(tmp_path) -> tuple[DemoSession, Path]:
    root = tmp_path / "outputs"
    (root / "pretrain" / "runs" / "a" / "checkpoints").mkdir(parents=True)
    primary = load_demo_model(export(tmp_path / "first.safetensors"), MEAN, STD)
    examples = [Example("example 0", torch.randn(1, 28, 28, generator=torch.Generator().manual_seed(0)))]
    return DemoSession(primary, examples, LIMITS, compare_root=root), root


def test_the_compare_box_reads_under_its_folder(served):
    session, root = served
    second = export(root / "pretrain" / "runs" / "a" / "second.safetensors", seed=1)
    for text in (str(second), "pretrain/runs/a/second.safetensors"):
        update = session.update((EXAMPLE, 0), 0.75, 0, text)
        assert update.compared is not None, update.comparison


def test_the_compare_box_says_the_same_about_every_path_outside_or_missing(served, tmp_path):
    session, root = served
    outside = export(tmp_path / "elsewhere.safetensors", seed=1)  # a real checkpoint, outside the folder
    link = root / "pretrain" / "escape.safetensors"
    link.symlink_to(outside)
    answers = {
        session.update((EXAMPLE, 0), 0.75, 0, text).comparison
        for text in (
            str(outside),
            str(tmp_path / "absent.safetensors"),
            "/etc/passwd",
            "/etc",
            "/no/such/file",
            "../elsewhere.safetensors",
            str(link),
            "pretrain/missing.ckpt",
            "bad\0path",
        )
    }
    assert answers == {
        f"Cannot compare: the second checkpoint must be a file or model directory under {root} "
        "(the demo's compare_root)"
    }


def test_the_operators_own_compare_checkpoint_may_be_anywhere(served, tmp_path):
    session, _ = served
    outside = str(export(tmp_path / "named.safetensors", seed=1))
    session.compared_model(outside, checked=True)  # as `python -m mae.demo compare_ckpt_path=...` does
    assert session.update((EXAMPLE, 0), 0.75, 0, outside).compared is not None
    with pytest.raises(PageError, match="must be a file or model directory under"):
        session.compared_model(str(tmp_path / "first.safetensors"))


def test_an_upload_is_not_limited_by_the_compare_folder(served, tmp_path):
    session, _ = served
    picture = tmp_path / "photo.png"
    Image.new("L", (28, 28), 128).save(picture)
    assert session.update((UPLOAD, str(picture)), 0.75, 0).description.startswith("uploaded photo.png")
