"""The README and the documentation site (docs/, mkdocs.yml): links resolve, every page is in the nav, every module
the text names exists (stale names after a package re-organisation fail here), and the site builds strictly."""

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# docs/*.md files that are data, not pages: none at the moment. (docs/results/README.md, which says which command
# wrote each results file, is a page of the site: it is in the nav.)
NOT_PAGES: set[str] = set()
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# `mae.a.b` in prose and code; not part of a path or a file name (`models/mae.py`, `official_mae_tiny.pt`).
DOTTED = re.compile(r"(?<![\w/.-])mae(?:\.[A-Za-z_]\w*)+")
RUN_MODULE = re.compile(r"python -m (mae(?:\.\w+)*)")
FILE_SUFFIXES = {"py", "json", "yaml", "yml", "md", "pth", "pt", "ckpt", "png", "csv", "safetensors", "txt"}


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


class Loader(yaml.SafeLoader):
    """mkdocs.yml with its tags (``!relative``, ``!ENV``) read as plain values."""


Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def mkdocs_config() -> dict:
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)


def nav_pages(nav) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages.extend(nav_pages(value) if isinstance(value, list) else [value])
    return pages


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def test_every_relative_link_of_the_readme_points_to_an_existing_file():
    links = LINK.findall(without_code_blocks((ROOT / "README.md").read_text()))
    relative = [link for link in links if not re.match(r"[a-z]+:|#", link)]
    assert relative, "the README links into the documentation"
    missing = [link for link in relative if not (ROOT / link.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_the_readme_links_to_every_page_of_the_site_outside_the_api_reference():
    readme = (ROOT / "README.md").read_text()
    pages = [page for page in nav_pages(mkdocs_config()["nav"]) if not page.startswith(("reference/", "results/"))]
    assert [page for page in pages if f"(docs/{page})" not in readme] == []


def test_every_page_of_the_nav_exists_and_every_page_is_in_the_nav():
    config = mkdocs_config()
    assert config["docs_dir"] == "docs"
    pages = nav_pages(config["nav"])
    assert len(pages) == len(set(pages)), "a page is listed twice"
    assert [page for page in pages if not (DOCS / page).is_file()] == []
    on_disk = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")} - NOT_PAGES
    assert sorted(on_disk - set(pages)) == [], "pages missing from the nav of mkdocs.yml"


def test_every_package_has_an_api_reference_page():
    packages = sorted(path.parent.name for path in (ROOT / "src" / "mae").glob("*/__init__.py"))
    for package in packages:
        page = DOCS / "reference" / f"{package}.md"
        assert page.is_file() and f"::: mae.{package}\n" in page.read_text(), package
    assert nav_pages(mkdocs_config()["nav"]).count("reference/mae.md") == 1


def names_in(text: str) -> set[str]:
    names = set()
    for match in DOTTED.finditer(text):
        name = match.group(0)
        if name.rsplit(".", 1)[-1] in FILE_SUFFIXES:  # a file name such as mae.py
            continue
        names.add(name)
    return names


def resolves(name: str) -> bool:
    """``name`` is a module, or a module followed by attributes of it (``mae.models.MaskedAutoencoderViT``)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        module = ".".join(parts[:end])
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            break
    else:
        return False
    if end == len(parts):
        return True
    value = importlib.import_module(module)
    for attribute in parts[end:]:
        if not hasattr(value, attribute):
            return False
        value = getattr(value, attribute)
    return True


def test_every_module_the_readme_and_the_pages_name_exists():
    stale = {}
    for path in markdown_files():
        text = path.read_text()
        for name in sorted(names_in(text)):
            if not resolves(name):
                stale.setdefault(path.relative_to(ROOT).as_posix(), []).append(name)
        for module in RUN_MODULE.findall(text):
            spec = importlib.util.find_spec(module)
            runnable = spec is not None and (
                spec.submodule_search_locations is None or importlib.util.find_spec(f"{module}.__main__") is not None
            )
            if not runnable:
                stale.setdefault(path.relative_to(ROOT).as_posix(), []).append(f"python -m {module}")
    assert stale == {}, "names of modules that do not exist (or cannot run with python -m)"


def test_the_name_check_catches_stale_names():
    assert names_in("`mae.checkpoint.load_pretrained`, models/mae.py, mae_shards.json, mae.load_model") == {
        "mae.checkpoint.load_pretrained",
        "mae.load_model",
    }
    assert not resolves("mae.checkpoint.load_pretrained")
    assert not resolves("mae.models.NoSuchThing")
    assert resolves("mae.load_model") and resolves("mae.models.MaskedAutoencoderViT")


def mkdocs_command() -> list[str] | None:
    local = Path(sys.executable).with_name("mkdocs")
    if local.is_file():
        return [str(local)]
    found = shutil.which("mkdocs")
    return [found] if found else None


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    command = mkdocs_command()
    if command is None:
        message = "mkdocs is not installed (pip install -e '.[docs]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [
            *command,
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "model_files.html").is_file()
