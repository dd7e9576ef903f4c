"""The ledger's tables (SQLAlchemy Core): one definition for SQLite and PostgreSQL.

The ledger is the durable record from which Redis is rebuilt and sales are
reported. Migrations (``migrations/versions``) create these tables; a test
checks that the migrated schema equals this one.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

ID = sa.String(128)
"""SKU, user and request ids: at most 128 bytes (the node refuses longer ones)."""

skus = sa.Table(
    "skus",
    metadata,
    sa.Column("sku_id", ID, primary_key=True, comment="The SKU id."),
    sa.Column("shard", sa.Integer, nullable=False, comment="stable_hash(sku_id) mod S."),
    sa.Column("total", sa.BigInteger, nullable=False, comment="Units put on sale, after adjustments."),
    sa.Column("per_user_limit", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("max_per_request", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("sale_start_ms", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("sale_end_ms", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("mode", sa.String(8), nullable=False, server_default="fast", comment="fast | durable"),
    sa.Column(
        "sale", sa.Integer, nullable=False, comment="+1 on every put: deductions of older sales count for nobody."
    ),
    sa.Column("put_ms", sa.BigInteger, nullable=False, comment="When the current sale was put (Redis clock)."),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    # The sale's goals and price (PutSku; 0 / '' = none), for the board and the review.
    sa.Column("goal_units", sa.BigInteger, nullable=False, server_default="0", comment="Units to sell; 0 = no goal."),
    sa.Column(
        "goal_sellout_ms",
        sa.BigInteger,
        nullable=False,
        server_default="0",
        comment="Sell out within this many ms of the sale's start; 0 = no goal.",
    ),
    sa.Column(
        "goal_buyers", sa.BigInteger, nullable=False, server_default="0", comment="Distinct buyers; 0 = no goal."
    ),
    sa.Column(
        "unit_price_minor",
        sa.BigInteger,
        nullable=False,
        server_default="0",
        comment="Price of one unit in minor units (cents); 0 = not given.",
    ),
    sa.Column("currency", sa.String(3), nullable=False, server_default="", comment="ISO 4217 code; '' = not given."),
    # Anti-scalping (PutSku, migration 0007).
    sa.Column(
        "user_rate_per_s",
        sa.BigInteger,
        nullable=False,
        server_default="0",
        comment="Most attempts per user per second; 0 = no cap.",
    ),
    sa.Column(
        "require_token",
        sa.Boolean,
        nullable=False,
        server_default=sa.false(),
        comment="Deduct/Hold need an admission token.",
    ),
    sa.Index("ix_skus_shard", "shard"),
)

deductions = sa.Table(
    "deductions",
    metadata,
    # A request id's scope is its SKU: (sku_id, request_id) keys a deduction,
    # so one order id can key every line of an order.
    sa.Column("sku_id", ID, primary_key=True),
    sa.Column("request_id", sa.String(160), primary_key=True, comment="The Deduct/Hold/BatchDeduct request id."),
    sa.Column("user_id", ID, nullable=False),
    sa.Column("qty", sa.BigInteger, nullable=False),
    sa.Column(
        "kind", sa.String(1), nullable=False, comment="D = Deduct (final at once), H = Hold, B = a BatchDeduct item."
    ),
    sa.Column("state", sa.String(10), nullable=False, comment="held | confirmed | released | expired"),
    sa.Column(
        "closer_id", sa.String(160), nullable=False, server_default="", comment="The Confirm/Release request id."
    ),
    sa.Column("sale", sa.Integer, nullable=False),
    sa.Column("shard", sa.Integer, nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0", comment="Epoch of the owner that wrote it."),
    sa.Column("taken_ms", sa.BigInteger, nullable=False, comment="When the units were taken (Redis clock)."),
    sa.Column("expires_ms", sa.BigInteger, nullable=False, server_default="0", comment="Holds: expiry (Redis clock)."),
    sa.Column("updated_ms", sa.BigInteger, nullable=False, comment="When the state last changed (Redis clock)."),
    sa.Column(
        "batch_fp",
        sa.String(40),
        nullable=False,
        server_default="",
        comment="BatchDeduct items: the fingerprint of the batch's items (a resend with others is refused).",
    ),
    sa.Index("ix_deductions_sku_sale_state", "sku_id", "sale", "state"),
    sa.Index("ix_deductions_shard_taken", "shard", "taken_ms"),
    sa.Index("ix_deductions_shard_state", "shard", "state"),
)

admin_requests = sa.Table(
    "admin_requests",
    metadata,
    sa.Column("sku_id", ID, primary_key=True),
    sa.Column(
        "request_id", sa.String(160), primary_key=True, comment="The PutSku/AdjustStock/PauseSku/ResumeSku request id."
    ),
    sa.Column(
        "fingerprint",
        sa.String(40),
        nullable=False,
        comment="SHA-1 of the call's arguments: a resend with others is refused.",
    ),
    sa.Column("applied_ms", sa.BigInteger, nullable=False, comment="When it was applied (Redis clock)."),
    sa.Index("ix_admin_requests_applied", "applied_ms"),
)
"""Admin calls that took effect, so a rebuilt Redis still answers their resends as duplicates."""

persister_cursors = sa.Table(
    "persister_cursors",
    metadata,
    sa.Column("shard", sa.Integer, primary_key=True),
    sa.Column("generation", sa.BigInteger, nullable=False, comment="The Redis generation of the shard's log stream."),
    sa.Column("last_id", sa.String(40), nullable=False, comment="Last stream entry id persisted."),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)

shard_epochs = sa.Table(
    "shard_epochs",
    metadata,
    sa.Column("shard", sa.Integer, primary_key=True),
    sa.Column("epoch", sa.BigInteger, nullable=False, comment="Highest owner epoch seen; lower ones are fenced off."),
    sa.Column("owner", sa.String(256), nullable=False, server_default=""),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)

shard_generations = sa.Table(
    "shard_generations",
    metadata,
    sa.Column("shard", sa.Integer, primary_key=True),
    sa.Column("generation", sa.BigInteger, nullable=False, comment="Rebuilds of the shard's Redis state so far."),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)

ledger_meta = sa.Table(
    "ledger_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True, comment="ledger_id: the ledger's identity."),
    sa.Column("value", sa.String(256), nullable=False),
)
"""Facts about the ledger itself: ``ledger_id``, a UUID made with the schema (migration 0002)."""

sale_seconds = sa.Table(
    "sale_seconds",
    metadata,
    sa.Column("sku_id", ID, primary_key=True),
    sa.Column("sale", sa.Integer, primary_key=True, comment="The SKU's sale (skus.sale) these figures belong to."),
    sa.Column("second", sa.BigInteger, primary_key=True, comment="Unix second (node clock) of the attempts."),
    sa.Column("attempts", sa.BigInteger, nullable=False, comment="Deduct/Hold/BatchDeduct-item attempts (PV)."),
    *(
        sa.Column(
            f"o_{outcome}", sa.BigInteger, nullable=False, server_default="0", comment=f"Attempts answered {outcome}."
        )
        for outcome in ("ok", "dup", "sold_out", "insufficient", "limit", "not_on_sale", "qty_max", "error")
    ),
    sa.Column("units", sa.BigInteger, nullable=False, server_default="0", comment="Units taken (OK answers)."),
    sa.Column(
        "users",
        sa.BigInteger,
        nullable=False,
        server_default="0",
        comment="Distinct users who tried, this second (HLL).",
    ),
    sa.Column(
        "users_total",
        sa.BigInteger,
        nullable=False,
        server_default="0",
        comment="Distinct users who tried so far in the sale (HLL).",
    ),
    sa.Column(
        "buyers_total",
        sa.BigInteger,
        nullable=False,
        server_default="0",
        comment="Distinct users who took units so far (HLL).",
    ),
    sa.Column("latency_p50_us", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("latency_p99_us", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    # Added by migration 0007, hence last.
    sa.Column(
        "o_rate_limited", sa.BigInteger, nullable=False, server_default="0", comment="Attempts answered rate_limited."
    ),
)
"""A sale's figures per SKU per second, written by the duties in batches (the review reads them)."""

incidents = sa.Table(
    "incidents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at_ms", sa.BigInteger, nullable=False, comment="When it happened (the node's clock)."),
    sa.Column(
        "kind",
        sa.String(32),
        nullable=False,
        comment="failover | handoff | rebuild | fenced_write | reconcile_difference | session_lost",
    ),
    sa.Column("node", sa.String(256), nullable=False, server_default=""),
    sa.Column("shard", sa.Integer, nullable=False, server_default="-1", comment="-1 = not about one shard."),
    sa.Column("detail", sa.String(1024), nullable=False, server_default=""),
    sa.Index("ix_incidents_at", "at_ms"),
)
"""What went wrong and when, recorded by the nodes, so a review can list the incidents of a sale window."""

STATES = {"H": "held", "C": "confirmed", "R": "released", "X": "expired"}
"""Deduction states by their letter in Redis records and log entries."""

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at_ms", sa.BigInteger, nullable=False, comment="When the change was made (Redis's or the CLI's clock)."),
    sa.Column("identity", sa.String(256), nullable=False, comment="Who: the caller's identity (anonymous: auth off)."),
    sa.Column("peer", sa.String(256), nullable=False, server_default="", comment="From where: grpc peer, or host."),
    sa.Column("method", sa.String(64), nullable=False, comment="PutSku, AdjustStock, ..., shards.pin, ..."),
    sa.Column("sku_id", ID, nullable=True, comment="The SKU changed; NULL for a shard change."),
    sa.Column("shard", sa.Integer, nullable=True, comment="The shard of the SKU, or the shard moved/pinned."),
    sa.Column("args", sa.Text, nullable=False, server_default="{}", comment="The call's arguments, JSON."),
    sa.Column("before", sa.Text, nullable=True, comment="The SKU's figures before, JSON; NULL: none (a new SKU)."),
    sa.Column("after", sa.Text, nullable=True, comment="The SKU's figures after, JSON; NULL: not a SKU change."),
    sa.Column(
        "source",
        sa.String(512),
        nullable=False,
        comment="Where the record came from (log/<shard>/<entry id>, etcd/<key>): a replay writes it once.",
    ),
    sa.Index("ux_audit_source", "source", unique=True),
    sa.Index("ix_audit_at", "at_ms"),
    sa.Index("ix_audit_sku_at", "sku_id", "at_ms"),
)
"""Every admin change, who made it, from where and what it changed; written with the change itself."""
