"""The package's floors and the one direction its imports point (docs/architecture.md, issue 15).

    top level (app, cli, config, …)  →  grpc/  →  usecases/  →  runtime/  →  db/  →  rules/

A module may import its own floor and any floor below it, never one above. Only grpc/ (and the
assembly at the top level) imports grpc or the generated registry.v1 code; rules/ imports no
asyncpg, no grpc, no prometheus and nothing that touches files or processes; there is no import
cycle. The imports are read with `ast`, lazy ones inside functions included, so the test needs
no database and imports nothing it checks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "registry"

# Lowest first: a floor may import itself and the floors before it.
FLOORS = ("rules", "db", "runtime", "usecases", "grpc")
TOP = "top"
RANK = {name: rank for rank, name in enumerate((*FLOORS, TOP))}

GRPC_PACKAGES = {"grpc", "grpc_status", "grpc_health", "grpc_reflection", "google"}
# What a pure rule may not import: drivers, the edge, metrics, files, processes, the network.
IMPURE = GRPC_PACKAGES | {
    "asyncpg",
    "prometheus_client",
    "os",
    "pathlib",
    "shutil",
    "subprocess",
    "socket",
    "signal",
    "fcntl",
    "tempfile",
    "asyncio",
}


@dataclass(frozen=True)
class Import:
    """One import of a module: the name imported and the line it is on."""

    target: str
    line: int


def module_name(path: Path) -> str:
    """Return the dotted name of a file of the package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Return every hand-written module of the package (the generated registry.v1 left out)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        name = module_name(path)
        if name.startswith("registry.v1") or "__pycache__" in path.parts:
            continue
        found[name] = path
    return found


def floor(name: str) -> str:
    """Return the floor of a module of the package: its first folder, or the top level."""
    parts = name.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in FLOORS else TOP


def imports_of(path: Path, known: set[str]) -> Iterator[Import]:
    """Yield what a module imports, `from registry.x import y` resolved to the module y if any."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            assert node.module is not None
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                yield Import(candidate if candidate in known else node.module, node.lineno)


def graph(package: Path = PACKAGE) -> dict[str, list[Import]]:
    """Return each module's imports."""
    found = modules(package)
    known = set(found) | {"registry.v1"}
    return {name: list(imports_of(path, known)) for name, path in found.items()}


def violations(imports: dict[str, list[Import]]) -> list[str]:
    """Return every import that points the wrong way, in words."""
    wrong = []
    for name, found in imports.items():
        here = floor(name)
        for imp in found:
            where = f"{name}:{imp.line} imports {imp.target}"
            top_package = imp.target.split(".")[0]
            if imp.target == "registry.v1" or imp.target.startswith("registry.v1."):
                if here not in ("grpc", TOP):
                    wrong.append(f"{where}: only grpc/ and the top level use the generated code")
            elif top_package == "registry":
                there = floor(imp.target)
                if imp.target == "registry" or RANK[there] > RANK[here]:
                    wrong.append(f"{where}: {here} may not import {there} (it is above)")
            elif top_package in GRPC_PACKAGES and here not in ("grpc", TOP):
                wrong.append(f"{where}: only grpc/ and the top level import grpc")
            elif here == "rules" and top_package in IMPURE:
                wrong.append(f"{where}: rules/ stays pure")
    return wrong


def cycles(imports: dict[str, list[Import]]) -> list[list[str]]:
    """Return the import cycles between modules of the package (Tarjan's components, size > 1)."""
    edges = {
        name: sorted({i.target for i in found if i.target in imports and i.target != name})
        for name, found in imports.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return components


def test_every_module_is_on_a_floor_or_is_assembly() -> None:
    top = sorted(name for name in modules() if floor(name) == TOP)
    assert top == [
        "registry",
        "registry.app",
        "registry.cli",
        "registry.config",
        "registry.db",
        "registry.embedded",
        "registry.grpc",
        "registry.logs",
        "registry.rules",
        "registry.runtime",
        "registry.status",
        "registry.supervisor",
        "registry.usecases",
    ], "a new top-level module: put it on a floor, or add it here with why (docs/architecture.md)"


def test_imports_point_down() -> None:
    assert violations(graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


@pytest.mark.parametrize(
    ("module", "source", "reason"),
    [
        ("registry.rules.planted", "from registry.db import citizens\n", "rules may not import db"),
        ("registry.rules.planted", "import asyncpg\n", "rules/ stays pure"),
        ("registry.db.planted", "from registry.usecases import cards\n", "db may not import"),
        ("registry.runtime.planted", "import grpc\n", "only grpc/ and the top level"),
        ("registry.usecases.planted", "from registry.grpc import gate\n", "usecases may not"),
        ("registry.usecases.planted", "from registry.v1 import citizen_pb2\n", "generated code"),
        ("registry.grpc.planted", "from registry import app\n", "grpc may not import top"),
    ],
)
def test_a_planted_upward_import_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, source: str, reason: str
) -> None:
    imports = graph()
    path = tmp_path / "planted.py"
    path.write_text(source)
    imports[module] = list(imports_of(path, set(imports) | {"registry.v1"}))
    found = violations(imports)
    assert len(found) == 1 and reason in found[0], found


def test_a_planted_cycle_is_found() -> None:
    imports = graph()
    dates = "registry.rules.dates"
    imports[dates] = [*imports[dates], Import("registry.rules.model", 1)]  # model imports dates
    assert any(dates in c and "registry.rules.model" in c for c in cycles(imports))
