"""The reconstruction demo in a real browser: ``python -m mae.demo`` started on a free loopback port and driven
with Playwright in headless Chromium (Debian's ``chromium``, which ``make setup`` installs; Playwright's own
browser download is not used). Pictures the page shows are fetched and compared with what the demo's functions
compute for the same image and mask."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from extras import needs_extra
from PIL import Image
from test_data_fashion_mnist import make_fashion_mnist
from test_demo import MEAN, STD, export, photo

from mae.demo.images import fit_image, to_model_input
from mae.demo.reconstruction import demo_views, load_demo_model

playwright_api = needs_extra("playwright.sync_api", "demo")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TIMEOUT_MS = 30_000
DISPLAY = 224  # conf/demo.yaml's display_size


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("demo_checkpoints")
    return {"first": export(tmp / "first.safetensors", seed=0), "second": export(tmp / "second.safetensors", seed=1)}


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("demo_fmnist")
    return root, make_fashion_mnist(root)


@pytest.fixture(scope="module")
def server(checkpoints, fmnist, tmp_path_factory) -> str:
    """The demo's URL; the server runs for the module's tests and is stopped after them."""
    root = fmnist[0]
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mae.demo",
            str(checkpoints["first"]),
            f"port={port}",
            f"data.root={root}",
            "data.val_size=0",
            f"compare_root={checkpoints['second'].parent}",
        ],  # the folder the compare tab may read
        cwd=tmp_path_factory.mktemp("demo_cwd"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    try:
        while not answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the demo did not start:\n{process.stdout.read()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's chromium package (make setup does)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server)
    page.wait_for_selector("#masked img")
    yield page
    page.close()


def expect(locator):
    return playwright_api.expect(locator)


def shown(page, elem_id: str) -> np.ndarray:
    """The pixels of the picture the page shows in ``elem_id``, fetched as the browser fetched them."""
    source = page.locator(f"#{elem_id} img").get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(source).body())).convert("RGB"))


def computed(checkpoint: Path, image_path: Path, mask_ratio: float, seed: int):
    """The views the demo's functions give for an uploaded file."""
    demo = load_demo_model(checkpoint, MEAN, STD)
    fitted, _ = fit_image(Image.open(image_path), 28, 1)
    return demo_views(demo, to_model_input(fitted, MEAN, STD), mask_ratio, seed, DISPLAY)


def upload(page, path: Path) -> None:
    page.locator("#upload input[type=file]").set_input_files(str(path))


def test_the_page_opens_on_the_first_test_image(page):
    expect(page.locator("#info")).to_contain_text("Image: test image 0")
    expect(page.locator("#info")).to_contain_text("12 removed patches of 16")
    for name in ("original", "masked", "reconstruction", "pasted"):
        assert shown(page, name).shape == (DISPLAY, DISPLAY, 3)


def test_an_uploaded_png_gives_the_four_views_and_the_slider_changes_the_mask(page, checkpoints, tmp_path):
    picture = photo(tmp_path / "photo.png", size=(80, 60))
    upload(page, picture)
    expect(page.locator("#info")).to_contain_text(
        "uploaded photo.png: converted RGB to grayscale; resized 80x60 to 37x28; cropped the centre 28x28"
    )
    expected = computed(checkpoints["first"], picture, 0.75, 0)
    for name, view in zip(("original", "masked", "reconstruction", "pasted"), expected.pictures()):
        assert np.array_equal(shown(page, name), np.asarray(view)), name
    expect(page.locator("#info")).to_contain_text(f"Loss {expected.loss:.4f}")

    page.locator("#mask-ratio input[type=range]").fill("0.5")
    expect(page.locator("#info")).to_contain_text("8 removed patches of 16")
    half = computed(checkpoints["first"], picture, 0.5, 0)
    assert np.array_equal(shown(page, "masked"), np.asarray(half.masked))
    assert not np.array_equal(np.asarray(half.masked), np.asarray(expected.masked))


def test_a_file_that_is_not_an_image_gets_a_message_and_the_server_keeps_serving(page, server, tmp_path):
    before = shown(page, "original")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    upload(page, notes)
    expect(page.locator("#message")).to_contain_text(
        "Cannot use this file: notes.txt is not an image this demo can read"
    )
    assert np.array_equal(shown(page, "original"), before)  # the page still shows what it showed

    masked = shown(page, "masked")
    page.locator("#seed input").fill("7")
    page.locator("#seed input").press("Enter")
    expect(page.locator("#message")).to_have_text("")
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while np.array_equal(shown(page, "masked"), masked) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not np.array_equal(shown(page, "masked"), masked)  # another seed, another mask: still computing
    assert answers(server)


def test_the_second_tab_compares_two_checkpoints_on_the_same_mask(page, checkpoints, fmnist):
    page.get_by_role("tab", name="Compare two checkpoints").click()
    page.locator("#compare-path textarea, #compare-path input").first.fill(str(checkpoints["second"]))
    page.locator("#compare-button").click()
    expect(page.locator("#comparison")).to_contain_text("second: loss")
    # The page shows test image 0; as the data group serves it: pixels / 255, normalised.
    pixels = torch.from_numpy(fmnist[1]["val_images"][0]).float().div(255)[None, None]
    image = (pixels - MEAN[0]) / STD[0]
    first, second = (
        demo_views(load_demo_model(checkpoints[name], MEAN, STD), image, 0.75, 0, DISPLAY)
        for name in ("first", "second")
    )
    assert np.array_equal(shown(page, "compare-masked"), np.asarray(second.masked))
    assert np.array_equal(shown(page, "second-pasted"), np.asarray(second.pasted))
    assert np.array_equal(shown(page, "first-pasted"), np.asarray(first.pasted))
    expect(page.locator("#comparison")).to_contain_text(f"first: loss {first.loss:.4f}")
    expect(page.locator("#comparison")).to_contain_text(f"second: loss {second.loss:.4f}")
