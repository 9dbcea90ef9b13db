"""The package's layout shows its architecture: only packages at the top of ``src/mae/``, and no import circle
between its modules (imports inside functions count too: a lazy import hides a circle, it does not remove it)."""

from __future__ import annotations

import ast
from pathlib import Path

import mae

PACKAGE_DIR = Path(mae.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports, anywhere in the file (``from mae.x import y`` counts ``mae.x.y``
    when that is a module, else ``mae.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        # A package's __init__ re-exporting its modules is not an edge from the package to itself.
        graph[name] = {
            target
            for target in project_imports(path, modules)
            if not (target.startswith(name + ".") or name.startswith(target + "."))
        }
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_circle_between_modules():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()) or [])


def test_cycle_finder_sees_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_top_level_holds_packages_only():
    loose = sorted(path.name for path in PACKAGE_DIR.glob("*.py") if path.name != "__init__.py")
    assert loose == []
    packages = sorted(path.name for path in PACKAGE_DIR.iterdir() if (path / "__init__.py").exists())
    assert {"model_files", "runs", "models", "training", "data", "jobs"} <= set(packages)


def test_model_files_do_not_reach_up_into_jobs_or_callbacks():
    graph = import_graph()
    upward = sorted(
        (source, target)
        for source, targets in graph.items()
        if source.startswith("mae.model_files")
        for target in targets
        if target.startswith(("mae.jobs", "mae.callbacks", "mae.training"))
    )
    assert upward == []


def package_edges() -> set[tuple[str, str]]:
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    return {
        (package(source), package(target))
        for source, targets in import_graph().items()
        for target in targets
        if package(source) != package(target)
    }


def test_layers_import_downwards_only():
    """The code map's direction: models and run plumbing at the bottom, data and model files just above them, and
    the jobs imported by nothing but the demo (an entry point of its own)."""
    edges = package_edges()
    allowed_below = {
        "mae.models": set(),
        "mae.runs": set(),
        "mae.data": {"mae.runs"},
        "mae.model_files": {"mae.models", "mae.runs"},
    }
    for package, allowed in allowed_below.items():
        assert {target for source, target in edges if source == package} <= allowed, package
    assert {source for source, target in edges if target == "mae.jobs"} <= {"mae.demo"}
