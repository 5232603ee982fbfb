"""The package's layers and the one direction of their dependencies, read from the source.

tools -> application -> data -> ingest -> shared (lake, host) -> errors: a module imports only
from its own layer or the ones below it, wherever the import statement is (lazy ones count).
Ingest and everything below it never import torch, so that ingest's worker processes start
without it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fashion_lake"
LAYERS = ["errors", "shared", "ingest", "data", "application", "tools"]  # bottom to top
SHARED = {"fashion_lake.lake", "fashion_lake.host"}
TORCH = {"torch", "torchvision", "pytorch_lightning", "lightning", "torchmetrics"}


def layer(module: str) -> str:
    if module == "fashion_lake.errors":
        return "errors"
    if module in SHARED:
        return "shared"
    for package in ("ingest", "data", "tools"):
        if module == f"fashion_lake.{package}" or module.startswith(f"fashion_lake.{package}."):
            return package
    return "application"  # fashion_lake itself, cli, model, callbacks, plots, export, checkpoint


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module that ``path`` imports, at any depth of its code ("from X import y" as X.y
    too, since y may be a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: a relative import; the package imports absolutely"
            base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def own(names: set[str]) -> set[str]:
    """The modules of this package among ``names`` (a name that is an attribute counts as its module)."""
    modules = {module_name(path) for path in PACKAGE.rglob("*.py")}
    return {name for name in names if name in modules}


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: module_name(path))
def test_imports_point_down_the_layers(path: Path) -> None:
    here = LAYERS.index(layer(module_name(path)))
    upward = sorted(name for name in own(imports(path)) if LAYERS.index(layer(name)) > here)
    assert not upward, f"{module_name(path)} ({layer(module_name(path))}) imports {upward}"


@pytest.mark.parametrize(
    "path", [p for p in SOURCES if LAYERS.index(layer(module_name(p))) <= LAYERS.index("ingest")],
    ids=lambda path: module_name(path),
)  # fmt: skip
def test_ingest_and_below_never_import_torch(path: Path) -> None:
    used = sorted(name for name in imports(path) if name.split(".")[0] in TORCH)
    assert not used, f"{module_name(path)} imports {used}"


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    """The checks above find an upward import and a lazy torch import where they are."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    import torch\n    from fashion_lake.data.order import DistContext\n")
    found = imports(source)
    assert "torch" in found and "fashion_lake.data.order" in own(found)
    assert LAYERS.index(layer("fashion_lake.data.order")) > LAYERS.index(layer("fashion_lake.ingest.write"))


def test_every_import_of_the_package_resolves() -> None:
    """Every ``from fashion_lake.X import name`` statement of the package finds its name, lazy
    ones (inside functions) too; imports inside code strings are not seen here."""
    import importlib

    missing = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fashion_lake"):
                module = importlib.import_module(node.module)  # type: ignore[arg-type]
                for alias in node.names:
                    if not hasattr(module, alias.name) and not _is_module(f"{node.module}.{alias.name}"):
                        missing.append(f"{module_name(path)}: {node.module}.{alias.name}")
    assert not missing


def _is_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent is a module, not a package
        return False
