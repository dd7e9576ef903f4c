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


def _within(package: str, owner: str) -> bool:
    """Whether ``package`` is ``owner`` or lies inside it."""
    return package == owner or package.startswith(owner + ".")


def _private_imports(source: str, name: str, package: str, known: set[str]) -> list[tuple[int, str]]:
    """The imports in module ``name`` (of ``package``) of another package's private module: (line, module).

    A private module is private to its package's tree: ``flashstock.server._metrics`` serves every room of
    the server (``flashstock.server.store``, ``.duties``, ...), while ``flashstock.server.ledger._ledger`` is
    not for ``flashstock.server.cli``, nor ``flashstock.lockmgr._keys`` for the client.
    """
    found = []
    for line, module in _imported_modules(ast.parse(source), package, known):
        owner = _owner_of_private(module)
        if owner is not None and module.startswith("flashstock.") and not _within(package, owner):
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
    known = {"flashstock.server._node", "flashstock.server.ledger._ledger", "flashstock.lockmgr._keys"}
    source = """
from ..ledger._ledger import Ledger
from ..ledger import _ledger
from flashstock.server import _node
import flashstock.server.ledger._ledger as ledger
from flashstock.lockmgr import check_id

def later():
    from flashstock.lockmgr._keys import check_id
"""
    found = _private_imports(source, "flashstock.server.cli.serve", "flashstock.server.cli", known)
    assert found == [
        (2, "flashstock.server.ledger._ledger"),
        (3, "flashstock.server.ledger._ledger"),
        (5, "flashstock.server.ledger._ledger"),
        (9, "flashstock.lockmgr._keys"),
    ]
    # A private module is private to its package's tree: its own modules and its rooms may use it.
    own = "from ._node import serve\nfrom flashstock.server._node import serve\nfrom .ledger import _ledger\n"
    assert _private_imports(own, "flashstock.server._metrics", "flashstock.server", known) == [
        (3, "flashstock.server.ledger._ledger")
    ]
    room = "from flashstock.server._node import serve\n"
    assert _private_imports(room, "flashstock.server.cli.serve", "flashstock.server.cli", known) == []
