"""The packages import each other along the lines the error tree needs, and no cycle runs at import time.

The graph is read from the source (AST), not from ``sys.modules``: every
``import`` of every flashstock module, those inside functions included, each
marked as run at import time (module or class body) or later (a function
body). Imports under ``if TYPE_CHECKING:`` never run and are left out.
Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, so it
counts as importing them too (but for the importer's own packages, which ran
before it).
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[2]


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target``; ``at_import`` when that runs as ``source`` is imported."""

    source: str
    target: str
    at_import: bool


def _modules() -> dict[str, Path]:
    """Every flashstock module of the source tree (generated stubs aside), by dotted name."""
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    out = {}
    for package, folder in package_dir.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "_pb2" in path.name or ".venv" in path.parts:
                continue
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Each import node under ``tree`` and whether it sits in a function body."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for node in child.orelse:
                yield from _imports(node, in_function)
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _imports(child, inner)


def _with_parents(name: str, known: dict[str, Path]) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in known]


def import_graph() -> list[Edge]:
    """Every import between flashstock modules."""
    known = _modules()
    edges = []
    for module, path in known.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node, in_function in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                # ``from a import b``: b is a module of a, or a name in a.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
            for target in targets:
                for name in _with_parents(target, known):
                    # The module's own packages ran before it: importing them again is no edge.
                    if name != module and not module.startswith(name + "."):
                        edges.append(Edge(module, name, at_import=not in_function))
    return edges


def _cycles(edges: list[Edge]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _in(package: str, module: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_sees_imports_inside_functions():
    # The client finds nodes in etcd through lockmgr, imported only when a discovery starts.
    edges = import_graph()
    assert Edge("flashstock.client._discovery", "flashstock.lockmgr", at_import=False) in edges
    assert Edge("flashstock.lockmgr._errors", "flashstock.client.errors", at_import=True) in edges


def test_no_cycle_between_client_and_lockmgr_at_import_time():
    at_import = [e for e in import_graph() if e.at_import]
    for component in _cycles(at_import):
        packages = {p for p in ("flashstock.client", "flashstock.lockmgr") if any(_in(p, m) for m in component)}
        assert len(packages) < 2, f"an import cycle at import time through client and lockmgr: {sorted(component)}"


def test_client_and_lockmgr_meet_only_at_public_modules():
    # Whenever it runs: the client uses lockmgr's public API, lockmgr the client's error tree.
    for e in import_graph():
        if _in("flashstock.client", e.source) and _in("flashstock.lockmgr", e.target):
            assert e.target == "flashstock.lockmgr", e
        if _in("flashstock.lockmgr", e.source) and _in("flashstock.client", e.target):
            assert e.target in ("flashstock.client", "flashstock.client.errors"), e


def test_the_error_tree_imports_nothing_of_flashstock():
    assert [e for e in import_graph() if e.source == "flashstock.client.errors"] == []
