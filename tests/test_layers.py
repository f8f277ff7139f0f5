"""Layers import inward only (DESIGN section 3); ruff TID251 fences duckdb, this the rest."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "engine"

# Lower numbers are further in. A module may import modules of its own layer or inner ones.
LAYERS = {
    "errors": 0,
    "models": 1,
    "schema": 2,
    "filters": 3,
    "metrics": 3,
    "queries": 4,
    "storage": 5,
    "keys": 6,
    "context": 6,
    "customers": 6,
    "ingest": 6,
    "backfills": 6,
    "events": 6,
    "usage": 6,
    "maintenance": 6,
    "store": 7,
    "http": 8,
    "cli": 8,
    "notebook": 8,
    "sample": 8,
    "demo": 8,
    "__init__": 9,
    "__main__": 9,
}


def _engine_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "engine" and len(parts) > 1:
                    found.add(parts[1])
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_module_imports_only_inner_layers(path: Path) -> None:
    name = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    assert name in LAYERS, f"engine/{name} is not placed in a layer; add it to LAYERS"
    for imported in _engine_imports(path):
        assert imported in LAYERS, f"engine/{name} imports unknown module engine.{imported}"
        assert LAYERS[imported] <= LAYERS[name], (
            f"engine/{name} (layer {LAYERS[name]}) imports engine.{imported} "
            f"(layer {LAYERS[imported]}): layers import inward only"
        )


def test_only_storage_imports_duckdb() -> None:
    for path in MODULES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "duckdb" or n.startswith("duckdb.") for n in names):
                assert path.name == "storage.py", f"{path.name} imports duckdb"
