"""Operator views of the ledger, and opening it for them without side effects.

The commands ``flashstock ledger upgrade|status``, ``flashstock reconcile`` and
``flashstock sales report`` read the ledger through this module:

- :func:`probe` tells what is behind a ledger URL (nothing yet, an empty
  database, a flashstock ledger at some revision) before anything is written:
  an SQLite file that is not a database, or a database of another
  application, is refused untouched, byte for byte.
- :func:`checked_upgrade` runs the migrations only after such a probe;
  :func:`open_for_reading` opens an existing ledger at the current revision
  and never creates one.
- :func:`sales_report`, :func:`shard_status`, :func:`persisted_cursors` and
  :func:`sku_shards` are read-only queries on the tables of :mod:`._schema`.

Times in the ledger are unix ms on Redis's clock.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from flashstock.server.ledger._ledger import (
    HEAD,
    Ledger,
    LedgerError,
    _known_revisions,
    create_engine,
    schema_revision,
    upgrade,
)
from flashstock.server.ledger._schema import deductions, persister_cursors, shard_epochs, shard_generations, skus

CONNECT_TIMEOUT_S = 5
"""How long an operator command waits to connect to PostgreSQL before it gives up."""

_SQLITE_MAGIC = b"SQLite format 3\x00"


# -- opening -------------------------------------------------------------------


def _shown(url: sa.engine.URL | str) -> str:
    if isinstance(url, str):
        try:
            parsed = sa.engine.make_url(url)
        except Exception:  # noqa: BLE001 - shown as given
            return url
        url = parsed
    return url.render_as_string(hide_password=True)


def operator_url(url: str) -> str:
    """``url`` with a connect timeout for PostgreSQL (an unreachable host fails in seconds, not minutes)."""
    try:
        parsed = sa.engine.make_url(url)
    except Exception as exc:  # noqa: BLE001 - reported naming the setting
        raise LedgerError(f"ledger: {url!r} is not a database URL ({exc})") from None
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        parsed = parsed.update_query_dict({"connect_timeout": str(CONNECT_TIMEOUT_S)})
    return parsed.render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    """The file of an ``sqlite:///`` URL, None for other engines."""
    try:
        parsed = sa.engine.make_url(url)
    except Exception as exc:  # noqa: BLE001 - reported naming the setting
        raise LedgerError(f"ledger: {url!r} is not a database URL ({exc})") from None
    if parsed.get_backend_name() != "sqlite":
        return None
    if parsed.database in (None, "", ":memory:"):
        raise LedgerError("ledger: an SQLite ledger needs a file path (sqlite:///path/ledger.sqlite3)")
    return Path(parsed.database)


@dataclass(frozen=True)
class Probe:
    """What is behind a ledger URL, found without writing anything."""

    exists: bool
    """False: an SQLite file that is not there yet (PostgreSQL databases always "exist")."""
    revision: str | None
    """The schema revision; None for an empty database (or no file)."""


def _tables_revision(tables: set[str], read_version: Callable[[], str | None], where: str) -> str | None:
    if "alembic_version" in tables:
        return read_version()
    if tables:
        raise LedgerError(
            f"ledger: {where} holds tables that are not a flashstock ledger's "
            f"({', '.join(sorted(tables)[:5])}); nothing was changed"
        )
    return None


def _probe_sqlite(path: Path) -> Probe:
    if not path.exists():
        return Probe(exists=False, revision=None)
    if path.is_dir():
        raise LedgerError(f"ledger: {path} is a directory, not an SQLite file; nothing was changed")
    try:
        with path.open("rb") as f:
            header = f.read(100)
    except OSError as exc:
        raise LedgerError(f"ledger: cannot read {path}: {exc.strerror}") from None
    if not header:  # an empty file is an empty SQLite database
        return Probe(exists=True, revision=None)
    if not header.startswith(_SQLITE_MAGIC) or len(header) < 100:
        raise LedgerError(f"ledger: {path} is not an SQLite database (or is corrupted); nothing was changed")
    if header[18] == 2:
        # Already in WAL mode: the ledger's engine changes nothing in the file
        # by opening it (its connect hook asks for WAL); it reads the revision.
        engine = create_engine(f"sqlite:///{path}")
        try:
            return Probe(exists=True, revision=schema_revision(engine))
        finally:
            engine.dispose()
    # A rollback-journal file: opened read-only, since the ledger's engine would
    # switch it to WAL (a write to its header) before looking at its tables.
    try:
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise LedgerError(f"ledger: cannot open {path}: {exc}") from None
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = _tables_revision(
            tables, lambda: conn.execute("SELECT version_num FROM alembic_version").fetchone()[0], str(path)
        )
    except sqlite3.DatabaseError:
        raise LedgerError(f"ledger: {path} is not an SQLite database (or is corrupted); nothing was changed") from None
    finally:
        conn.close()
    return Probe(exists=True, revision=revision)


def probe(url: str) -> Probe:
    """What is behind ``url``; raises :class:`LedgerError` for a file or database that
    is not a flashstock ledger, or that cannot be reached. Writes nothing."""
    path = sqlite_path(url)
    if path is not None:
        return _probe_sqlite(path.expanduser())
    engine: Engine | None = None
    try:
        engine = create_engine(operator_url(url))
        return Probe(exists=True, revision=schema_revision(engine))
    except LedgerError as exc:  # named as the operator gave it, without our connect timeout
        raise LedgerError(str(exc).replace(_shown(engine.url) if engine else url, _shown(url))) from None
    except Exception as exc:  # noqa: BLE001 - a driver's own error (or a missing driver), on one line
        raise LedgerError(f"ledger: cannot open {_shown(url)}: {' '.join(str(exc).split())}") from None
    finally:
        if engine is not None:
            engine.dispose()


def checked_upgrade(url: str) -> tuple[str | None, str]:
    """Migrate the ledger at ``url`` to HEAD; returns (revision before, after).

    Refuses, changing nothing, a file or database that is not a flashstock
    ledger, and a revision this flashstock does not know (a newer one's).
    Creates a missing SQLite file (and its folder).
    """
    found = probe(url)
    if found.revision is not None and found.revision not in _known_revisions():
        raise LedgerError(
            f"ledger: {_shown(url)} is at schema revision {found.revision!r}, unknown to this flashstock "
            f"(a newer flashstock's, or another application's database); nothing was changed"
        )
    if found.revision == HEAD:
        return HEAD, HEAD
    path = sqlite_path(url)
    if path is not None and not found.exists:
        folder = next((p for p in path.expanduser().resolve().parents if p.exists()), None)
        if folder is not None and not os.access(folder, os.W_OK | os.X_OK):
            raise LedgerError(f"ledger: cannot create {path}: {folder} is not writable")
    try:
        engine = create_engine(operator_url(url))
    except OSError as exc:
        raise LedgerError(f"ledger: cannot create {path or _shown(url)}: {exc.strerror or exc}") from None
    try:
        return upgrade(engine)
    finally:
        engine.dispose()


def open_for_reading(url: str) -> Ledger:
    """The ledger at ``url``, which must exist at revision HEAD; never creates one."""
    found = probe(url)
    if not found.exists:
        raise LedgerError(f"ledger: there is no ledger at {sqlite_path(url)} (a node creates it at its first start)")
    if found.revision is None:
        raise LedgerError(f"ledger: {_shown(url)} is empty; run `flashstock ledger upgrade`")
    if found.revision != HEAD:
        if found.revision in _known_revisions():
            raise LedgerError(
                f"ledger: schema revision {found.revision} is older than {HEAD}; run `flashstock ledger upgrade`"
            )
        raise LedgerError(f"ledger: schema revision {found.revision!r} is unknown to this flashstock")
    ledger = Ledger(operator_url(url))
    try:
        ledger.open(create=False)
    except BaseException:
        ledger.close()
        raise
    return ledger


# -- queries -------------------------------------------------------------------


def sku_shards(engine: Engine, sku_id: str | None = None) -> dict[str, int]:
    """Every SKU of the ledger (or just ``sku_id``) with the shard it was persisted in."""
    query = sa.select(skus.c.sku_id, skus.c.shard)
    if sku_id is not None:
        query = query.where(skus.c.sku_id == sku_id)
    with engine.connect() as conn:
        return {row.sku_id: int(row.shard) for row in conn.execute(query)}


def persisted_cursors(engine: Engine) -> dict[int, str]:
    """Per shard, the last log entry id the ledger holds (shards never persisted are absent)."""
    with engine.connect() as conn:
        return {
            int(s): last for s, last in conn.execute(sa.select(persister_cursors.c.shard, persister_cursors.c.last_id))
        }


@dataclass(frozen=True)
class ShardStatus:
    """A shard as the ledger sees it (``ledger status``)."""

    shard: int
    cursor: str | None
    """Last log entry id persisted; None when nothing was."""
    cursor_generation: int | None
    """The Redis generation of the log the cursor belongs to."""
    cursor_ms: int
    """When the cursor last moved (the entry's time, Redis clock); 0 = never."""
    rebuilds: int
    """Rebuilds of the shard's Redis state begun so far (its rebuild generation)."""
    epoch: int | None
    """Highest owner epoch the ledger has seen for the shard."""


def shard_status(engine: Engine) -> list[ShardStatus]:
    """Every shard the ledger knows anything about, by number."""
    with engine.connect() as conn:
        cursors = {int(r.shard): r for r in conn.execute(sa.select(persister_cursors))}
        gens = {
            int(s): int(g)
            for s, g in conn.execute(sa.select(shard_generations.c.shard, shard_generations.c.generation))
        }
        epochs = {int(s): int(e) for s, e in conn.execute(sa.select(shard_epochs.c.shard, shard_epochs.c.epoch))}
    out = []
    for shard in sorted(set(cursors) | set(gens) | set(epochs)):
        c = cursors.get(shard)
        out.append(
            ShardStatus(
                shard=shard,
                cursor=c.last_id if c is not None else None,
                cursor_generation=int(c.generation) if c is not None else None,
                cursor_ms=int(c.updated_ms) if c is not None else 0,
                rebuilds=gens.get(shard, 0),
                epoch=epochs.get(shard),
            )
        )
    return out


def ledger_counts(engine: Engine) -> tuple[int, int]:
    """(SKUs, deductions) in the ledger, all sales."""
    with engine.connect() as conn:
        n_skus = conn.execute(sa.select(sa.func.count()).select_from(skus)).scalar_one()
        n_deductions = conn.execute(sa.select(sa.func.count()).select_from(deductions)).scalar_one()
    return int(n_skus), int(n_deductions)


@dataclass
class SkuSales:
    """The current sale of one SKU, from the ledger (``sales report``)."""

    sku_id: str
    shard: int
    sale: int
    """The sale number (+1 on every put); earlier sales are not counted."""
    mode: str
    total: int
    """Units put on sale, after adjustments."""
    confirmed: int = 0
    """Units confirmed (sold for good): Deducts, and Holds confirmed."""
    held: int = 0
    """Units in open holds."""
    buyers: int = 0
    """Distinct users with confirmed or held units."""
    holds: int = 0
    """Holds taken (kind H), whatever became of them."""
    holds_confirmed: int = 0
    holds_expired: int = 0
    holds_released: int = 0
    holds_open: int = 0
    first_sale_ms: int = 0
    """When the first unit still handed out (confirmed or held) was taken; 0 = none."""
    last_sale_ms: int = 0
    """When the last unit still handed out was taken; 0 = none."""

    @property
    def available(self) -> int:
        """Units still for sale: total less confirmed and held."""
        return self.total - self.confirmed - self.held


_HOLD_FIELD = {
    "confirmed": "holds_confirmed",
    "expired": "holds_expired",
    "released": "holds_released",
    "held": "holds_open",
}


def sales_report(engine: Engine, sku_id: str | None = None) -> list[SkuSales]:
    """Per SKU (all, or ``sku_id``), its current sale as the ledger holds it, by SKU id."""
    d, s = deductions.c, skus.c
    query = sa.select(s.sku_id, s.shard, s.sale, s.mode, s.total).order_by(s.sku_id)
    if sku_id is not None:
        query = query.where(s.sku_id == sku_id)
    current = deductions.join(skus, sa.and_(d.sku_id == s.sku_id, d.sale == s.sale))
    handed_out = d.state.in_(("held", "confirmed"))
    units = (
        sa.select(d.sku_id, d.state, sa.func.sum(d.qty))
        .select_from(current)
        .where(handed_out)
        .group_by(d.sku_id, d.state)
    )
    holds = (
        sa.select(d.sku_id, d.state, sa.func.count())
        .select_from(current)
        .where(d.kind == "H")
        .group_by(d.sku_id, d.state)
    )
    buyers = (
        sa.select(d.sku_id, sa.func.count(sa.distinct(d.user_id)), sa.func.min(d.taken_ms), sa.func.max(d.taken_ms))
        .select_from(current)
        .where(handed_out)
        .group_by(d.sku_id)
    )
    if sku_id is not None:
        units, holds, buyers = (q.where(d.sku_id == sku_id) for q in (units, holds, buyers))
    with engine.connect() as conn:
        rows = {
            r.sku_id: SkuSales(sku_id=r.sku_id, shard=int(r.shard), sale=int(r.sale), mode=r.mode, total=int(r.total))
            for r in conn.execute(query)
        }
        if not rows:
            return []
        for sku, state, qty in conn.execute(units):
            if state == "confirmed":
                rows[sku].confirmed = int(qty)
            else:
                rows[sku].held = int(qty)
        for sku, state, count in conn.execute(holds):
            row = rows[sku]
            row.holds += int(count)
            setattr(row, _HOLD_FIELD[state], int(count))
        for sku, count, first, last in conn.execute(buyers):
            rows[sku].buyers, rows[sku].first_sale_ms, rows[sku].last_sale_ms = (
                int(count),
                int(first or 0),
                int(last or 0),
            )
    return list(rows.values())
