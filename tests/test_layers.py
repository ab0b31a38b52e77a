"""The core stays the core: no module of it imports Flower's framework, the apps or the edges."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import PROJECT

EDGES = ("common.cli", "common.deploy")
FORBIDDEN = ("flwr", "client", "server", "simulations", *EDGES)


def core_modules() -> list[Path]:
    common = PROJECT / "common"
    return sorted(p for p in common.rglob("*.py")
                  if not any(p.is_relative_to(common / edge.split(".")[1]) for edge in EDGES))


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(PROJECT)))
def test_a_core_module_imports_no_framework_app_or_edge(path: Path) -> None:
    bad = sorted(name for name in imported(path)
                 if any(name == f or name.startswith(f + ".") for f in FORBIDDEN))
    assert not bad, f"{path.relative_to(PROJECT)} imports {bad}"


def test_the_layers_exist_as_packages_named_for_what_they_hold() -> None:
    for package in ("data", "features", "privacy", "deploy", "cli"):
        assert (PROJECT / "common" / package / "__init__.py").is_file()
    assert len(core_modules()) > 20
