"""The ledger's identity: a UUID made with its schema, that nodes bind in Redis and etcd.

Nodes that share a Redis (or a cluster) must write into one ledger: a node
with another ledger would persist part of the shard logs where the others
never read them. The identity lets a node tell, at start, that its ledger
is the one the others use. A fresh ledger gets one with its schema; an
existing ledger gets one on upgrade.

Revision ID: 0002
Revises: 0001
"""

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    meta = op.create_table(
        "ledger_meta",
        sa.Column("key", sa.String(64), primary_key=True, comment="ledger_id: the ledger's identity."),
        sa.Column("value", sa.String(256), nullable=False),
    )
    # Made here, once, under the migration lock: every node that opens this
    # ledger afterwards reads the same identity.
    op.bulk_insert(meta, [{"key": "ledger_id", "value": str(uuid.uuid4())}])


def downgrade() -> None:
    op.drop_table("ledger_meta")
