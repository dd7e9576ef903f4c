"""The first ledger: SKUs, deductions, persister cursors, shard epochs and generations.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "skus",
        sa.Column("sku_id", sa.String(128), primary_key=True, comment="The SKU id."),
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
    )
    op.create_index("ix_skus_shard", "skus", ["shard"])
    op.create_table(
        "deductions",
        sa.Column(
            "request_id", sa.String(160), primary_key=True, comment="The Deduct/Hold request id (batch items: id#i)."
        ),
        sa.Column("sku_id", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("qty", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(1), nullable=False, comment="D = Deduct (final at once), H = Hold."),
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
    )
    op.create_index("ix_deductions_sku_sale_state", "deductions", ["sku_id", "sale", "state"])
    op.create_index("ix_deductions_shard_taken", "deductions", ["shard", "taken_ms"])
    op.create_index("ix_deductions_shard_state", "deductions", ["shard", "state"])
    op.create_table(
        "persister_cursors",
        sa.Column("shard", sa.Integer, primary_key=True),
        sa.Column(
            "generation", sa.BigInteger, nullable=False, comment="The Redis generation of the shard's log stream."
        ),
        sa.Column("last_id", sa.String(40), nullable=False, comment="Last stream entry id persisted."),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "shard_epochs",
        sa.Column("shard", sa.Integer, primary_key=True),
        sa.Column(
            "epoch", sa.BigInteger, nullable=False, comment="Highest owner epoch seen; lower ones are fenced off."
        ),
        sa.Column("owner", sa.String(256), nullable=False, server_default=""),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "shard_generations",
        sa.Column("shard", sa.Integer, primary_key=True),
        sa.Column("generation", sa.BigInteger, nullable=False, comment="Rebuilds of the shard's Redis state so far."),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in ("shard_generations", "shard_epochs", "persister_cursors", "deductions", "skus"):
        op.drop_table(table)
