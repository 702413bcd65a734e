"""job execution: attempts budget, worker pid/host, devices, cancel flag, log path, latest metrics,
checkpoint step, exit code on jobs; the job_metrics time series.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 06:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    # Server defaults fill the new NOT NULL columns of jobs that already exist.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("max_attempts", sa.Integer(), server_default=sa.text("3"), nullable=False)
        )
        batch_op.add_column(sa.Column("handler", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("pid", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("host", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("devices", JSON, server_default=sa.text("'[]'"), nullable=False))
        batch_op.add_column(
            sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("log_path", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("metrics", JSON, server_default=sa.text("'{}'"), nullable=False))
        batch_op.add_column(sa.Column("checkpoint_step", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("checkpoint_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("exit_code", sa.Integer(), nullable=True))

    op.create_table(
        "job_metrics",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_metrics_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_metrics")),
    )
    with op.batch_alter_table("job_metrics", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_metrics_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_metrics", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_metrics_job_id"))

    op.drop_table("job_metrics")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in (
            "exit_code",
            "checkpoint_at",
            "checkpoint_step",
            "metrics",
            "log_path",
            "cancel_requested_at",
            "cancel_requested",
            "devices",
            "host",
            "pid",
            "handler",
            "max_attempts",
        ):
            batch_op.drop_column(column)
