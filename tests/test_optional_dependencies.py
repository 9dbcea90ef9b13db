"""The core install and its extras (pyproject.toml): what src/mae imports is declared, every optional package is
imported through mae.runs.optional.require, and a feature whose extra is missing stops with one line naming it (the
package made unimportable with ``sys.modules[name] = None``). Also tests/extras.py, the tests' side of it."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
import types
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

import pytest
import torch
from extras import in_ci, needs_extra
from omegaconf import OmegaConf
from packaging.requirements import Requirement
from PIL import Image

import mae
from mae.runs.config import instantiate_node
from mae.runs.optional import (
    DISTRIBUTION,
    TARGET_REQUIREMENTS,
    MissingExtraError,
    check_target,
    missing_extra,
    require,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(mae.__file__).parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SELF = re.compile(rf"^{DISTRIBUTION}\[(?P<extras>[^\]]*)\]$")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def names(requirements: list[str]) -> set[str]:
    return {normalized(Requirement(line).name) for line in requirements if not SELF.match(line)}


CORE = names(PYPROJECT["project"]["dependencies"])
EXTRAS = {extra: names(lines) for extra, lines in PYPROJECT["project"]["optional-dependencies"].items()}
OPTIONAL = set().union(*EXTRAS.values()) - CORE


@cache
def module_distributions() -> dict[str, list[str]]:
    return packages_distributions()


def distribution(module: str) -> str:
    """The installed distribution a top-level module comes from (PIL -> pillow, yaml -> pyyaml), else its name."""
    found = module_distributions().get(module)
    return normalized(found[0] if found else module)


def block(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``modules`` (and their submodules already imported) unimportable for the rest of the test."""
    for name in modules:
        for key in [key for key in sys.modules if key == name or key.startswith(f"{name}.")]:
            monkeypatch.setitem(sys.modules, key, None)
        monkeypatch.setitem(sys.modules, name, None)


def reimport(monkeypatch: pytest.MonkeyPatch, module: str) -> types.ModuleType:
    """Import ``module`` afresh (its earlier import is restored after the test)."""
    monkeypatch.delitem(sys.modules, module, raising=False)
    parent, _, child = module.rpartition(".")
    if parent in sys.modules:
        monkeypatch.delattr(sys.modules[parent], child, raising=False)
    return importlib.import_module(module)


def one_line(error: BaseException, feature: str, package: str, extra: str) -> None:
    assert isinstance(error, MissingExtraError) and isinstance(error, ImportError) and isinstance(error, ValueError)
    assert str(error) == (
        f"{feature} needs {package}: pip install '{DISTRIBUTION}[{extra}]' "
        f"(from a checkout: pip install -e '.[{extra}]')"
    )
    assert "\n" not in str(error)


# The helper ----------------------------------------------------------------------------------------------------------


def test_require_returns_the_module_or_one_line_naming_the_extra(monkeypatch):
    assert require("json", "none", "anything") is sys.modules["json"]
    block(monkeypatch, "numpy")
    with pytest.raises(MissingExtraError) as caught:
        require("numpy.linalg", "math", "solving")
    one_line(caught.value, "solving", "numpy", "math")
    assert caught.value.name == "numpy"


def test_require_says_when_the_package_is_there_but_its_own_import_fails(monkeypatch):
    broken = types.ModuleType("broken_extra_pkg")
    monkeypatch.setitem(sys.modules, "broken_extra_pkg", broken)
    monkeypatch.setitem(sys.modules, "broken_extra_pkg.sub", None)
    with pytest.raises(MissingExtraError, match=r"^feature needs broken_extra_pkg: pip install") as caught:
        require("broken_extra_pkg.sub", "x", "feature")
    assert "\n" not in str(caught.value)

    def failing_import(name, *args, **kwargs):
        raise ModuleNotFoundError("No module named 'a_dependency_of_it'", name="a_dependency_of_it")

    monkeypatch.delitem(sys.modules, "broken_extra_pkg")
    monkeypatch.setattr(importlib, "import_module", failing_import)
    with pytest.raises(MissingExtraError) as caught:
        require("broken_extra_pkg", "x", "feature")
    assert str(caught.value) == (
        "feature needs broken_extra_pkg, whose import failed (No module named "
        "'a_dependency_of_it'): pip install 'mae-lightning[x]' "
        "(from a checkout: pip install -e '.[x]')"
    )


def test_missing_extra_finds_the_error_behind_hydras_wrappers():
    error = MissingExtraError("f needs p: pip install 'mae-lightning[e]'", name="p")
    try:
        try:
            raise error
        except MissingExtraError as inner:
            raise ImportError("Error loading 'x':\nMissingExtraError(...)") from inner
    except ImportError as outer:
        assert missing_extra(outer) is error
    assert missing_extra(ValueError("other")) is None and missing_extra(None) is None


# Each optional feature -----------------------------------------------------------------------------------------------

STREAMING = "streaming shards (data=*_stream)"


def test_streaming_data_needs_the_streaming_extra(monkeypatch):
    block(monkeypatch, "litdata")
    with pytest.raises(MissingExtraError) as caught:
        reimport(monkeypatch, "mae.data.streaming")
    one_line(caught.value, STREAMING, "litdata", "streaming")


def test_writing_shards_needs_the_streaming_extra(monkeypatch, tmp_path):
    from mae.data.shards.writer import write_shards

    block(monkeypatch, "litdata")
    with pytest.raises(MissingExtraError) as caught:
        write_shards(None, tmp_path / "out", chunk_bytes="1MB", num_workers=1, overwrite=False, source="x")
    one_line(caught.value, "writing shards (python -m mae.data.shards)", "litdata", "streaming")
    assert not (tmp_path / "out").exists()


def test_the_shards_command_stops_with_one_line_when_litdata_is_missing(monkeypatch, tmp_path, capsys):
    from mae.data.shards.__main__ import main as shards_main

    block(monkeypatch, "litdata")
    image_dir = tmp_path / "images"
    for split in ("train", "val"):
        (image_dir / split / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(image_dir / split / "cat" / "a.png")
    assert shards_main([str(image_dir), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        "error: writing shards (python -m mae.data.shards) needs litdata: "
        "pip install 'mae-lightning[streaming]' "
        "(from a checkout: pip install -e '.[streaming]')\n"
    )


def test_the_streaming_benchmark_needs_the_streaming_extra(monkeypatch, tmp_path):
    from mae.benchmarking.loader import write_stream

    block(monkeypatch, "litdata")
    with pytest.raises(MissingExtraError) as caught:
        write_stream([], tmp_path)
    one_line(caught.value, "the streaming loader benchmark", "litdata", "streaming")


def test_flowers102_labels_need_the_transfer_extra(monkeypatch, tmp_path):
    from mae.data.transfer_datasets.files import read_mat

    block(monkeypatch, "scipy")
    with pytest.raises(MissingExtraError) as caught:
        read_mat(tmp_path / "imagelabels.mat", "labels")
    one_line(caught.value, "reading imagelabels.mat (a MATLAB file)", "scipy", "transfer")


def test_sweep_plots_need_the_sweeps_extra_and_the_summary_module_imports_without_it(monkeypatch):
    block(monkeypatch, "matplotlib")
    plots = reimport(monkeypatch, "mae.sweeps.plots")
    rows = [{"model.mask_ratio": 0.5, "knn_top1_mean": 50.0, "knn_top1_std": None}]
    assert plots.parameter_figure([], "model.mask_ratio", ["model.mask_ratio"], ["knn_top1"], {}) is None
    with pytest.raises(MissingExtraError) as caught:
        plots.parameter_figure(rows, "model.mask_ratio", ["model.mask_ratio"], ["knn_top1"], {})
    one_line(caught.value, "the sweep plots", "matplotlib", "sweeps")


def test_the_transformers_format_needs_the_hf_extra(monkeypatch, tmp_path, capsys):
    from mae.model_files.export import main as export_main
    from mae.model_files.transformers_format import vitmae_config
    from mae.models import mae_vit_tiny_patch7

    block(monkeypatch, "transformers")
    model = mae_vit_tiny_patch7(in_chans=1)
    feature = "the Hugging Face format (ViTMAE/ViT directories)"
    with pytest.raises(MissingExtraError) as caught:
        vitmae_config(model)
    one_line(caught.value, feature, "transformers", "hf")
    torch.save({"model": model.state_dict()}, tmp_path / "full.pth")
    assert export_main(["transformers", str(tmp_path / "full.pth"), str(tmp_path / "hf")]) == 2
    assert capsys.readouterr().err == (
        f"error: {feature} needs transformers: pip install 'mae-lightning[hf]' "
        "(from a checkout: pip install -e '.[hf]')\n"
    )
    assert not (tmp_path / "hf").exists()


def test_the_demo_page_needs_the_demo_extra(monkeypatch):
    block(monkeypatch, "gradio")
    with pytest.raises(MissingExtraError) as caught:
        reimport(monkeypatch, "mae.demo.app")
    one_line(caught.value, "the demo (python -m mae.demo)", "gradio", "demo")


TENSORBOARD_NODE = {"_target_": "lightning.pytorch.loggers.TensorBoardLogger", "name": "tensorboard", "version": ""}


def test_the_tensorboard_logger_needs_the_tensorboard_extra(monkeypatch, tmp_path):
    node = OmegaConf.create({**TENSORBOARD_NODE, "save_dir": str(tmp_path)})
    assert type(instantiate_node(node)).__name__ == "TensorBoardLogger"
    block(monkeypatch, "tensorboard", "tensorboardX")
    with pytest.raises(MissingExtraError) as caught:
        instantiate_node(node)
    one_line(caught.value, "logger=tensorboard", "tensorboard", "tensorboard")
    # Lightning writes with tensorboardX when tensorboard is missing: that is enough.
    monkeypatch.setitem(sys.modules, "tensorboardX", types.ModuleType("tensorboardX"))
    check_target(node)


# Through train.py: one `error:` line and exit code 2 before any work, and the default run needs no extra ---------------

SMALL = [
    "data.train_samples=256",
    "data.knn_train_samples=256",
    "data.knn_val_samples=128",
    "schedule.batch_size=32",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "trainer.limit_val_batches=2",
    "callbacks.progress_bar.refresh_rate=0",
]
OPTIONAL_MODULES = [
    "litdata",
    "scipy",
    "matplotlib",
    "transformers",
    "gradio",
    "playwright",
    "tensorboard",
    "tensorboardX",
    "optuna",
    "submitit",
    "mkdocs",
    "ruff",
    "pycocotools",
]


UNINSTALL = """
import importlib.metadata, re, sys

BLOCKED = set(sys.argv[1].split(","))


def normalized(name):
    return re.sub(r"[-_.]+", "-", name).lower()


class NotInstalled:
    # Neither importable nor found by importlib.util.find_spec: libraries that look before they import (Lightning's
    # and torchmetrics' availability checks) see the package as missing too.
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled)
from_name = importlib.metadata.Distribution.from_name.__func__


def no_distribution(cls, name):
    if normalized(name) in {normalized(module) for module in BLOCKED}:
        raise importlib.metadata.PackageNotFoundError(name)
    return from_name(cls, name)


importlib.metadata.Distribution.from_name = classmethod(no_distribution)
sys.argv = sys.argv[2:]
import runpy

runpy.run_path(sys.argv[0], run_name="__main__")
"""
"""Run a script (argv after the blocked modules) as if the blocked packages were not installed."""


def run_train_without(tmp_path: Path, blocked: list[str], overrides: list[str]) -> subprocess.CompletedProcess:
    """train.py as if the ``blocked`` packages were not installed (neither importable nor in the metadata)."""
    argv = [str(ROOT / "train.py"), f"hydra.run.dir={tmp_path / 'run'}", f"paths.log_dir={tmp_path}", *overrides]
    code = UNINSTALL
    return subprocess.run(
        [sys.executable, "-c", code, ",".join(blocked), *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=600,
        check=False,
    )


@pytest.mark.slow  # a subprocess each (about 20 s on two busy cores)
@pytest.mark.parametrize(
    ("blocked", "overrides", "message"),
    [
        (
            ["tensorboard", "tensorboardX"],
            ["logger=tensorboard"],
            (
                "error: logger=tensorboard needs tensorboard: pip install 'mae-lightning[tensorboard]' "
                "(from a checkout: pip install -e '.[tensorboard]')"
            ),
        ),
        (
            ["litdata"],
            ["data=fashion_mnist_stream"],
            (
                f"error: {STREAMING} needs litdata: pip install 'mae-lightning[streaming]' "
                "(from a checkout: pip install -e '.[streaming]')"
            ),
        ),
    ],
)
def test_train_py_names_the_missing_extra_in_one_line_before_any_work(tmp_path, blocked, overrides, message):
    result = run_train_without(tmp_path, blocked, SMALL + overrides)
    assert result.returncode == 2, result.stderr[-3000:]
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [message]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_the_default_run_needs_no_extra(tmp_path):
    """python train.py (pre-training, kNN, CSV logger, reconstruction grid) with every optional package missing."""
    # Not fast_dev_run: it switches the loggers off.
    result = run_train_without(
        tmp_path,
        OPTIONAL_MODULES,
        SMALL + ["schedule.epochs=1", "schedule.warmup_epochs=0", "+trainer.limit_train_batches=2"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kNN top-1" in result.stdout
    assert (tmp_path / "run" / "reconstruction.png").is_file() and (tmp_path / "run" / "csv" / "metrics.csv").is_file()


# What src/mae imports, against pyproject.toml (AST scan) -------------------------------------------------------------


class Imports(ast.NodeVisitor):
    """Every absolute import of a module outside the standard library and this package: (top-level module, line,
    at module level (not inside a function), under ``if TYPE_CHECKING:``)."""

    def __init__(self) -> None:
        self.found: list[tuple[str, int, bool, bool]] = []
        self.depth = 0
        self.type_checking = False

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            before, self.type_checking = self.type_checking, True
            for child in node.body:
                self.visit(child)
            self.type_checking = before
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._add(node.module, node.lineno)

    def _add(self, module: str, line: int) -> None:
        top = module.split(".")[0]
        if top not in sys.stdlib_module_names and top not in ("mae", "__future__"):
            self.found.append((top, line, self.depth == 0, self.type_checking))


def source_files() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def imports_of(path: Path) -> list[tuple[str, int, bool, bool]]:
    visitor = Imports()
    visitor.visit(ast.parse(path.read_text(), str(path)))
    return visitor.found


def require_calls(path: Path) -> list[tuple[str, str, int]]:
    """``require("<module>", "<extra>", ...)`` calls: (module, extra, line)."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "require":
            module, extra = (arg.value if isinstance(arg, ast.Constant) else None for arg in node.args[:2])
            calls.append((module, extra, node.lineno))
    return calls


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_every_module_level_import_is_a_core_dependency():
    undeclared = [
        f"{where(path, line)} {module} ({distribution(module)})"
        for path in source_files()
        for module, line, top_level, type_checking in imports_of(path)
        if top_level and not type_checking and distribution(module) not in CORE
    ]
    assert undeclared == [], "declare them in pyproject.toml's dependencies, or import them through require()"


def test_optional_packages_are_imported_only_through_require():
    direct = [
        f"{where(path, line)} {module}"
        for path in source_files()
        for module, line, _, type_checking in imports_of(path)
        if not type_checking and distribution(module) in OPTIONAL
    ]
    assert direct == [], "use mae.runs.optional.require(module, extra, feature) for an extra's package"
    # Function-level imports are core dependencies too: anything else is an undeclared dependency.
    undeclared = [
        f"{where(path, line)} {module}"
        for path in source_files()
        for module, line, _, type_checking in imports_of(path)
        if not type_checking and distribution(module) not in CORE
    ]
    assert undeclared == []


def test_each_require_names_an_extra_that_installs_its_package():
    calls = [
        (path, module, extra, line)
        for path in source_files()
        for module, extra, line in require_calls(path)
        if path.name != "optional.py"
    ]
    assert {module.split(".")[0] for _, module, _, _ in calls} >= {
        "litdata",
        "scipy",
        "matplotlib",
        "transformers",
        "gradio",
        "pycocotools",
    }
    wrong = [
        f"{where(path, line)} require({module!r}, {extra!r})"
        for path, module, extra, line in calls
        if extra not in EXTRAS or distribution(module.split(".")[0]) not in EXTRAS[extra]
    ]
    assert wrong == []
    for module, extra, _ in TARGET_REQUIREMENTS.values():
        assert distribution(module) in EXTRAS[extra]


def test_the_extras_and_what_dev_installs():
    assert set(EXTRAS) == {
        "tensorboard",
        "streaming",
        "transfer",
        "sweeps",
        "detect",
        "hf",
        "demo",
        "docs",
        "lint",
        "dev",
    }
    assert {
        "torch",
        "torchvision",
        "lightning",
        "hydra-core",
        "omegaconf",
        "timm",
        "torchmetrics",
        "wandb",
        "numpy",
        "pyyaml",
        "pillow",
        "safetensors",
        "tqdm",
    } == CORE
    assert not CORE & {
        "tensorboard",
        "litdata",
        "scipy",
        "matplotlib",
        "transformers",
        "gradio",
        "optuna",
        "pycocotools",
    }
    assert "hydra-optuna-sweeper" not in OPTIONAL and "optuna" in EXTRAS["sweeps"]
    dev = [SELF.match(line) for line in PYPROJECT["project"]["optional-dependencies"]["dev"]]
    included = {extra.strip() for match in dev if match for extra in match["extras"].split(",")}
    assert included == set(EXTRAS) - {"dev"}


def test_every_dependency_is_a_range_and_the_constraints_pin_each_one():
    lines = [
        *PYPROJECT["project"]["dependencies"],
        *[line for extra in PYPROJECT["project"]["optional-dependencies"].values() for line in extra],
    ]
    requirements = [Requirement(line) for line in lines if not SELF.match(line)]
    assert [str(r) for r in requirements if any(spec.operator == "==" for spec in r.specifier)] == []
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            pinned[normalized(requirement.name)] = spec.version
    for requirement in requirements:
        name = normalized(requirement.name)
        assert name in pinned, f"{name} is not in constraints.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{name}=={pinned[name]} vs {requirement}"
        )


# tests/extras.py ------------------------------------------------------------------------------------------------------


def test_needs_extra_returns_the_module():
    assert needs_extra("json", "none") is sys.modules["json"]


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_needs_extra_skips_outside_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    assert not in_ci()
    block(monkeypatch, "gradio")
    with pytest.raises(pytest.skip.Exception, match=r"gradio is not importable .*the \[demo\] extra installs it"):
        needs_extra("gradio", "demo")


@pytest.mark.parametrize("value", ["true", "1"])
def test_needs_extra_fails_in_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    assert in_ci()
    block(monkeypatch, "gradio")
    with pytest.raises(pytest.fail.Exception, match=r"gradio is not importable .*a missing one is a failure"):
        needs_extra("gradio", "demo")


def test_needs_extra_without_ci_variable_skips(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    block(monkeypatch, "transformers")
    with pytest.raises(pytest.skip.Exception):
        needs_extra("transformers.models", "hf")


def test_the_demo_command_without_gradio_is_one_line_before_reading_the_checkpoint(monkeypatch, tmp_path, capsys):
    from mae.demo.__main__ import main as demo_main

    block(monkeypatch, "gradio")
    monkeypatch.delitem(sys.modules, "mae.demo.app", raising=False)
    assert demo_main([str(tmp_path / "missing.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: the demo (python -m mae.demo) needs gradio")
