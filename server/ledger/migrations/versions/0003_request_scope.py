"""A request id's scope is its SKU: deductions keyed by (sku_id, request_id), with the batch fingerprint.

Before, ``deductions.request_id`` alone was the key, while Redis recorded ids
per shard: the same order id on two SKUs was one row in the ledger and two in
Redis. The table is copied into one keyed by ``(sku_id, request_id)``; every
row keeps its ids (BatchDeduct items of earlier versions keep their
``<id>#<i>`` ids, and are marked kind D as they were).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_COLUMNS = (
    "sku_id, request_id, user_id, qty, kind, state, closer_id, sale, shard, epoch, taken_ms, expires_ms, updated_ms"
)


def upgrade() -> None:
    op.create_table(
        "deductions_v2",
        sa.Column("sku_id", sa.String(128), primary_key=True),
        sa.Column("request_id", sa.String(160), primary_key=True, comment="The Deduct/Hold/BatchDeduct request id."),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("qty", sa.BigInteger, nullable=False),
        sa.Column(
            "kind",
            sa.String(1),
            nullable=False,
            comment="D = Deduct (final at once), H = Hold, B = a BatchDeduct item.",
        ),
        sa.Column("state", sa.String(10), nullable=False, comment="held | confirmed | released | expired"),
        sa.Column(
            "closer_id", sa.String(160), nullable=False, server_default="", comment="The Confirm/Release request id."
        ),
        sa.Column("sale", sa.Integer, nullable=False),
        sa.Column("shard", sa.Integer, nullable=False),
        sa.Column(
            "epoch", sa.BigInteger, nullable=False, server_default="0", comment="Epoch of the owner that wrote it."
        ),
        sa.Column("taken_ms", sa.BigInteger, nullable=False, comment="When the units were taken (Redis clock)."),
        sa.Column(
            "expires_ms", sa.BigInteger, nullable=False, server_default="0", comment="Holds: expiry (Redis clock)."
        ),
        sa.Column("updated_ms", sa.BigInteger, nullable=False, comment="When the state last changed (Redis clock)."),
        sa.Column(
            "batch_fp",
            sa.String(40),
            nullable=False,
            server_default="",
            comment="BatchDeduct items: the fingerprint of the batch's items (a resend with others is refused).",
        ),
    )
    op.execute(f"INSERT INTO deductions_v2 ({_COLUMNS}) SELECT {_COLUMNS} FROM deductions")
    op.drop_index("ix_deductions_sku_sale_state", table_name="deductions")
    op.drop_index("ix_deductions_shard_taken", table_name="deductions")
    op.drop_index("ix_deductions_shard_state", table_name="deductions")
    op.drop_table("deductions")
    op.rename_table("deductions_v2", "deductions")
    if op.get_bind().dialect.name == "postgresql":
        # The key's constraint keeps the name of the table it was made with.
        op.execute("ALTER TABLE deductions RENAME CONSTRAINT deductions_v2_pkey TO deductions_pkey")
    op.create_index("ix_deductions_sku_sale_state", "deductions", ["sku_id", "sale", "state"])
    op.create_index("ix_deductions_shard_taken", "deductions", ["shard", "taken_ms"])
    op.create_index("ix_deductions_shard_state", "deductions", ["shard", "state"])


def downgrade() -> None:
    raise NotImplementedError("a ledger keyed per SKU cannot go back to one id per row without losing rows")
