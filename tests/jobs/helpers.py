"""Helpers for job tests: drive an executor until a condition holds, submit sleep jobs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import select

from onebox.jobs.executor import LocalExecutor
from onebox.jobs.procs import kill_group, worker_alive
from onebox.jobs.resources import Resources
from onebox.services import jobs
from onebox.services.context import App
from onebox.store.tables import Job

MakeExecutor = Callable[..., LocalExecutor]


def executor_factory(app: App) -> Iterator[MakeExecutor]:
    """Body of a fixture making executors (2 CPUs, quick heartbeats); afterwards it closes them and
    kills any worker a failing test left behind."""
    made: list[LocalExecutor] = []

    def make(cpus: float = 2, gpus: int = 0, memory_mb: int = 0, **kw: Any) -> LocalExecutor:
        kw.setdefault("heartbeat_interval", 0.5)
        kw.setdefault("heartbeat_timeout", 30.0)
        kw.setdefault("cancel_grace", 10.0)
        ex = LocalExecutor(app.settings, Resources(cpus, gpus, memory_mb), **kw)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.close()
    with app.db.session() as s:
        for job in s.scalars(select(Job).where(Job.pid.is_not(None))):
            if worker_alive(job.pid, job.id):
                kill_group(job.pid)  # type: ignore[arg-type]


def job_row(app: App, job_id: str) -> Job:
    with app.db.session() as s:
        return s.get_one(Job, job_id)


def run_until_done(ex: LocalExecutor, job_id: str, timeout: float = 20) -> Job:
    assert ex.run_until(lambda: ex.is_finished(job_id), poll=0.05, timeout=timeout), "job did not finish"
    with ex.db.session() as s:
        return s.get_one(Job, job_id)


def drive_until(ex: LocalExecutor | None, predicate: Callable[[], bool], timeout: float = 20) -> None:
    """Tick ``ex`` (if any) until ``predicate`` holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        if ex is not None:
            ex.tick()
        time.sleep(0.05)


def submit_sleep(app: App, **spec: Any) -> Job:
    opts = {k: spec.pop(k) for k in ("priority", "max_attempts", "resources", "name") if k in spec}
    spec.setdefault("sleep", 0.05)
    return jobs.submit(app, "sleep", spec, **opts)
