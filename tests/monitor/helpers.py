"""Rows the monitoring tests need: projects and running jobs written straight into the store."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from typing import Any

from onebox.services.context import App
from onebox.services.projects import ensure_project
from onebox.store.tables import Job, new_id


def project_id(app: App, name: str) -> str:
    with app.db.session() as s:
        return ensure_project(s, name).id


def running_job(app: App, project: str = "default", *, pid: int | None = None, **metrics: Any) -> str:
    """A job that looks like a live worker on this host reported ``metrics`` through ctx.progress."""
    pid_ = project_id(app, project)
    job_id = new_id("job")
    with app.db.session() as s:
        s.add(
            Job(
                id=job_id,
                project_id=pid_,
                name=f"train-{project}",
                status="running",
                type="sleep",
                progress=0.25,
                metrics=metrics,
                pid=os.getpid() if pid is None else pid,
                host=socket.gethostname(),
                heartbeat_at=datetime.now(UTC),
            )
        )
    return job_id
