"""The package as it is declared: what pyproject.toml ships is the tree, and each package keeps its privates.

- Every folder with an ``__init__.py`` under ``server/``, ``client/`` and
  ``lockmgr/`` is a package that pyproject.toml lists, and every package it
  lists is there: a new folder left out of the list would be missing from
  the wheel while every test run from the source tree still passed.
- A ``_private`` module is its package's own: no module of another package
  imports it (imports inside functions included). Another package goes
  through the public names the package re-exports.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
PACKAGE_DIR: dict[str, str] = SETUPTOOLS["package-dir"]
SOURCES = {"flashstock.server": "server", "flashstock.client": "client", "flashstock.lockmgr": "lockmgr"}
"""The hand-written roots; ``flashstock.v1`` is generated into protos/ at build time."""


def _folder(package: str) -> Path:
    """Where setuptools takes ``package`` from: its nearest ``package-dir`` entry, and the rest as folders."""
    root = max((p for p in PACKAGE_DIR if package == p or package.startswith(p + ".")), key=len)
    rest = package[len(root) :].lstrip(".")
    return ROOT / PACKAGE_DIR[root] / Path(*rest.split(".")) if rest else ROOT / PACKAGE_DIR[root]


def _source_packages() -> dict[str, Path]:
    """Every package under the hand-written roots, by dotted name: the folders with an ``__init__.py``."""
    found = {}
    for package, folder in SOURCES.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            relative = init.parent.relative_to(ROOT / folder)
            found[".".join((package, *relative.parts))] = init.parent
    return found


def _modules() -> dict[str, tuple[Path, str]]:
    """Every module of the hand-written packages: dotted name -> (file, the package it belongs to)."""
    modules = {}
    for package, folder in _source_packages().items():
        for path in sorted(folder.glob("*.py")):
            if path.name == "__init__.py":
                modules[package] = (path, package)
            else:
                modules[f"{package}.{path.stem}"] = (path, package)
    return modules


def _is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _owner_of_private(module: str) -> str | None:
    """The package whose private module ``module`` is (or lies inside), or None for a public path."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if _is_private(part):
            return ".".join(parts[:i])
    return None


def _imported_modules(tree: ast.AST, package: str, known: set[str]) -> list[tuple[int, str]]:
    """Every module an AST imports, absolute, with its line; ``from X import name`` counts X.name when
    that is a module of ours (importing a private module by name is importing it)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.append((node.lineno, source))
            for alias in node.names:
                if f"{source}.{alias.name}" in known:
                    found.append((node.lineno, f"{source}.{alias.name}"))
    return found


def _private_imports(source: str, name: str, package: str, known: set[str]) -> list[tuple[int, str]]:
    """The imports in module ``name`` (of ``package``) of another package's private module: (line, module)."""
    found = []
    for line, module in _imported_modules(ast.parse(source), package, known):
        owner = _owner_of_private(module)
        if owner is not None and module.startswith("flashstock.") and owner != package:
            found.append((line, module))
    return found


def test_every_package_folder_is_listed_and_every_listed_package_exists():
    listed = set(SETUPTOOLS["packages"])
    on_disk = set(_source_packages())
    assert sorted(on_disk - listed) == [], "folders with an __init__.py missing from [tool.setuptools] packages"
    hand_written = {p for p in listed if any(p == root or p.startswith(root + ".") for root in SOURCES)}
    assert sorted(hand_written - on_disk) == [], "packages listed in pyproject.toml with no folder/__init__.py"
    for package in sorted(listed - hand_written):  # generated at build time: the folder and its .proto
        assert list(_folder(package).glob("*.proto")), f"{package}: no .proto files in {_folder(package)}"


def test_package_dir_maps_each_root_to_its_folder():
    for package, folder in SOURCES.items():
        assert PACKAGE_DIR[package] == folder


def test_the_typed_packages_ship_their_py_typed_marker():
    package_data = SETUPTOOLS["package-data"]
    for package in (*SOURCES, "flashstock.v1"):
        assert "py.typed" in package_data.get(package, []), f"{package}: py.typed not in package-data"
        assert (_folder(package) / "py.typed").is_file(), f"{package}: no py.typed file"


def test_no_module_imports_another_packages_private_module():
    modules = _modules()
    problems = [
        f"{path.relative_to(ROOT)}:{line}: {name} imports {module}"
        for name, (path, package) in sorted(modules.items())
        for line, module in _private_imports(path.read_text(), name, package, set(modules))
    ]
    assert not problems, "another package's private module imported:\n" + "\n".join(problems)


def test_the_private_import_check_sees_relative_by_name_and_in_function_imports():
    known = {"flashstock.server._node", "flashstock.server.rpc._wire", "flashstock.lockmgr._keys"}
    source = """
from .._node import serve
from . import _wire
from flashstock.server import _node
import flashstock.server._node as node
from flashstock.lockmgr import check_id

def later():
    from flashstock.lockmgr._keys import check_id
"""
    found = _private_imports(source, "flashstock.server.rpc.servicer", "flashstock.server.rpc", known)
    assert found == [
        (2, "flashstock.server._node"),
        (4, "flashstock.server._node"),
        (5, "flashstock.server._node"),
        (9, "flashstock.lockmgr._keys"),
    ]
    # Within its own package a private module is fine, from any of its modules.
    own = "from ._node import serve\nfrom flashstock.server._node import serve\nfrom .rpc import _wire\n"
    assert _private_imports(own, "flashstock.server._metrics", "flashstock.server", known) == [
        (3, "flashstock.server.rpc._wire")
    ]
