"""The audit trail: every admin change, who made it, from where, and what it changed.

Written in the same transaction as the change it records (the persister
applies a SKU change and its audit row together; a shard change's record is
copied from etcd, where it was written with the change), so the ledger never
holds one without the other.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "at_ms", sa.BigInteger, nullable=False, comment="When the change was made (Redis's or the CLI's clock)."
        ),
        sa.Column(
            "identity", sa.String(256), nullable=False, comment="Who: the caller's identity (anonymous: auth off)."
        ),
        sa.Column("peer", sa.String(256), nullable=False, server_default="", comment="From where: grpc peer, or host."),
        sa.Column("method", sa.String(64), nullable=False, comment="PutSku, AdjustStock, ..., shards.pin, ..."),
        sa.Column("sku_id", sa.String(128), nullable=True, comment="The SKU changed; NULL for a shard change."),
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
    )
    op.create_index("ux_audit_source", "audit", ["source"], unique=True)
    op.create_index("ix_audit_at", "audit", ["at_ms"])
    op.create_index("ix_audit_sku_at", "audit", ["sku_id", "at_ms"])


def downgrade() -> None:
    op.drop_index("ix_audit_sku_at", table_name="audit")
    op.drop_index("ix_audit_at", table_name="audit")
    op.drop_index("ux_audit_source", table_name="audit")
    op.drop_table("audit")
