"""Anti-scalping: a SKU's per-user attempt rate and admission-token setting, and the rate_limited figure.

A rebuilt Redis must enforce the same caps the operator put; the review
counts the attempts refused as RATE_LIMITED per second like every other
outcome.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("skus") as batch:
        batch.add_column(
            sa.Column(
                "user_rate_per_s",
                sa.BigInteger,
                nullable=False,
                server_default="0",
                comment="Most attempts per user per second; 0 = no cap.",
            )
        )
        batch.add_column(
            sa.Column(
                "require_token",
                sa.Boolean,
                nullable=False,
                server_default=sa.false(),
                comment="Deduct/Hold need an admission token.",
            )
        )
    with op.batch_alter_table("sale_seconds") as batch:
        batch.add_column(
            sa.Column(
                "o_rate_limited",
                sa.BigInteger,
                nullable=False,
                server_default="0",
                comment="Attempts answered rate_limited.",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("sale_seconds") as batch:
        batch.drop_column("o_rate_limited")
    with op.batch_alter_table("skus") as batch:
        batch.drop_column("require_token")
        batch.drop_column("user_rate_per_s")
