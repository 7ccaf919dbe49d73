"""The layering README's Architecture section promises, checked on the source: imports run one way, with no cycle.

Every import counts, including those inside functions (an import moved into a function to dodge a cycle is still
a dependency). The folders of ``streaming/`` are layers; the shared modules at its top may be used by all of them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "streaming"

SHARED = {"codes", "conf", "exceptions", "metrics"}
"""Top-level modules every layer may import. They import only each other and ``runtime``."""

MAY_IMPORT = {
    "routing": {"gateway"},
    "apps": {"gateway"},
    "explorer": set(),
    "admin": {"gateway"},
    "management": {"gateway", "relay", "runtime", "simulator"},
    "gateway": {"hub", "daphne", "runtime"},
    "hub": {"relay", "upstream", "runtime"},
    "relay": {"upstream", "runtime"},
    "upstream": {"runtime"},
    "daphne": {"runtime"},
    "runtime": set(),
    "simulator": set(),
}
"""Which layers each layer (a folder, or an entry-point module at the top) may import besides itself and SHARED."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}


def imported_modules(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The ``streaming`` modules *path* imports, resolved to module names (``from streaming import codes`` is
    ``streaming.codes``; ``from streaming.hub.index import X`` is ``streaming.hub.index``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("streaming.") and target != name:
                yield target


def layer_of(name: str) -> str:
    """``streaming.gateway.consumer`` -> ``gateway``; ``streaming.codes`` -> ``codes``."""
    return name.split(".")[1] if name.count(".") >= 1 else ""


def dependency_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: set(imported_modules(name, path, known)) for name, path in found.items()}


GRAPH = dependency_graph()


@pytest.mark.parametrize("name", sorted(name for name in GRAPH if layer_of(name)))
def test_imports_follow_the_layers(name: str) -> None:
    layer = layer_of(name)
    if layer in SHARED:
        allowed = SHARED | {"runtime"}
    else:
        assert layer in MAY_IMPORT, f"{name} is in no known layer: add it to MAY_IMPORT (and README)"
        allowed = {layer} | SHARED | MAY_IMPORT[layer]
        if layer == "simulator":
            allowed = {"simulator"}  # the simulator stands in for the upstream: it knows nothing of the gateway
    wrong = sorted(target for target in GRAPH[name] if layer_of(target) not in allowed)
    assert not wrong, f"{name} ({layer}) must not import {wrong}"


def test_no_import_cycle() -> None:
    """Tarjan's strongly connected components over the module graph: every component is a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert cycles == []


def test_the_checker_sees_imports_inside_functions() -> None:
    """The shim once broke a cycle by importing inside a function; such an import must still count."""
    assert "streaming.gateway.rechecks" in GRAPH["streaming.apps"]  # imported in AppConfig.ready()


def test_the_top_of_streaming_stays_small() -> None:
    top_level = sorted(path.name for path in PACKAGE_DIR.glob("*.py") if path.name != "__init__.py")
    assert len(top_level) <= 10, top_level
