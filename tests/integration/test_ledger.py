"""The SQL ledger on both engines: a real SQLite file and a real PostgreSQL database.

Every test runs twice through ``engine_url`` (``[sqlite]`` and
``[postgresql]``), each time on an empty database of its own. Log entries
are built as the Lua scripts write them (``server/lua/_lib.lua``
``log_event``, ``put_sku.lua``, ``adjust_sku.lua``, ``rebuild.lua``); what
the ledger made of them is read back with plain SQL, not through the reads
under test.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from flashstock.server.ledger import HEAD, Fenced, Ledger, LedgerError, StaleGeneration, schema_revision, upgrade
from flashstock.server.ledger._schema import deductions, metadata, persister_cursors, shard_epochs, skus
from flashstock.server.local.procs import free_port

SHARD = 3
T0 = 1_700_000_000_000
"""A Redis-clock time (unix ms) the made-up logs start at."""


class Log:
    """One shard's log as the scripts write it: ``(stream id, fields)`` entries, ids increasing."""

    def __init__(self, start_ms: int = T0) -> None:
        self.ms = start_ms
        self._taken: dict[str, dict[str, str]] = {}

    def _entry(self, fields: dict[str, Any], at_ms: int | None = None) -> tuple[str, dict[str, str]]:
        self.ms = at_ms if at_ms is not None else self.ms + 1
        return f"{self.ms}-0", {k: str(v) for k, v in fields.items()}

    def put(
        self,
        sku: str,
        total: int,
        *,
        lim: int = 0,
        maxq: int = 0,
        start: int = 0,
        end: int = 0,
        mode: str = "fast",
        sale: int = 1,
        **goals: Any,
    ) -> tuple[str, dict[str, str]]:
        """``goals``: the fields put_sku.lua adds (gu, gs, gb, pr, cur); an entry of a node from before has none."""
        return self._entry(
            {
                "t": "P",
                "k": sku,
                "q": total,
                "lim": lim,
                "maxq": maxq,
                "start": start,
                "end": end,
                "mode": mode,
                "s": sale,
                **goals,
            }
        )

    def adjust(self, sku: str, total: int) -> tuple[str, dict[str, str]]:
        return self._entry({"t": "A", "k": sku, "q": total})

    def pause(self, sku: str) -> tuple[str, dict[str, str]]:
        return self._entry({"t": "Z", "k": sku})

    def resume(self, sku: str) -> tuple[str, dict[str, str]]:
        return self._entry({"t": "U", "k": sku})

    def generation(self, gen: int) -> tuple[str, dict[str, str]]:
        return self._entry({"t": "G", "q": gen})

    def take(
        self,
        kind: str,
        rid: str,
        sku: str,
        user: str,
        qty: Any = 1,
        *,
        sale: int = 1,
        expires: int = 0,
        at_ms: int | None = None,
    ) -> tuple[str, dict[str, str]]:
        """A Deduct ('D') or Hold ('H')."""
        fields = {"t": kind, "r": rid, "k": sku, "u": user, "q": qty, "e": expires, "s": sale, "c": ""}
        self._taken[rid] = {k: str(v) for k, v in fields.items()}
        return self._entry(fields, at_ms)

    def settle(self, event: str, rid: str, closer: str = "") -> tuple[str, dict[str, str]]:
        """Confirm ('C'), release ('R') or expiry ('X') of hold ``rid``: every field, as log_event writes it."""
        return self._entry({**self._taken[rid], "t": event, "c": closer})


@pytest.fixture
def ledger(engine_url: str):
    """An opened (migrated) ledger on the test's empty database."""
    led = Ledger(engine_url)
    led.open()
    try:
        yield led
    finally:
        led.close()


def rows(led: Ledger, table: sa.Table) -> list[dict[str, Any]]:
    """Every row of ``table``, in primary-key order, read with plain SQL."""
    with led.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table).order_by(*table.primary_key.columns))]


def by_id(led: Ledger) -> dict[str, dict[str, Any]]:
    return {r["request_id"]: r for r in rows(led, deductions)}


def table_names(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


# -- the schema ---------------------------------------------------------------------------------------------


def _default(text: str | None) -> str | None:
    """A reflected server default without quoting and casts: "'0'::bigint" -> "0"."""
    if text is None:
        return None
    text = re.sub(r"::[a-z ]+$", "", text.strip())
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == "'" else text


def _expected_default(column: sa.Column, dialect: sa.Dialect) -> str | None:
    if column is column.table.autoincrement_column and dialect.name == "postgresql":
        # An INTEGER primary key without autoincrement=False is created SERIAL:
        # by the metadata as by the migration.
        return f"nextval('{column.table.name}_{column.name}_seq'::regclass)"
    if column.server_default is None:
        return None
    arg = column.server_default.arg
    return arg if isinstance(arg, str) else str(arg.compile(dialect=dialect))


def test_migrated_schema_equals_the_metadata(ledger):
    engine = ledger.engine
    inspector = sa.inspect(engine)
    dialect = engine.dialect

    assert table_names(engine) == set(metadata.tables) | {"alembic_version"}
    for table in metadata.sorted_tables:
        reflected = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert list(reflected) == [c.name for c in table.columns], table.name
        for column in table.columns:
            got = reflected[column.name]
            where = f"{table.name}.{column.name}"
            assert got["type"].compile(dialect=dialect) == column.type.compile(dialect=dialect), where
            assert got["nullable"] == column.nullable, where
            assert _default(got["default"]) == _expected_default(column, dialect), where
            if dialect.supports_comments:
                assert got.get("comment") == column.comment, where
        pk = inspector.get_pk_constraint(table.name)["constrained_columns"]
        assert pk == [c.name for c in table.primary_key.columns], table.name
        indexes = {i["name"]: (i["column_names"], bool(i["unique"])) for i in inspector.get_indexes(table.name)}
        expected = {i.name: ([c.name for c in i.columns], bool(i.unique)) for i in table.indexes}
        assert indexes == expected, table.name
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]


# -- opening ------------------------------------------------------------------------------------------------


def test_open_creates_the_schema_on_an_empty_database(engine_url):
    led = Ledger(engine_url)
    try:
        assert schema_revision(led.engine) is None
        with pytest.raises(LedgerError, match="empty"):
            led.open(create=False)
        assert table_names(led.engine) == set()

        led.open()

        assert schema_revision(led.engine) == HEAD
        assert table_names(led.engine) == set(metadata.tables) | {"alembic_version"}
        led.persist(SHARD, 0, [Log().put("sku-a", 5)])
        led.open()  # again: a ledger at HEAD is used as it is
        led.open(create=False)
        assert [r["sku_id"] for r in rows(led, skus)] == ["sku-a"]
    finally:
        led.close()


OPEN_ON_GO = """
import sys
from flashstock.server.ledger import Ledger
ledger = Ledger(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
ledger.open()
print(ledger.identity(), flush=True)
ledger.close()
"""


def test_processes_opening_an_empty_database_at_once_all_succeed(engine_url):
    # A node's workers (or nodes started together) open a fresh ledger at the same moment.
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_ON_GO, engine_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        for proc in procs:  # all at once
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes = [(proc.wait(60), proc.stderr.read()[-600:]) for proc in procs]
        identities = {proc.stdout.read().strip() for proc in procs}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [code for code, _ in outcomes] == [0] * len(procs), outcomes
    assert len(identities) == 1, identities  # one identity, made once, under the migration lock
    led = Ledger(engine_url)
    try:
        assert table_names(led.engine) == set(metadata.tables) | {"alembic_version"}
        with led.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]
    finally:
        led.close()


def test_a_ledger_has_one_identity_made_with_its_schema(engine_url, tmp_path):
    led = Ledger(engine_url)
    other = Ledger(f"sqlite:///{tmp_path / 'another-ledger.sqlite3'}")
    try:
        led.open()
        identity = led.identity()
        assert str(uuid.UUID(identity)) == identity
        led.open()  # opened again: the same ledger, the same identity
        assert led.identity() == identity
        other.open()  # another ledger: another identity
        assert other.identity() != identity
    finally:
        led.close()
        other.close()


def test_upgrade_gives_a_ledger_of_revision_0001_an_identity_and_keeps_its_rows(engine_url):
    from alembic import command

    from flashstock.server.ledger._ledger import _alembic_config

    led = Ledger(engine_url)
    try:
        with led.engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "0001")
            # A row as a node of revision 0001 wrote it (today's code writes columns 0001 lacks).
            conn.execute(
                sa.text(
                    "INSERT INTO skus (sku_id, shard, total, sale, put_ms, updated_ms) "
                    "VALUES ('sku-a', :shard, 5, 1, :t, :t)"
                ),
                {"shard": SHARD, "t": T0},
            )
        with pytest.raises(LedgerError, match="older than"):
            led.open()

        assert upgrade(led.engine) == ("0001", HEAD)

        led.open()
        assert str(uuid.UUID(led.identity())) == led.identity()
        assert [r["sku_id"] for r in rows(led, skus)] == ["sku-a"]
    finally:
        led.close()


def test_open_refuses_an_unknown_revision_and_changes_nothing(engine_url):
    led = Ledger(engine_url)
    try:
        with led.engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO alembic_version VALUES ('9999_from_the_future')"))

        with pytest.raises(LedgerError, match=r"^ledger: .*'9999_from_the_future'.*unknown"):
            led.open()
        with pytest.raises(LedgerError, match="unknown"):
            upgrade(led.engine)

        assert table_names(led.engine) == {"alembic_version"}
        assert schema_revision(led.engine) == "9999_from_the_future"
    finally:
        led.close()


def test_open_refuses_a_ledger_whose_revision_is_unknown_and_keeps_its_rows(ledger):
    ledger.persist(SHARD, 0, [Log().put("sku-a", 5)])
    with ledger.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0999'"))
    before = rows(ledger, skus)

    with pytest.raises(LedgerError, match="unknown"):
        ledger.open()

    assert rows(ledger, skus) == before
    assert schema_revision(ledger.engine) == "0999"


def test_open_refuses_a_database_with_foreign_tables(engine_url):
    led = Ledger(engine_url)
    try:
        with led.engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE orders (id INTEGER PRIMARY KEY, note VARCHAR(20))"))
            conn.execute(sa.text("INSERT INTO orders VALUES (1, 'keep me')"))

        with pytest.raises(LedgerError, match=r"^ledger: .*not a flashstock ledger's \(orders\)"):
            led.open()

        assert table_names(led.engine) == {"orders"}
        with led.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT id, note FROM orders")).all() == [(1, "keep me")]
    finally:
        led.close()


def test_unreachable_postgresql_is_reported_naming_the_ledger_setting():
    port = free_port()  # nobody listens there
    led = Ledger(f"postgresql+psycopg://flashstock:s3cret-pw@127.0.0.1:{port}/ledger")
    try:
        with pytest.raises(LedgerError) as caught:
            led.open()
    finally:
        led.close()
    message = caught.value.message
    assert message.startswith("ledger: ")
    assert f"127.0.0.1:{port}" in message
    assert "s3cret-pw" not in message


def test_a_postgresql_database_that_does_not_exist_is_reported_naming_the_ledger_setting(postgres):
    led = Ledger(postgres.database_url("no_such_ledger"))
    try:
        with pytest.raises(LedgerError, match=r'^ledger: .*"no_such_ledger" does not exist'):
            led.open()
    finally:
        led.close()


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    content = b"these are somebody's notes, not a database\n" * 200
    path.write_bytes(content)
    led = Ledger(f"sqlite:///{path}")
    try:
        with pytest.raises(LedgerError, match=r"^ledger: .*not an SQLite database"):
            led.open()
    finally:
        led.close()
    assert path.read_bytes() == content


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "postgresql+psycopg://user@db.example:port/ledger",  # the port is not a number
        "sqlite://",  # in memory: nothing would survive
        "mysql://user@db.example/ledger",
    ],
)
def test_a_url_that_is_not_a_usable_database_url_is_refused(url):
    with pytest.raises(LedgerError, match="^ledger: "):
        Ledger(url)


# -- persist --------------------------------------------------------------------------------------------------


def test_persisting_the_same_batch_twice_gives_the_same_rows(ledger):
    log = Log()
    batch = [
        log.put("sku-a", 10, lim=3),
        log.take("D", "d1", "sku-a", "u1", 2),
        log.take("H", "h1", "sku-a", "u2", 1, expires=T0 + 60_000),
        log.take("H", "h2", "sku-a", "u3", 1, expires=T0 + 60_000),
        log.settle("C", "h1", closer="c1"),
        log.settle("R", "h2", closer="r2"),
        log.adjust("sku-a", 12),
        log.pause("sku-a"),
    ]

    ledger.persist(SHARD, 4, batch, epoch=7)
    first = (rows(ledger, skus), rows(ledger, deductions), rows(ledger, persister_cursors), rows(ledger, shard_epochs))
    ledger.persist(SHARD, 4, batch, epoch=7)
    second = (rows(ledger, skus), rows(ledger, deductions), rows(ledger, persister_cursors), rows(ledger, shard_epochs))

    assert second == first
    found = by_id(ledger)
    assert {rid: (r["kind"], r["state"], r["qty"], r["closer_id"]) for rid, r in found.items()} == {
        "d1": ("D", "confirmed", 2, ""),
        "h1": ("H", "confirmed", 1, "c1"),
        "h2": ("H", "released", 1, "r2"),
    }
    (sku,) = rows(ledger, skus)
    assert (sku["total"], sku["paused"], sku["per_user_limit"]) == (12, True, 3)
    assert ledger.cursor(SHARD) == (4, batch[-1][0])


def test_states_only_move_forward(ledger):
    log = Log()
    ledger.persist(SHARD, 0, [log.put("sku-a", 5), log.take("H", "h1", "sku-a", "u1", 2, expires=T0 + 500)])
    assert by_id(ledger)["h1"]["state"] == "held"

    confirm = log.settle("C", "h1", closer="c1")
    ledger.persist(SHARD, 0, [confirm])
    confirmed = by_id(ledger)["h1"]
    assert (confirmed["state"], confirmed["closer_id"]) == ("confirmed", "c1")
    assert confirmed["updated_ms"] == int(confirm[0].split("-")[0])

    # The reaper's late expiry of the same hold, and a release after it: both too late.
    ledger.persist(SHARD, 0, [log.settle("X", "h1"), log.settle("R", "h1", closer="r9")])
    assert by_id(ledger)["h1"] == confirmed
    assert ledger.cursor(SHARD) == (0, f"{log.ms}-0")


def test_put_adjust_pause_and_resume_entries_define_the_sku(ledger):
    log = Log()
    put = log.put("sku-a", 100, lim=2, maxq=5, start=T0 + 10, end=T0 + 99_000, mode="durable", sale=1)
    ledger.persist(SHARD, 0, [put])
    (row,) = rows(ledger, skus)
    assert row == {
        "sku_id": "sku-a",
        "shard": SHARD,
        "total": 100,
        "per_user_limit": 2,
        "max_per_request": 5,
        "sale_start_ms": T0 + 10,
        "sale_end_ms": T0 + 99_000,
        "paused": False,
        "mode": "durable",
        "sale": 1,
        "put_ms": T0 + 1,
        "updated_ms": T0 + 1,
        "goal_units": 0,
        "goal_sellout_ms": 0,
        "goal_buyers": 0,
        "unit_price_minor": 0,
        "currency": "",
        "user_rate_per_s": 0,
        "require_token": False,
    }

    ledger.persist(SHARD, 0, [log.adjust("sku-a", 80), log.pause("sku-a")])
    (row,) = rows(ledger, skus)
    assert (row["total"], row["paused"], row["updated_ms"], row["put_ms"]) == (80, True, log.ms, T0 + 1)

    ledger.persist(SHARD, 0, [log.resume("sku-a")])
    assert rows(ledger, skus)[0]["paused"] is False

    # Put again while paused: a new sale with everything from the new entry.
    ledger.persist(SHARD, 0, [log.pause("sku-a"), log.put("sku-a", 7, mode="fast", sale=2)])
    (row,) = rows(ledger, skus)
    assert (row["total"], row["paused"], row["mode"], row["sale"], row["per_user_limit"], row["put_ms"]) == (
        7,
        False,
        "fast",
        2,
        0,
        log.ms,
    )


def test_generation_entries_are_ignored_but_move_the_cursor(ledger):
    log = Log()
    ledger.persist(SHARD, 1, [log.put("sku-a", 5)])
    before = (rows(ledger, skus), rows(ledger, deductions))

    first = log.generation(2)
    ledger.persist(SHARD, 2, [first])

    assert (rows(ledger, skus), rows(ledger, deductions)) == before
    assert ledger.cursor(SHARD) == (2, first[0])
    # The first entry of a rebuilt log, then business as usual.
    ledger.persist(SHARD, 2, [log.generation(2), log.take("D", "d1", "sku-a", "u1")])
    assert list(by_id(ledger)) == ["d1"]


def _state(led: Ledger) -> tuple:
    return rows(led, skus), rows(led, deductions), rows(led, persister_cursors), rows(led, shard_epochs)


def test_a_failing_batch_changes_neither_rows_nor_cursor(ledger):
    log = Log()
    ledger.persist(SHARD, 1, [log.put("sku-a", 5), log.take("H", "h1", "sku-a", "u1", expires=T0 + 9_000)], epoch=1)
    before = _state(ledger)

    # The put, the epoch record, the first deduction and the confirm would all
    # be written before the insert that cannot be stored (a qty beyond BIGINT)
    # fails the transaction: none of them may stay.
    batch = [
        log.put("sku-b", 9),
        log.take("D", "ok-1", "sku-b", "u1", 1),
        log.take("D", "too-big", "sku-b", "u2", 10**20),
        log.settle("C", "h1", closer="c1"),
    ]
    with pytest.raises((sa.exc.SQLAlchemyError, OverflowError)):
        ledger.persist(SHARD, 2, batch, epoch=2)

    assert _state(ledger) == before
    assert ledger.cursor(SHARD) == (1, before[2][0]["last_id"])


def test_a_qty_that_is_not_an_integer_is_refused_before_anything_is_written(ledger):
    log = Log()
    ledger.persist(SHARD, 1, [log.put("sku-a", 5)])
    before = _state(ledger)

    with pytest.raises(ValueError):
        ledger.persist(SHARD, 1, [log.take("D", "ok-1", "sku-a", "u1", 1), log.take("D", "bad", "sku-a", "u2", "two")])

    assert _state(ledger) == before


# -- fencing --------------------------------------------------------------------------------------------------


def test_a_lower_epoch_is_fenced_and_writes_nothing(ledger):
    log = Log()
    ledger.persist(SHARD, 1, [log.put("sku-a", 5)], epoch=5)
    ledger.persist(SHARD, 1, [log.take("D", "d1", "sku-a", "u1")], epoch=5)  # the same owner again
    before = _state(ledger)

    stale = [log.take("D", "late", "sku-a", "u2"), log.adjust("sku-a", 1)]
    with pytest.raises(Fenced) as caught:
        ledger.persist(SHARD, 1, stale, epoch=4)

    assert (caught.value.shard, caught.value.epoch) == (SHARD, 4)
    assert _state(ledger) == before
    # A newer owner goes on; another shard has its own epochs.
    ledger.persist(SHARD, 1, stale, epoch=6)
    ledger.persist(SHARD + 1, 0, [Log().put("sku-b", 1)], epoch=1)
    assert {r["shard"]: r["epoch"] for r in rows(ledger, shard_epochs)} == {SHARD: 6, SHARD + 1: 1}
    assert set(by_id(ledger)) == {"d1", "late"}


def test_check_epoch_records_the_highest_and_refuses_lower(ledger):
    with ledger.engine.begin() as conn:
        ledger.check_epoch(conn, SHARD, 3, T0)
        ledger.check_epoch(conn, SHARD, 3, T0 + 1)
        ledger.check_epoch(conn, SHARD, 8, T0 + 2)
    with pytest.raises(Fenced), ledger.engine.begin() as conn:
        ledger.check_epoch(conn, SHARD, 7, T0 + 3)
    assert [(r["shard"], r["epoch"], r["updated_ms"]) for r in rows(ledger, shard_epochs)] == [(SHARD, 8, T0 + 2)]


# -- reads for the rebuild ------------------------------------------------------------------------------------


def test_sku_states_count_only_the_current_sale(ledger):
    log = Log()
    ledger.persist(
        SHARD,
        0,
        [
            log.put("sku-a", 10, sale=1),
            log.take("D", "old-d", "sku-a", "u1", 4, sale=1),
            log.take("H", "old-h", "sku-a", "u2", 1, sale=1, expires=T0 + 60_000),
            log.put("sku-a", 6, sale=2),  # put again: a new sale
            log.take("D", "d1", "sku-a", "u1", 1, sale=2),
            log.take("D", "d2", "sku-a", "u1", 2, sale=2),
            log.take("H", "h1", "sku-a", "u3", 1, sale=2, expires=T0 + 60_000),
            log.take("H", "h2", "sku-a", "u4", 1, sale=2, expires=T0 + 60_000),
            log.take("H", "h3", "sku-a", "u5", 1, sale=2, expires=T0 + 60_000),
            log.settle("R", "h2", closer="r2"),
            log.settle("X", "h3"),
        ],
    )
    first_ms = T0 + 5  # d1

    (state,) = ledger.sku_states(sku_id="sku-a")

    assert (state.sale, state.total) == (2, 6)
    assert (state.confirmed, state.held, state.released, state.expired) == (3, 1, 1, 1)
    assert state.available == 2
    assert (state.buyers, state.first_ms, state.last_ms) == (2, first_ms, first_ms + 2)


def test_snapshot_has_the_shards_skus_and_user_counts_only_where_limited(ledger):
    log = Log()
    ledger.persist(
        SHARD,
        0,
        [
            log.put("limited", 10, lim=3, sale=1),
            log.take("D", "l-old", "limited", "u1", 2, sale=1),  # an older sale counts for nobody
            log.put("limited", 10, lim=3, sale=2),
            log.put("open", 10, lim=0),
            log.take("D", "l1", "limited", "u1", 1, sale=2),
            log.take("H", "l2", "limited", "u1", 1, sale=2, expires=T0 + 60_000),
            log.take("D", "l3", "limited", "u2", 2, sale=2),
            log.take("H", "l4", "limited", "u3", 1, sale=2, expires=T0 + 60_000),
            log.settle("R", "l4", closer="r4"),  # given back: u3 holds nothing
            log.take("D", "o1", "open", "u1", 3),
        ],
    )
    other = Log()
    ledger.persist(SHARD + 1, 0, [other.put("elsewhere", 5, lim=1), other.take("D", "e1", "elsewhere", "u1")])

    snap = ledger.snapshot(SHARD, generation=9, records_since_ms=0)

    assert (snap.shard, snap.generation) == (SHARD, 9)
    assert [s.sku_id for s in snap.skus] == ["limited", "open"]
    assert snap.user_counts == {"limited": {"u1": 2, "u2": 2}}


def test_snapshot_records_are_those_since_a_time_plus_every_open_hold(ledger):
    log = Log()
    since = T0 + 1_000
    ledger.persist(
        SHARD,
        0,
        [
            log.put("sku-a", 50),
            log.take("D", "old-deduct", "sku-a", "u1", at_ms=T0 + 10),
            log.take("H", "old-open-hold", "sku-a", "u2", expires=T0 + 90_000, at_ms=T0 + 20),
            log.take("H", "old-confirmed-hold", "sku-a", "u3", expires=T0 + 90_000, at_ms=T0 + 30),
            log.settle("C", "old-confirmed-hold", closer="c3"),
            log.take("D", "new-deduct", "sku-a", "u4", at_ms=since),
            log.take("H", "new-hold", "sku-a", "u5", expires=T0 + 90_000, at_ms=since + 10),
            log.settle("R", "new-hold", closer="r5"),
        ],
    )
    other = Log()
    ledger.persist(SHARD + 1, 0, [other.put("sku-b", 5), other.take("H", "elsewhere", "sku-b", "u1", at_ms=since + 1)])

    snap = ledger.snapshot(SHARD, generation=1, records_since_ms=since)

    records = {r.request_id: r for r in snap.records}
    assert set(records) == {"old-open-hold", "new-deduct", "new-hold"}
    hold = records["old-open-hold"]
    assert (hold.sku_id, hold.user_id, hold.qty, hold.kind, hold.state, hold.sale, hold.taken_ms, hold.expires_ms) == (
        "sku-a",
        "u2",
        1,
        "H",
        "held",
        1,
        T0 + 20,
        T0 + 90_000,
    )
    assert (records["new-hold"].state, records["new-hold"].closer_id) == ("released", "r5")


def test_bump_generation_counts_up_per_shard(ledger):
    assert ledger.generations() == {}
    assert [ledger.bump_generation(SHARD, T0 + i) for i in range(3)] == [1, 2, 3]
    assert ledger.bump_generation(SHARD + 1, T0) == 1
    assert ledger.bump_generation(SHARD, T0 + 9) == 4
    assert ledger.generations() == {SHARD: 4, SHARD + 1: 1}


def test_entries_read_before_a_rebuild_began_are_refused(engine_url):
    """A persister holding entries of a lost log must not write them once a
    rebuild has counted a newer generation: the rebuilt state does not hold them."""
    ledger = Ledger(engine_url)
    ledger.open()
    try:
        log = Log()
        ledger.persist(SHARD, 1, [log.put("sku-a", 5)])
        assert ledger.bump_generation(SHARD, T0) == 1
        ledger.persist(SHARD, 1, [log.take("D", "kept", "sku-a", "u1")])  # same generation: fine
        assert ledger.bump_generation(SHARD, T0) == 2  # a rebuild begins
        stale = log.take("D", "lost", "sku-a", "u2")
        with pytest.raises(StaleGeneration):
            ledger.persist(SHARD, 1, [stale])
        assert set(ledger.deductions_of(["kept", "lost"])) == {"kept"}
        ledger.persist(SHARD, 2, [log.take("D", "new", "sku-a", "u3")])
        assert "new" in ledger.deductions_of(["new"])
    finally:
        ledger.close()


def test_a_put_entry_writes_the_sales_goals_and_price_and_a_put_without_them_clears_them(ledger):
    log = Log()
    ledger.persist(SHARD, 0, [log.put("sku-a", 100, gu=80, gs=30_000, gb=40, pr=1999, cur="EUR")])
    ledger.persist(SHARD, 0, [log.adjust("sku-a", 90), log.pause("sku-a"), log.resume("sku-a")])
    goals = ("goal_units", "goal_sellout_ms", "goal_buyers", "unit_price_minor", "currency")
    (row,) = rows(ledger, skus)
    assert [row[g] for g in goals] == [80, 30_000, 40, 1999, "EUR"]
    (state,) = ledger.sku_states(sku_id="sku-a")
    assert [getattr(state, g) for g in goals] == [80, 30_000, 40, 1999, "EUR"]

    ledger.persist(SHARD, 0, [log.put("sku-a", 5, sale=2, gu=0, gs=0, gb=0, pr=0, cur="")])
    assert [rows(ledger, skus)[0][g] for g in goals] == [0, 0, 0, 0, ""]


def test_a_put_entry_writes_the_anti_scalping_settings_and_an_older_entry_has_none(ledger):
    log = Log()
    ledger.persist(SHARD, 0, [log.put("sku-a", 100, ur=3, rt="1")])
    ledger.persist(SHARD, 0, [log.adjust("sku-a", 90), log.pause("sku-a")])
    (state,) = ledger.sku_states(sku_id="sku-a")
    assert (state.user_rate_per_s, state.require_token) == (3, True)
    ledger.persist(SHARD, 0, [log.put("sku-a", 5, sale=2)])  # an entry of a node from before the settings
    (state,) = ledger.sku_states(sku_id="sku-a")
    assert (state.user_rate_per_s, state.require_token) == (0, False)


def test_claim_epoch_says_who_owned_the_shard_before(ledger):
    assert ledger.claim_epoch(SHARD, 12, "node-a", T0) == ""
    assert ledger.claim_epoch(SHARD, 13, "node-a", T0 + 1) == "node-a"
    assert ledger.claim_epoch(SHARD, 15, "node-b", T0 + 2) == "node-a"


def test_incidents_are_kept_and_read_by_time_and_kind(ledger):
    ledger.record_incident("rebuild", "node-a", 3, "rebuilt from the ledger", T0)
    ledger.record_incident("failover", "node-b", -1, "took shards 0-7 over from node-a", T0 + 1000)
    ledger.record_incident("fenced_write", "node-a", 3, "x" * 5000, T0 + 2000)

    assert [i.kind for i in ledger.incidents()] == ["rebuild", "failover", "fenced_write"]
    assert [i.kind for i in ledger.incidents(since_ms=T0 + 1000)] == ["failover", "fenced_write"]
    assert [i.kind for i in ledger.incidents(until_ms=T0 + 1000)] == ["rebuild"]  # the end is left out
    assert [i.kind for i in ledger.incidents(T0 + 1, T0 + 2001, kinds=["fenced_write", "rebuild"])] == ["fenced_write"]
    first = ledger.incidents()[0]
    assert (first.at_ms, first.node, first.shard, first.detail) == (T0, "node-a", 3, "rebuilt from the ledger")
    assert len(ledger.incidents(kinds=["fenced_write"])[0].detail) == 1024  # cut to the column
    with pytest.raises(ValueError, match="unknown incident kind"):
        ledger.record_incident("oops", "node-a", 3, "", T0)


def test_claim_epoch_records_the_owner_and_the_snapshot_carries_the_epoch(ledger):
    ledger.claim_epoch(SHARD, 12, "node-a", T0)
    ledger.claim_epoch(SHARD, 15, "node-b", T0 + 1)
    with pytest.raises(Fenced):
        ledger.claim_epoch(SHARD, 14, "node-a", T0 + 2)  # node-a woke up after node-b took over

    assert ledger.epochs() == {SHARD: (15, "node-b")}
    assert ledger.snapshot(SHARD, 1, 0).epoch == 15
    assert ledger.snapshot(SHARD + 1, 1, 0).epoch == 0
    # The new owner's duties go on; the old one's commit is refused.
    ledger.persist(SHARD, 1, [Log().put("sku-a", 5)], epoch=15)
    with pytest.raises(Fenced):
        ledger.persist(SHARD, 1, [Log().put("sku-a", 7)], epoch=12)


def test_sale_seconds_are_upserted_whole_and_read_by_sku_and_sale(ledger):
    from flashstock.server.duties.salefigures import second_row

    first = second_row("s", 1, 100, {b"o:ok": b"2", b"units": b"2", b"l:0": b"2"}, 2, 2, 2, 1_000)
    other_sale = second_row("s", 2, 100, {b"o:limit": b"1", b"l:0": b"1"}, 1, 1, 0, 1_000)
    ledger.put_sale_seconds([first, other_sale, second_row("t", 1, 100, {b"o:ok": b"1"}, 1, 1, 1, 1_000)])
    # A late flush added to the second: the row is written again, whole.
    later = second_row("s", 1, 100, {b"o:ok": b"3", b"o:dup": b"1", b"units": b"3", b"l:0": b"4"}, 3, 3, 3, 2_000)
    ledger.put_sale_seconds([later, second_row("s", 1, 101, {b"o:sold_out": b"5"}, 5, 8, 3, 2_000)])

    rows = ledger.sale_seconds("s", sale=1)
    assert [(r["second"], r["attempts"], r["o_ok"], r["o_dup"], r["units"], r["users_total"]) for r in rows] == [
        (100, 4, 3, 1, 3, 3),
        (101, 5, 0, 0, 0, 8),
    ]
    assert [(r["sale"], r["second"]) for r in ledger.sale_seconds("s")] == [(1, 100), (1, 101), (2, 100)]
    ledger.put_sale_seconds([])
