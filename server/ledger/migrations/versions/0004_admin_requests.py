"""Admin calls that took effect, kept in the ledger: a resend after a Redis loss changes nothing.

Before, an admin call's record (its request id and arguments) lived in Redis
only: a PutSku resent after Redis lost everything was applied again, and
restarted a sale whose units were already sold.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "admin_requests",
        sa.Column("sku_id", sa.String(128), primary_key=True),
        sa.Column(
            "request_id",
            sa.String(160),
            primary_key=True,
            comment="The PutSku/AdjustStock/PauseSku/ResumeSku request id.",
        ),
        sa.Column(
            "fingerprint",
            sa.String(40),
            nullable=False,
            comment="SHA-1 of the call's arguments: a resend with others is refused.",
        ),
        sa.Column("applied_ms", sa.BigInteger, nullable=False, comment="When it was applied (Redis clock)."),
    )
    op.create_index("ix_admin_requests_applied", "admin_requests", ["applied_ms"])


def downgrade() -> None:
    op.drop_index("ix_admin_requests_applied", table_name="admin_requests")
    op.drop_table("admin_requests")
