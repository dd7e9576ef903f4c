"""A sale's goals and price on the SKU, its figures per second, and the incidents.

The board and the review (issue 11) need, after the nodes are gone: the goals
set before the sale, the attempts per second by outcome with distinct users,
and what went wrong in the sale's window.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OUTCOMES = ("ok", "dup", "sold_out", "insufficient", "limit", "not_on_sale", "qty_max", "error")


def upgrade() -> None:
    with op.batch_alter_table("skus") as batch:
        batch.add_column(
            sa.Column(
                "goal_units", sa.BigInteger, nullable=False, server_default="0", comment="Units to sell; 0 = no goal."
            )
        )
        batch.add_column(
            sa.Column(
                "goal_sellout_ms",
                sa.BigInteger,
                nullable=False,
                server_default="0",
                comment="Sell out within this many ms of the sale's start; 0 = no goal.",
            )
        )
        batch.add_column(
            sa.Column(
                "goal_buyers",
                sa.BigInteger,
                nullable=False,
                server_default="0",
                comment="Distinct buyers; 0 = no goal.",
            )
        )
        batch.add_column(
            sa.Column(
                "unit_price_minor",
                sa.BigInteger,
                nullable=False,
                server_default="0",
                comment="Price of one unit in minor units (cents); 0 = not given.",
            )
        )
        batch.add_column(
            sa.Column(
                "currency", sa.String(3), nullable=False, server_default="", comment="ISO 4217 code; '' = not given."
            )
        )
    op.create_table(
        "sale_seconds",
        sa.Column("sku_id", sa.String(128), primary_key=True),
        sa.Column("sale", sa.Integer, primary_key=True, comment="The SKU's sale (skus.sale) these figures belong to."),
        sa.Column("second", sa.BigInteger, primary_key=True, comment="Unix second (node clock) of the attempts."),
        sa.Column("attempts", sa.BigInteger, nullable=False, comment="Deduct/Hold/BatchDeduct-item attempts (PV)."),
        *(
            sa.Column(f"o_{o}", sa.BigInteger, nullable=False, server_default="0", comment=f"Attempts answered {o}.")
            for o in OUTCOMES
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
    )
    op.create_table(
        "incidents",
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
    )
    op.create_index("ix_incidents_at", "incidents", ["at_ms"])


def downgrade() -> None:
    op.drop_index("ix_incidents_at", table_name="incidents")
    op.drop_table("incidents")
    op.drop_table("sale_seconds")
    with op.batch_alter_table("skus") as batch:
        for name in ("currency", "unit_price_minor", "goal_buyers", "goal_sellout_ms", "goal_units"):
            batch.drop_column(name)
