"""Migration 0002 on both databases: jobs that exist before it get sensible values."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect, text

from onebox.store.db import Database, alembic_config, current_revision, migrate


def test_upgrade_fills_new_job_columns_and_downgrades(db_url: str) -> None:
    db = Database(db_url)
    migrate(db.engine, "0001")
    now = "2026-01-01 00:00:00+00:00"
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO projects (id, name, status, description, created_at, updated_at) "
                "VALUES ('prj_1', 'default', 'active', '', :t, :t)"
            ),
            {"t": now},
        )
        conn.execute(
            text(
                "INSERT INTO jobs (id, project_id, name, status, type, priority, spec, resources, progress, "
                "result, attempts, created_at, updated_at) VALUES ('job_1', 'prj_1', 'old', 'queued', "
                "'sleep', 0, '{}', '{}', 0, '{}', 0, :t, :t)"
            ),
            {"t": now},
        )
    migrate(db.engine, "0002")  # this migration's own upgrade (later ones are tested on their own)
    assert current_revision(db.engine) == "0002"
    with db.engine.connect() as conn:
        row = conn.execute(
            text("SELECT max_attempts, cancel_requested, devices, metrics, pid FROM jobs WHERE id = 'job_1'")
        ).one()
    assert row.max_attempts == 3 and not row.cancel_requested and row.pid is None
    assert row.devices in ([], "[]") and row.metrics in ({}, "{}")
    assert "job_metrics" in inspect(db.engine).get_table_names()
    command.downgrade(alembic_config(db.engine), "0001")
    assert "job_metrics" not in inspect(db.engine).get_table_names()
    assert "max_attempts" not in {c["name"] for c in inspect(db.engine).get_columns("jobs")}
    db.dispose()
