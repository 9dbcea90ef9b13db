"""The reconstruction demo without a browser: what it does to uploads, what one update computes, and what the
command refuses before it serves. The page itself is driven in a real browser in test_demo_browser.py."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_fashion_mnist import make_fashion_mnist

from mae.demo.__main__ import main
from mae.demo.images import ImageInputError, fit_image, read_image, to_display, to_model_input
from mae.demo.reconstruction import demo_views, load_demo_model
from mae.demo.session import EXAMPLE, UPLOAD, DemoLimits, DemoSession, Example, PageError
from mae.model_files.export import save_mae
from mae.models import MaskedAutoencoderViT

TINY = dict(
    img_size=28,
    patch_size=7,
    in_chans=1,
    embed_dim=32,
    depth=2,
    num_heads=2,
    decoder_embed_dim=16,
    decoder_depth=1,
    decoder_num_heads=2,
    norm_pix_loss=True,
)
MEAN, STD = (0.2860,), (0.3530,)
LIMITS = DemoLimits(display_size=56, max_bytes=2**20, max_pixels=10**6)


def tiny_model(seed: int, **changes) -> MaskedAutoencoderViT:
    torch.manual_seed(seed)
    return MaskedAutoencoderViT(**{**TINY, **changes}).eval()


def export(path: Path, seed: int = 0, **changes) -> Path:
    return save_mae(tiny_model(seed, **changes), path)


def photo(path: Path, size=(80, 60), mode="RGB") -> Path:
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(path)
    return path


@pytest.fixture
def session(tmp_path) -> DemoSession:
    primary = load_demo_model(export(tmp_path / "first.safetensors"), MEAN, STD)
    examples = [
        Example(f"example {i}", torch.randn(1, 28, 28, generator=torch.Generator().manual_seed(i))) for i in range(3)
    ]
    return DemoSession(primary, examples, LIMITS)


# -- uploads -----------------------------------------------------------------------------------------------------
def test_an_rgb_photo_becomes_a_centred_grayscale_square_and_says_so():
    image = Image.new("RGB", (80, 60), (0, 0, 0))
    image.paste((255, 0, 0), (30, 20, 50, 40))  # a red square at the centre
    fitted, notes = fit_image(image, 28, 1)
    assert fitted.mode == "L" and fitted.size == (28, 28)
    assert notes == ["converted RGB to grayscale", "resized 80x60 to 37x28", "cropped the centre 28x28"]
    pixels = np.asarray(fitted).astype(int)
    centre, corner = pixels[11:17, 11:17], pixels[:4, :4]
    assert centre.min() > 60 and corner.max() < 5  # red's luma (76) stays in the middle, nothing at the corner


def test_grayscale_goes_to_rgb_as_three_equal_channels_and_a_fitting_image_is_untouched():
    gray = Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28))
    fitted, notes = fit_image(gray, 28, 3)
    assert notes == ["converted grayscale to RGB"]
    array = np.asarray(fitted)
    assert array.shape == (28, 28, 3) and (array == array[..., :1]).all()
    assert np.array_equal(array[..., 0], np.asarray(gray))
    assert fit_image(gray, 28, 1) == (gray, [])


def test_transparent_pixels_are_shown_on_white():
    image = Image.new("RGBA", (28, 28), (0, 0, 0, 0))
    image.putpixel((3, 3), (0, 0, 0, 255))
    fitted, notes = fit_image(image, 28, 1)
    assert notes == ["converted RGB with transparency to grayscale"]
    assert fitted.getpixel((0, 0)) == 255 and fitted.getpixel((3, 3)) == 0


def test_files_that_are_not_images_or_too_large_are_refused_by_name(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ImageInputError, match=r"^notes.txt is not an image this demo can read"):
        read_image(text, 2**20, 10**6)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(photo(tmp_path / "whole.png").read_bytes()[:200])
    with pytest.raises(ImageInputError, match=r"^cut.png is not an image"):
        read_image(truncated, 2**20, 10**6)
    big = photo(tmp_path / "big.png", size=(300, 200))
    with pytest.raises(ImageInputError, match=r"^big.png is 300x200 pixels; images up to 0 megapixels"):
        read_image(big, 2**20, 50_000)
    with pytest.raises(ImageInputError, match=r"^big.png is 0.2 MiB; images up to 0 MiB are accepted"):
        read_image(big, 1000, 10**6)
    assert read_image(big, 2**20, 10**6).size == (300, 200)


def test_an_image_shown_again_has_its_own_pixels(tmp_path):
    """Normalised for the model and de-normalised for the page, an image keeps every pixel (enlarged x2)."""
    gray = Image.fromarray(np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8))
    shown = to_display(to_model_input(gray, MEAN, STD)[0], MEAN, STD, display_size=56)
    assert shown.size == (56, 56) and shown.mode == "RGB"
    assert np.array_equal(np.asarray(shown)[::2, ::2, 0], np.asarray(gray))


# -- one update --------------------------------------------------------------------------------------------------
def test_views_paste_the_original_back_and_report_the_models_loss(session):
    image = session.examples[0].image.unsqueeze(0)
    views = demo_views(session.primary, image, 0.5, seed=3, display_size=28)
    assert (views.num_masked, views.num_patches) == (8, 16)
    noise = torch.rand(1, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = session.primary.model(image, mask_ratio=0.5, noise=noise)
    assert views.loss == pytest.approx(float(expected.loss), rel=1e-6)
    mask = expected.mask[0].reshape(4, 4).repeat_interleave(7, 0).repeat_interleave(7, 1).bool().numpy()
    original, masked, pasted = (np.asarray(picture)[..., 0] for picture in (views.original, views.masked, views.pasted))
    # Visible patches: the original's pixels in the masked input and in the pasted view (in pixel space, so the
    # norm_pix_loss prediction was put back into pixels around them); removed ones: the mean grey in the input.
    assert np.array_equal(masked[~mask], original[~mask]) and np.array_equal(pasted[~mask], original[~mask])
    assert np.all(masked[mask] == round(255 * MEAN[0]))
    assert not np.array_equal(pasted[mask], original[mask])


def test_the_same_seed_hides_the_same_patches_in_every_checkpoint_and_another_seed_others(session, tmp_path):
    image = session.examples[1].image.unsqueeze(0)
    other = load_demo_model(export(tmp_path / "other.safetensors", seed=1), MEAN, STD)
    first, second = (demo_views(model, image, 0.75, seed=5, display_size=28) for model in (session.primary, other))
    assert first.masked == second.masked and first.reconstruction != second.reconstruction
    assert demo_views(session.primary, image, 0.75, seed=6, display_size=28).masked != first.masked
    assert demo_views(session.primary, image, 0.5, seed=5, display_size=28).masked != first.masked


def test_uploads_go_through_the_models_size_and_channels(session, tmp_path):
    update = session.update((UPLOAD, str(photo(tmp_path / "photo.png"))), 0.75, 0)
    assert update.description == (
        "uploaded photo.png: converted RGB to grayscale; resized 80x60 to 37x28; cropped the centre 28x28"
    )
    assert update.views.original.size == (56, 56) and update.compared is None
    assert session.update((EXAMPLE, 2), 0.75, 0).description == "example 2, as the data group serves it"
    with pytest.raises(PageError, match="notes.txt is not an image"):
        (tmp_path / "notes.txt").write_text("x")
        session.update((UPLOAD, str(tmp_path / "notes.txt")), 0.75, 0)
    with pytest.raises(PageError, match=r"mask_ratio=0.95 keeps 0 of the 16 patches visible"):
        session.update((EXAMPLE, 0), 0.95, 0)


def test_a_second_checkpoint_is_compared_on_the_same_image_and_mask(session, tmp_path):
    second = export(tmp_path / "second.safetensors", seed=1)
    update = session.update((EXAMPLE, 0), 0.75, 4, str(second))
    alone = demo_views(
        load_demo_model(second, MEAN, STD), session.examples[0].image.unsqueeze(0), 0.75, 4, LIMITS.display_size
    )
    assert update.compared.masked == update.views.masked and update.compared.pasted == alone.pasted
    assert f"second: loss {alone.loss:.4f}" in update.comparison
    assert f"first: loss {update.views.loss:.4f}" in update.comparison


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: tmp / "missing.safetensors", "does not exist"),
        (
            lambda tmp: export(tmp / "patch4.safetensors", patch_size=4),
            "takes 28 px images with 1 channel(s) in 4 px "
            "patches, the first checkpoint 28 px images with 1 "
            "channel(s) in 7 px patches",
        ),
        (
            lambda tmp: torch.save({"model": tiny_model(0).encoder_state_dict()}, tmp / "enc.pth") or tmp / "enc.pth",
            "has no decoder weights",
        ),
    ],
)
def test_a_second_checkpoint_that_cannot_be_compared_is_said_and_the_first_still_shows(
    session, tmp_path, make, message
):
    update = session.update((EXAMPLE, 0), 0.75, 0, str(make(tmp_path)))
    assert update.compared is None and update.comparison.startswith("Cannot compare: ")
    assert message in update.comparison and "\n" not in update.comparison
    assert update.views.loss > 0


# -- the command refuses before it serves --------------------------------------------------------------------
@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmnist")
    make_fashion_mnist(root)
    return root


def refused(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_a_checkpoint_without_decoder_is_refused_at_start(tmp_path, fmnist, capsys):
    encoder = tmp_path / "encoder.pth"
    torch.save({"model": tiny_model(0).encoder_state_dict()}, encoder)
    assert refused(capsys, str(encoder), f"data.root={fmnist}", "data.val_size=0") == (
        f"error: checkpoint {encoder} has no decoder weights (an encoder-only or fine-tuned file): reconstructions "
        "need a pre-training checkpoint or a full MAE export"
    )


def test_a_missing_default_checkpoint_says_to_pretrain_first(tmp_path, fmnist, capsys):
    line = refused(capsys, f"paths.log_dir={tmp_path}", f"data.root={fmnist}", "data.val_size=0")
    assert line == (
        f"error: checkpoint {tmp_path}/pretrain/latest/checkpoints/last.ckpt does not exist (the default "
        "is the newest `make pretrain` run's; run it first or name a checkpoint)"
    )


def test_bad_settings_and_a_busy_port_are_one_line(tmp_path, fmnist, capsys):
    ckpt = str(export(tmp_path / "tiny.safetensors"))
    assert refused(capsys, ckpt, f"data.root={fmnist}", "data.val_size=0", "mask_ratio=0.99") == (
        "error: mask_ratio=0.99 keeps 0 of the 16 patches visible; training needs at least one masked and one "
        "visible patch: 0 < mask_ratio <= 0.9375"
    )
    assert (
        refused(capsys, ckpt, f"data.root={fmnist}", "data.val_size=0", "port=70000")
        == "error: port=70000 must be at most 65535"
    )
    assert "data serves 32 px" in refused(capsys, ckpt, f"data.root={fmnist}", "data.val_size=0", "data.img_size=32")
    assert "in 4 px patches" in refused(
        capsys,
        ckpt,
        f"data.root={fmnist}",
        "data.val_size=0",
        f"compare_ckpt_path={export(tmp_path / 'p4.safetensors', patch_size=4)}",
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert refused(capsys, ckpt, f"data.root={fmnist}", "data.val_size=0", f"port={port}").startswith(
            f"error: cannot serve on 127.0.0.1:{port} (Address already in use); choose another port=<n>"
        )


@pytest.mark.parametrize("num_patches, highest", [(4, 0.75), (16, 0.9), (49, 0.95), (196, 0.95)])
def test_the_slider_ends_at_the_last_ratio_that_leaves_a_patch_visible(num_patches, highest):
    from mae.demo.app import RATIO_STEP, highest_ratio
    from mae.models.masking import check_trainable_mask_ratio

    assert highest_ratio(num_patches) == highest
    check_trainable_mask_ratio(highest, num_patches)
    check_trainable_mask_ratio(RATIO_STEP, num_patches)
    if highest + RATIO_STEP < 1:
        with pytest.raises(ValueError, match="keeps 0 of"):
            check_trainable_mask_ratio(highest + RATIO_STEP, num_patches)
