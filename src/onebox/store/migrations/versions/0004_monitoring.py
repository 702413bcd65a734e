"""monitoring: nodes (identity, versions, heartbeat, health), metric series and their points (raw
and rolled up).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 13:43:04.777517
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("interval_s", sa.Float(), nullable=False),
        sa.Column("healthy", sa.Boolean(), nullable=False),
        sa.Column("problems", JSON, nullable=False),
        sa.Column("versions", JSON, nullable=False),
        sa.Column("info", JSON, nullable=False),
        sa.Column("summary", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nodes")),
    )
    op.create_table(
        "metric_series",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("resource", sa.String(length=255), nullable=False),
        sa.Column("metric", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metric_series")),
        sa.UniqueConstraint(
            "node", "level", "resource", "metric", name=op.f("uq_metric_series_node_level_resource_metric")
        ),
    )
    with op.batch_alter_table("metric_series", schema=None) as batch_op:
        batch_op.create_index("ix_metric_series_level_metric", ["level", "metric"], unique=False)
        batch_op.create_index(batch_op.f("ix_metric_series_project_id"), ["project_id"], unique=False)

    op.create_table(
        "metric_points",
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("resolution", sa.Integer(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_id"], ["metric_series.id"], name=op.f("fk_metric_points_series_id_metric_series")
        ),
        sa.PrimaryKeyConstraint("series_id", "resolution", "ts", name=op.f("pk_metric_points")),
    )
    with op.batch_alter_table("metric_points", schema=None) as batch_op:
        batch_op.create_index("ix_metric_points_resolution_ts", ["resolution", "ts"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("metric_points", schema=None) as batch_op:
        batch_op.drop_index("ix_metric_points_resolution_ts")
    op.drop_table("metric_points")
    with op.batch_alter_table("metric_series", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_metric_series_project_id"))
        batch_op.drop_index("ix_metric_series_level_metric")
    op.drop_table("metric_series")
    op.drop_table("nodes")
