"""The ``flashstock`` command: one module per command group (:mod:`flashstock.server.cli.app` assembles them).

:func:`main` is the console script's entry. It imports the commands only
when they run, so that with the client alone installed (``pip install
flashstock``, without the ``server`` extra) ``flashstock --version`` still
works and every other command says what to install, instead of a traceback.
"""

from __future__ import annotations

import sys

_EXTRAS = {"psycopg": "postgres"}
"""The dependencies that come with another extra than ``server``: psycopg, for a PostgreSQL ledger."""


def version() -> str:
    """flashstock's installed version (``unknown`` when it runs from a folder that was never installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("flashstock")
    except PackageNotFoundError:
        return "unknown"


def missing_dependency(exc: ImportError) -> str | None:
    """The top-level package an ImportError says is missing, unless it is flashstock's own (a bug, not an extra)."""
    name = (exc.name or "").partition(".")[0]
    return name if name and name != "flashstock" else None


def what_to_install(missing: str) -> str:
    """One line: which extra brings ``missing``, and how to install it."""
    extra = _EXTRAS.get(missing, "server")
    needs = "a PostgreSQL ledger needs" if extra == "postgres" else "the command line and the node need"
    return f"flashstock: {needs} the {extra} extra: pip install 'flashstock[{extra}]' (missing: {missing})"


def main() -> None:
    """Entry point of the ``flashstock`` console script (and of ``python -m flashstock.server``)."""
    if sys.argv[1:] == ["--version"]:
        print(f"flashstock {version()}")
        return
    try:
        from flashstock.server.cli.app import app

        app()
    except ImportError as exc:
        # The commands import some server dependencies only when they run
        # (sqlalchemy for the ledger, for one): those are caught here too.
        missing = missing_dependency(exc)
        if missing is None:
            raise
        print(what_to_install(missing), file=sys.stderr)
        raise SystemExit(1) from None
