"""The SQL ledger: one code path (SQLAlchemy Core) for SQLite and PostgreSQL.

It holds what must survive the loss of Redis: SKU definitions, every
deduction with its state, the persisters' cursors, shard epochs and rebuild
generations. Writes come from the persister (the shard log, in batches, each
batch with its cursor in one transaction) and from the rebuild (a generation
bump); reads from the rebuild and the reports.

The calls here are blocking; the node runs them in a thread, off the event
loop.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from flashstock.client.errors import FlashstockError
from flashstock.server.ledger._audit import AuditRecord, record_of_row, row_of_entry
from flashstock.server.ledger._changes import SkuChange
from flashstock.server.ledger._schema import (
    STATES,
    admin_requests,
    audit,
    deductions,
    incidents,
    ledger_meta,
    persister_cursors,
    sale_seconds,
    shard_epochs,
    shard_generations,
    skus,
)

HEAD = "0007"
"""The schema revision this code reads and writes."""


class LedgerError(FlashstockError):
    """The ledger cannot be used, or refused a write: the root of the ledger's errors.

    Raised as itself, the ledger cannot be used (a database that cannot be
    reached, is no ledger, or has another schema): the message names the
    setting or file to fix. Its subclasses are writes the ledger refused
    because a newer writer superseded them; nothing was written.
    """

    reason = "LEDGER"


class Fenced(LedgerError):
    """A write carried an epoch lower than the shard's: a newer owner exists."""

    reason = "FENCED"


class StaleGeneration(LedgerError):
    """Log entries read before a rebuild of their shard began: their log is gone,
    and the rebuilt state does not hold them, so neither may the ledger."""

    reason = "STALE_GENERATION"


def sqlite_url(data_dir: str | Path) -> str:
    """The embedded default: ``<data_dir>/ledger.sqlite3``."""
    return f"sqlite:///{Path(data_dir).expanduser().resolve() / 'ledger.sqlite3'}"


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Per connection, and none of them writes to the file: a database that
    # turns out not to be a ledger is left as it was. (WAL, which is written
    # into the file, is set by Ledger.open once the schema is known.)
    cursor = dbapi_connection.cursor()
    # FULL: a commit is on disk before durable mode acknowledges it.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``)."""
    try:
        parsed = sa.engine.make_url(url)
    except Exception as exc:  # noqa: BLE001 - reported naming the setting
        raise LedgerError(f"ledger: {url!r} is not a database URL ({exc})") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise LedgerError("ledger: an SQLite ledger needs a file path (sqlite:///path/ledger.sqlite3)")
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": 10})
        sa.event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.get_driver_name() not in ("psycopg", "psycopg2"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        return sa.create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=5)
    raise LedgerError(
        f"ledger: {parsed.get_backend_name()!r} is not supported; use sqlite:/// or postgresql+psycopg://"
    )


def _alembic_config(connection: Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("flashstock.server.ledger") / "migrations"))
    config.attributes["connection"] = connection
    return config


def schema_revision(engine: Engine) -> str | None:
    """The ledger's schema revision; None for an empty database.

    Raises :class:`LedgerError` for a database that cannot be reached, is not
    a database, or holds tables that are not a flashstock ledger's.
    """
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            if "alembic_version" in tables:
                return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    except sa.exc.OperationalError as exc:  # a DatabaseError too: test it first
        raise LedgerError(
            f"ledger: cannot open {engine.url.render_as_string(hide_password=True)}: {exc.orig}"
        ) from None
    except sa.exc.DatabaseError as exc:
        if isinstance(exc.orig, sqlite3.DatabaseError):
            raise LedgerError(
                f"ledger: {engine.url.database} is not an SQLite database (or is corrupted); nothing was changed"
            ) from None
        raise LedgerError(
            f"ledger: cannot open {engine.url.render_as_string(hide_password=True)}: {exc.orig}"
        ) from None
    if tables:
        raise LedgerError(
            f"ledger: {engine.url.render_as_string(hide_password=True)} holds tables that are not a flashstock "
            f"ledger's ({', '.join(sorted(tables)[:5])}); nothing was changed"
        )
    return None


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Run the migrations up to HEAD; returns (revision before, after).

    Several processes may do it at once (a node's workers, nodes starting
    together on an empty database): the migrations run under a lock held to
    the end of their transaction, and whoever gets it later finds HEAD.
    """
    from alembic import command

    before = schema_revision(engine)
    if before not in (None, HEAD) and before not in _known_revisions():
        raise LedgerError(f"ledger: schema revision {before!r} is unknown to this flashstock; upgrade flashstock first")
    with engine.begin() as conn:
        _lock_migrations(conn)
        before = _revision(conn)  # again, under the lock: another process may have migrated meanwhile
        if before != HEAD:
            command.upgrade(_alembic_config(conn), "head")
    return before, HEAD


_MIGRATION_LOCK = 0x666C6173
"""PostgreSQL advisory lock key of ledger migrations ("flas")."""


def _lock_migrations(conn: Connection) -> None:
    """Take the ledger's migration lock, held until ``conn``'s transaction ends."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    else:
        # SQLite: the database's write lock (which also makes the DDL one transaction).
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _revision(conn: Connection) -> str | None:
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def _known_revisions() -> set[str]:
    folder = resources.files("flashstock.server.ledger") / "migrations" / "versions"
    return {p.name.split("_", 1)[0] for p in folder.iterdir() if p.name.endswith(".py")}


INCIDENT_KINDS = ("failover", "handoff", "rebuild", "fenced_write", "reconcile_difference", "session_lost")
"""What a node records in the ``incidents`` table."""
INCIDENT_DETAIL_CHARS = 1024
"""Longest ``detail`` of an incident (the column's size); a longer one is cut."""


@dataclass(frozen=True, slots=True)
class Incident:
    """One thing that went wrong on a node, as the ledger keeps it."""

    at_ms: int
    """When it happened (unix ms, the node's clock)."""
    kind: str
    """One of :data:`INCIDENT_KINDS`."""
    node: str
    """The node that recorded it."""
    shard: int
    """The shard it is about; -1 when not about one shard."""
    detail: str
    """What happened, for a person."""


@dataclass
class SkuState:
    """A SKU as the ledger knows it, with its counters for the current sale."""

    sku_id: str
    shard: int
    total: int
    per_user_limit: int
    max_per_request: int
    sale_start_ms: int
    sale_end_ms: int
    paused: bool
    mode: str
    sale: int
    goal_units: int = 0
    goal_sellout_ms: int = 0
    goal_buyers: int = 0
    unit_price_minor: int = 0
    currency: str = ""
    user_rate_per_s: int = 0
    require_token: bool = False
    held: int = 0
    confirmed: int = 0
    released: int = 0
    expired: int = 0
    buyers: int = 0
    first_ms: int = 0
    last_ms: int = 0

    @property
    def available(self) -> int:
        """Units still for sale: total less held and confirmed."""
        return self.total - self.held - self.confirmed


@dataclass
class Record:
    """A deduction as the rebuild reinstalls it in Redis."""

    request_id: str
    sku_id: str
    user_id: str
    qty: int
    kind: str
    state: str
    closer_id: str
    sale: int
    taken_ms: int
    expires_ms: int
    batch_fp: str = ""
    """BatchDeduct items: the fingerprint of the batch's items."""
    updated_ms: int = 0
    """When the state last changed: a Confirm's or Release's own record is of then."""


@dataclass
class ShardSnapshot:
    """Everything Redis needs to serve a shard again."""

    shard: int
    generation: int
    skus: list[SkuState] = field(default_factory=list)
    user_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    epoch: int = 0
    """The highest owner epoch the ledger has seen for the shard (0: none):
    a rebuilt Redis fences off owners older than it, as the ledger does."""
    admin: list[tuple[str, str, str, int]] = field(default_factory=list)
    """Admin calls applied within the retry window: (sku_id, request_id, fingerprint, applied_ms)."""


_STATE_OF = STATES
_FORWARD = {"C": "confirmed", "R": "released", "X": "expired"}


class Ledger:
    """The ledger behind one URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        self._dialect = self.engine.dialect.name

    def open(self, create: bool = True) -> None:
        """Check the schema: create a fresh ledger (``create``), refuse any other revision."""
        revision = schema_revision(self.engine)
        if revision is None and create:
            upgrade(self.engine)
            self._use_wal()
            return
        if revision is None:
            raise LedgerError("ledger: the database is empty; run `flashstock ledger upgrade`")
        if revision != HEAD:
            if revision in _known_revisions():
                raise LedgerError(
                    f"ledger: schema revision {revision} is older than {HEAD}; run `flashstock ledger upgrade`"
                )
            raise LedgerError(f"ledger: schema revision {revision!r} is unknown to this flashstock; refusing to start")
        self._use_wal()

    def _use_wal(self) -> None:
        # WAL: readers (rebuild, reports, other workers) never block the
        # persister. It is a property of the file, set once it is ours.
        if self._dialect != "sqlite":
            return
        # Switching the journal needs the file to itself, and SQLite answers
        # "locked" at once (no busy wait) while another process of a node
        # starting beside this one migrates or switches it: try again.
        deadline = time.monotonic() + 30
        while True:
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                return
            except sa.exc.OperationalError as exc:
                if "locked" not in str(exc.orig) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def identity(self) -> str:
        """The ledger's identity: a UUID made with its schema (``ledger_meta.ledger_id``).

        Nodes bind it in Redis and etcd, so that nodes working on one Redis
        or in one cluster are seen to write into one ledger.
        """
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(ledger_meta.c.value).where(ledger_meta.c.key == "ledger_id")).scalar()
        if value is None:
            raise LedgerError("ledger: it has no identity (ledger_meta.ledger_id); run `flashstock ledger upgrade`")
        return str(value)

    def close(self) -> None:
        """Close every connection."""
        self.engine.dispose()

    def _insert(self, table: sa.Table) -> Any:
        if self._dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(table)
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)

    # -- writes ----------------------------------------------------------------

    def check_epoch(self, conn: Connection, shard: int, epoch: int, now_ms: int, owner: str | None = None) -> None:
        """Raise :class:`Fenced` when the shard has seen a higher epoch; record ``epoch`` (and ``owner``)."""
        row = {"shard": shard, "epoch": epoch, "updated_ms": now_ms, **({"owner": owner} if owner is not None else {})}
        stmt = self._insert(shard_epochs).values(**row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["shard"],
            set_={k: v for k, v in row.items() if k != "shard"},
            where=shard_epochs.c.epoch <= epoch,
        )
        # No row back: the WHERE refused the update. (Not rowcount: psycopg 3
        # reports -1 for an INSERT once SQLAlchemy has closed its cursor.)
        if conn.execute(stmt.returning(shard_epochs.c.epoch)).first() is None:
            raise Fenced(f"shard {shard}: epoch {epoch} is stale", shard=shard, epoch=epoch)

    def persist(
        self,
        shard: int,
        generation: int,
        entries: Sequence[tuple[str, dict[str, str]]],
        epoch: int = 0,
    ) -> None:
        """Apply log entries ``(stream_id, fields)`` of a shard and move its cursor, in one transaction.

        Idempotent: deductions are inserted once by request id, and states
        only move forward (held -> confirmed | released | expired).
        ``generation`` is the shard's rebuild generation the entries were
        read under; raises :class:`StaleGeneration` when a rebuild began since.
        """
        if not entries:
            return
        last_id = entries[-1][0]
        now_ms = int(last_id.split("-")[0])
        inserts: list[dict[str, Any]] = []
        updates: list[tuple[str, dict[str, Any]]] = []
        sku_ops: list[tuple[str, str, dict[str, str], int]] = []
        for stream_id, f in entries:
            at_ms = int(stream_id.split("-")[0])
            event = f["t"]
            if event in ("D", "H", "B"):
                inserts.append(
                    {
                        "request_id": f["r"],
                        "sku_id": f["k"],
                        "user_id": f["u"],
                        "qty": int(f["q"]),
                        "kind": event,
                        "state": "held" if event == "H" else "confirmed",
                        "batch_fp": f.get("b", ""),
                        "closer_id": "",
                        "sale": int(f.get("s", 0)),
                        "shard": shard,
                        "epoch": epoch,
                        # The record's own time (entries of older nodes lack it: the entry's).
                        "taken_ms": int(f.get("w", at_ms)),
                        "expires_ms": int(f.get("e", 0)),
                        "updated_ms": at_ms,
                    }
                )
            elif event == "G":  # the first entry of a rebuilt log: nothing to apply
                continue
            elif event in _FORWARD:
                updates.append(
                    (
                        _FORWARD[event],
                        {"sku": f["k"], "rid": f["r"], "closer": f.get("c", ""), "at": at_ms, "epoch": epoch},
                    )
                )
            else:
                sku_ops.append((stream_id, event, f, at_ms))
        with self.engine.begin() as conn:
            self.check_epoch(conn, shard, epoch, now_ms)
            # A rebuild counts its generation before it reads the ledger: if
            # one began since these entries were read, refuse them (the row
            # lock makes a rebuild starting now wait for this commit).
            current = conn.execute(
                sa.select(shard_generations.c.generation).where(shard_generations.c.shard == shard).with_for_update()
            ).scalar()
            if current is not None and current > generation:
                raise StaleGeneration(
                    f"shard {shard}: entries of generation {generation}, rebuilt since (generation {current})",
                    shard=shard,
                )
            for stream_id, event, f, at_ms in sku_ops:
                self._apply_sku_op(conn, shard, event, f, at_ms)
                # The change's audit record, in the change's transaction; once per log entry.
                row = row_of_entry(shard, stream_id, f, at_ms)
                if row is not None:
                    self._insert_audit(conn, [row])
            if inserts:
                conn.execute(
                    self._insert(deductions).on_conflict_do_nothing(index_elements=["sku_id", "request_id"]), inserts
                )
            for state in set(s for s, _ in updates):
                rows = [params for s, params in updates if s == state]
                conn.execute(
                    deductions.update()
                    .where(
                        deductions.c.sku_id == sa.bindparam("sku"),
                        deductions.c.request_id == sa.bindparam("rid"),
                        deductions.c.state == "held",
                    )
                    .values(
                        state=state,
                        closer_id=sa.bindparam("closer"),
                        updated_ms=sa.bindparam("at"),
                        epoch=sa.bindparam("epoch"),
                    ),
                    rows,
                )
            cursor = self._insert(persister_cursors).values(
                shard=shard, generation=generation, last_id=last_id, updated_ms=now_ms
            )
            conn.execute(
                cursor.on_conflict_do_update(
                    index_elements=["shard"], set_={"generation": generation, "last_id": last_id, "updated_ms": now_ms}
                )
            )

    def _apply_sku_op(self, conn: Connection, shard: int, event: str, f: dict[str, str], at_ms: int) -> None:
        sku_id = f["k"]
        change = SkuChange.of_log_event(event)
        if f.get("r"):  # the admin call itself, for its resends after a Redis loss (entries of older nodes lack it)
            row = {"sku_id": sku_id, "request_id": f["r"], "fingerprint": f.get("f", ""), "applied_ms": at_ms}
            conn.execute(
                self._insert(admin_requests)
                .values(**row)
                .on_conflict_do_nothing(index_elements=["sku_id", "request_id"])
            )
        if change is SkuChange.PUT:
            row = {
                "sku_id": sku_id,
                "shard": shard,
                "total": int(f["q"]),
                "per_user_limit": int(f["lim"]),
                "max_per_request": int(f["maxq"]),
                "sale_start_ms": int(f["start"]),
                "sale_end_ms": int(f["end"]),
                "paused": False,
                "mode": f["mode"],
                "sale": int(f["s"]),
                "put_ms": at_ms,
                "updated_ms": at_ms,
                # Entries of nodes from before goals and price have none.
                "goal_units": int(f.get("gu") or 0),
                "goal_sellout_ms": int(f.get("gs") or 0),
                "goal_buyers": int(f.get("gb") or 0),
                "unit_price_minor": int(f.get("pr") or 0),
                "currency": f.get("cur", ""),
                # Likewise the anti-scalping settings.
                "user_rate_per_s": int(f.get("ur") or 0),
                "require_token": f.get("rt") == "1",
            }
            stmt = self._insert(skus).values(**row)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["sku_id"], set_={k: v for k, v in row.items() if k != "sku_id"}
                )
            )
        elif change is SkuChange.ADJUST:  # the new total, absolute: applying it twice changes nothing
            conn.execute(skus.update().where(skus.c.sku_id == sku_id).values(total=int(f["q"]), updated_ms=at_ms))
        elif change in (SkuChange.PAUSE, SkuChange.RESUME):
            paused = change is SkuChange.PAUSE
            conn.execute(skus.update().where(skus.c.sku_id == sku_id).values(paused=paused, updated_ms=at_ms))

    def _insert_audit(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        conn.execute(self._insert(audit).on_conflict_do_nothing(index_elements=["source"]), list(rows))

    def copy_audit(self, rows: Sequence[dict[str, Any]]) -> None:
        """Keep audit rows made elsewhere (shard changes, from etcd), in one transaction; a row whose
        ``source`` is kept already is left as it is, so copying twice keeps one."""
        if rows:
            with self.engine.begin() as conn:
                self._insert_audit(conn, rows)

    def audit(self, sku_id: str | None = None, since_ms: int | None = None, limit: int = 100) -> list[AuditRecord]:
        """The audit trail, newest first: at most ``limit`` records, of ``sku_id`` (None: every one),
        made at ``since_ms`` or later (None: ever)."""
        c = audit.c
        query = sa.select(audit).order_by(c.at_ms.desc(), c.id.desc()).limit(limit)
        if sku_id is not None:
            query = query.where(c.sku_id == sku_id)
        if since_ms is not None:
            query = query.where(c.at_ms >= since_ms)
        with self.engine.connect() as conn:
            return [record_of_row(r._mapping) for r in conn.execute(query)]

    def claim_epoch(self, shard: int, epoch: int, owner: str, now_ms: int) -> str:
        """Record a new owner's ``epoch`` for ``shard`` before its duties run;
        raises :class:`Fenced` if the ledger has seen a higher one.

        Returns the owner recorded before ('' = none): another node's name
        means the shard changed hands (a failover, or a handoff)."""
        with self.engine.begin() as conn:
            before = conn.execute(sa.select(shard_epochs.c.owner).where(shard_epochs.c.shard == shard)).scalar()
            self.check_epoch(conn, shard, epoch, now_ms, owner)
        return before or ""

    def record_incident(self, kind: str, node: str, shard: int, detail: str, at_ms: int) -> None:
        """Keep an incident (``kind`` one of :data:`INCIDENT_KINDS`; ``shard`` -1 = none); a long detail is cut."""
        if kind not in INCIDENT_KINDS:
            raise ValueError(f"unknown incident kind {kind!r}; one of {', '.join(INCIDENT_KINDS)}")
        if len(detail) > INCIDENT_DETAIL_CHARS:
            detail = detail[: INCIDENT_DETAIL_CHARS - 3] + "..."
        row = {"at_ms": at_ms, "kind": kind, "node": node[:256], "shard": shard, "detail": detail}
        with self.engine.begin() as conn:
            conn.execute(incidents.insert().values(**row))

    def incidents(
        self, since_ms: int | None = None, until_ms: int | None = None, kinds: Iterable[str] | None = None
    ) -> list[Incident]:
        """The incidents at ``since_ms`` or later and before ``until_ms`` (None: no bound), of ``kinds``
        (None: all), oldest first."""
        c = incidents.c
        query = sa.select(c.at_ms, c.kind, c.node, c.shard, c.detail).order_by(c.at_ms, c.id)
        if since_ms is not None:
            query = query.where(c.at_ms >= since_ms)
        if until_ms is not None:
            query = query.where(c.at_ms < until_ms)
        if kinds is not None:
            query = query.where(c.kind.in_(list(kinds)))
        with self.engine.connect() as conn:
            return [Incident(r.at_ms, r.kind, r.node, r.shard, r.detail) for r in conn.execute(query)]

    def bump_generation(self, shard: int, now_ms: int) -> int:
        """The shard's next rebuild generation (counted: one per rebuild begun)."""
        with self.engine.begin() as conn:
            stmt = self._insert(shard_generations).values(shard=shard, generation=1, updated_ms=now_ms)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["shard"],
                    set_={"generation": shard_generations.c.generation + 1, "updated_ms": now_ms},
                )
            )
            return int(
                conn.execute(
                    sa.select(shard_generations.c.generation).where(shard_generations.c.shard == shard)
                ).scalar_one()
            )

    def put_sale_seconds(self, rows: Sequence[dict[str, Any]]) -> None:
        """Upsert a sale's per-second figures (``sale_seconds`` rows, whole), in one transaction.

        The figures in Redis only grow, and each row carries them all: writing
        a row again (a late flush, a retried round) leaves the latest.
        """
        if not rows:
            return
        key = ("sku_id", "sale", "second")
        with self.engine.begin() as conn:
            for chunk in iter_chunks(list(rows), 500):
                stmt = self._insert(sale_seconds)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=list(key),
                        set_={c.name: stmt.excluded[c.name] for c in sale_seconds.columns if c.name not in key},
                    ),
                    list(chunk),
                )

    # -- reads -----------------------------------------------------------------

    def sale_seconds(self, sku_id: str, sale: int | None = None) -> list[dict[str, Any]]:
        """A SKU's per-second sale figures (one sale's, or every sale's), by sale and second."""
        query = sa.select(sale_seconds).where(sale_seconds.c.sku_id == sku_id)
        if sale is not None:
            query = query.where(sale_seconds.c.sale == sale)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(sale_seconds.c.sale, sale_seconds.c.second))
            return [dict(row._mapping) for row in rows]

    def cursor(self, shard: int) -> tuple[int, str] | None:
        """(generation, last persisted stream id) of a shard's persister, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(persister_cursors.c.generation, persister_cursors.c.last_id).where(
                    persister_cursors.c.shard == shard
                )
            ).first()
        return (int(row[0]), row[1]) if row else None

    def cursors(self) -> dict[int, tuple[int, str]]:
        """Every shard's persister cursor: (generation, last persisted stream id)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(persister_cursors.c.shard, persister_cursors.c.generation, persister_cursors.c.last_id)
            )
            return {int(r.shard): (int(r.generation), r.last_id) for r in rows}

    def epochs(self) -> dict[int, tuple[int, str]]:
        """Each shard's highest recorded owner epoch and its owner."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(shard_epochs.c.shard, shard_epochs.c.epoch, shard_epochs.c.owner))
            return {int(r.shard): (int(r.epoch), r.owner) for r in rows}

    def generations(self) -> dict[int, int]:
        """Rebuilds begun per shard."""
        with self.engine.connect() as conn:
            return {
                int(s): int(g)
                for s, g in conn.execute(sa.select(shard_generations.c.shard, shard_generations.c.generation))
            }

    def sku_states(self, shard: int | None = None, sku_id: str | None = None) -> list[SkuState]:
        """SKUs with their counters for the current sale (all, one shard's, or one)."""
        query = sa.select(skus)
        if shard is not None:
            query = query.where(skus.c.shard == shard)
        if sku_id is not None:
            query = query.where(skus.c.sku_id == sku_id)
        with self.engine.connect() as conn:
            states = {
                r.sku_id: SkuState(
                    sku_id=r.sku_id,
                    shard=r.shard,
                    total=r.total,
                    per_user_limit=r.per_user_limit,
                    max_per_request=r.max_per_request,
                    sale_start_ms=r.sale_start_ms,
                    sale_end_ms=r.sale_end_ms,
                    paused=bool(r.paused),
                    mode=r.mode,
                    sale=r.sale,
                    goal_units=r.goal_units,
                    goal_sellout_ms=r.goal_sellout_ms,
                    goal_buyers=r.goal_buyers,
                    unit_price_minor=r.unit_price_minor,
                    currency=r.currency,
                    user_rate_per_s=r.user_rate_per_s,
                    require_token=bool(r.require_token),
                )
                for r in conn.execute(query.order_by(skus.c.sku_id))
            }
            if not states:
                return []
            d, s = deductions.c, skus.c
            joined = deductions.join(skus, sa.and_(d.sku_id == s.sku_id, d.sale == s.sale))
            counters = sa.select(d.sku_id, d.state, sa.func.sum(d.qty)).select_from(joined).group_by(d.sku_id, d.state)
            buyers = (
                sa.select(
                    d.sku_id, sa.func.count(sa.distinct(d.user_id)), sa.func.min(d.taken_ms), sa.func.max(d.taken_ms)
                )
                .select_from(joined)
                .where(d.state.in_(("held", "confirmed")))
                .group_by(d.sku_id)
            )
            if shard is not None:
                counters, buyers = counters.where(s.shard == shard), buyers.where(s.shard == shard)
            if sku_id is not None:
                counters, buyers = counters.where(s.sku_id == sku_id), buyers.where(s.sku_id == sku_id)
            for sku, state, units in conn.execute(counters):
                setattr(states[sku], state, int(units))
            for sku, count, first, last in conn.execute(buyers):
                states[sku].buyers, states[sku].first_ms, states[sku].last_ms = (
                    int(count),
                    int(first or 0),
                    int(last or 0),
                )
        return list(states.values())

    def snapshot(self, shard: int, generation: int, records_since_ms: int) -> ShardSnapshot:
        """A shard's state for a rebuild: SKUs and counters, per-user counts, and the
        records of requests taken or settled since ``records_since_ms`` plus every open hold."""
        snap = ShardSnapshot(shard=shard, generation=generation, skus=self.sku_states(shard=shard))
        d, s = deductions.c, skus.c
        with self.engine.connect() as conn:
            snap.epoch = int(
                conn.execute(sa.select(shard_epochs.c.epoch).where(shard_epochs.c.shard == shard)).scalar() or 0
            )
        joined = deductions.join(skus, sa.and_(d.sku_id == s.sku_id, d.sale == s.sale))
        with self.engine.connect() as conn:
            users = (
                sa.select(d.sku_id, d.user_id, sa.func.sum(d.qty))
                .select_from(joined)
                .where(s.shard == shard, s.per_user_limit > 0, d.state.in_(("held", "confirmed")))
                .group_by(d.sku_id, d.user_id)
            )
            for sku, user, units in conn.execute(users):
                snap.user_counts.setdefault(sku, {})[user] = int(units)
            rows = conn.execute(
                sa.select(deductions).where(
                    d.shard == shard,
                    sa.or_(d.taken_ms >= records_since_ms, d.updated_ms >= records_since_ms, d.state == "held"),
                )
            )
            snap.records = [
                Record(
                    r.request_id,
                    r.sku_id,
                    r.user_id,
                    r.qty,
                    r.kind,
                    r.state,
                    r.closer_id,
                    r.sale,
                    r.taken_ms,
                    r.expires_ms,
                    r.batch_fp,
                    r.updated_ms,
                )
                for r in rows
            ]
            a = admin_requests.c
            snap.admin = [
                (r.sku_id, r.request_id, r.fingerprint, int(r.applied_ms))
                for r in conn.execute(
                    sa.select(a.sku_id, a.request_id, a.fingerprint, a.applied_ms)
                    .select_from(admin_requests.join(skus, a.sku_id == s.sku_id))
                    .where(s.shard == shard, a.applied_ms >= records_since_ms)
                )
            ]
        return snap

    def deductions_of(self, request_ids: Iterable[str], sku_id: str | None = None) -> dict[str, dict[str, Any]]:
        """The ledger rows of these request ids, by request id (for tests and checks).

        An id's scope is its SKU: give ``sku_id`` where one id may key rows of several SKUs.
        """
        ids = list(request_ids)
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                query = sa.select(deductions).where(deductions.c.request_id.in_(ids[start : start + 500]))
                if sku_id is not None:
                    query = query.where(deductions.c.sku_id == sku_id)
                for row in conn.execute(query):
                    out[row.request_id] = dict(row._mapping)
        return out


def letter_state(letter: str) -> str:
    """A state's name from its letter in Redis records."""
    return _STATE_OF[letter]


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``items`` in slices of ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
