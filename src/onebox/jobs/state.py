"""Job statuses and the transitions between them, as conditional updates in the store.

Executor, worker and services change a job's status only through these functions. Each update
names the status it expects (``WHERE status IN ...``), so two processes racing on one job (a
worker finishing while a user cancels) cannot overwrite each other: the loser sees rowcount 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from onebox.config import Settings
from onebox.store.tables import Event, Job, new_id, utcnow

QUEUED = "queued"
RUNNING = "running"
CANCELLING = "cancelling"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
STATUSES = (QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (RUNNING, CANCELLING)
"""A worker holds the job (or is being started for it)."""
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)

CHECKPOINT_MARKER = ".checkpoint.json"
"""Written into the work dir by ``JobContext.mark_checkpoint``; ``resume`` needs it."""


def work_dir(settings: Settings, job_id: str) -> Path:
    """Where a job keeps its checkpoints and log; it survives retries and resumes."""
    return settings.home / "jobs" / job_id


def log_file(settings: Settings, job_id: str) -> Path:
    return work_dir(settings, job_id) / "job.log"


def record_event(
    session: Session, job: Job, kind: str, message: str, severity: str = "info", **data: Any
) -> None:
    # Written directly (not through services.events) because jobs sit below services.
    session.add(
        Event(
            id=new_id("evt"),
            project_id=job.project_id,
            resource_type="job",
            resource_id=job.id,
            kind=kind,
            severity=severity,
            message=message,
            data=data,
        )
    )


def _update(session: Session, job_id: str, expect: tuple[str, ...], **values: Any) -> bool:
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(expect))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]


def claim(session: Session, job_id: str, host: str) -> Job | None:
    """queued -> running for a launch: counts the attempt. None if someone else got there first."""
    job = session.get(Job, job_id)
    if job is None or job.status != QUEUED:
        return None
    now = utcnow()
    ok = _update(
        session,
        job_id,
        (QUEUED,),
        status=RUNNING,
        attempts=Job.attempts + 1,
        started_at=now,
        heartbeat_at=now,
        finished_at=None,
        host=host,
        pid=None,
        exit_code=None,
    )
    if not ok:
        return None
    session.refresh(job)
    record_event(
        session,
        job,
        "job.started",
        f"attempt {job.attempts} of {job.max_attempts} on {host}",
        attempt=job.attempts,
        host=host,
    )
    return job


def set_worker(session: Session, job_id: str, pid: int, host: str, devices: list[str] | None = None) -> bool:
    """Record the worker process holding an active job."""
    values: dict[str, Any] = {"pid": pid, "host": host, "heartbeat_at": utcnow()}
    if devices is not None:
        values["devices"] = devices
    return _update(session, job_id, ACTIVE, **values)


def finish(
    session: Session,
    job_id: str,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    exit_code: int | None = None,
) -> bool:
    """An active job ends (the worker reports its outcome). False if it was no longer active."""
    assert status in TERMINAL
    job = session.get(Job, job_id)
    if job is None:
        return False
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
    if result is not None:
        values["result"] = result
    if status == SUCCEEDED:
        values["progress"] = 1.0
    if exit_code is not None:
        values["exit_code"] = exit_code
    if not _update(session, job_id, ACTIVE, **values):
        return False
    message = {SUCCEEDED: "succeeded", CANCELLED: "cancelled", FAILED: f"failed: {error}"}[status]
    record_event(
        session,
        job,
        f"job.{status}",
        message,
        severity="error" if status == FAILED else "info",
        attempt=job.attempts,
    )
    return True


def worker_lost(session: Session, job_id: str, reason: str, exit_code: int | None = None) -> str | None:
    """The worker of an active job is gone without reporting an outcome (killed, crashed, lost).

    A cancel that was asked for is honoured; otherwise the job is re-queued while attempts remain
    (its handler resumes from the checkpoint in the work dir) and failed after the last one.
    Returns the new status, or None when the job was not active any more.
    """
    for _ in range(5):  # retried only if another process changed the row in between
        job = session.get(Job, job_id, populate_existing=True)
        if job is None or job.status not in ACTIVE:
            return None
        base: dict[str, Any] = {"pid": None, "exit_code": exit_code}
        if job.cancel_requested:
            status, error, kind = CANCELLED, None, "job.cancelled"
            message = f"cancelled ({reason})"
        elif job.attempts < job.max_attempts:
            status, kind = QUEUED, "job.requeued"
            error = f"attempt {job.attempts} of {job.max_attempts}: {reason}"
            message = f"{reason}; re-queued (attempt {job.attempts} of {job.max_attempts} used)"
        else:
            status, kind = FAILED, "job.failed"
            error = f"{reason}; gave up after {job.attempts} attempts"
            message = f"failed: {error}"
        values = base | {"status": status, "error": error}
        if status != QUEUED:
            values["finished_at"] = utcnow()
        if _update(session, job_id, (job.status,), **values):
            record_event(
                session,
                job,
                kind,
                message,
                severity="warning" if status == QUEUED else "error",
                reason=reason,
                attempt=job.attempts,
                exit_code=exit_code,
            )
            return status
    return None


def end_queued(session: Session, job_id: str, status: str, *, error: str | None = None) -> bool:
    """A queued job ends without ever running (cancelled, or it can never fit)."""
    assert status in (CANCELLED, FAILED)
    now = utcnow()
    values: dict[str, Any] = {"status": status, "error": error, "finished_at": now}
    if status == CANCELLED:
        values |= {"cancel_requested": True, "cancel_requested_at": now}
    job = session.get(Job, job_id)
    if job is None or not _update(session, job_id, (QUEUED,), **values):
        return False
    message = "cancelled before it started" if status == CANCELLED else f"failed: {error}"
    record_event(session, job, f"job.{status}", message, severity="error" if status == FAILED else "info")
    return True


def request_cancel(session: Session, job_id: str) -> bool:
    """running -> cancelling with the flag set (the worker polls it, the executor enforces it)."""
    return _update(
        session,
        job_id,
        (RUNNING,),
        status=CANCELLING,
        cancel_requested=True,
        cancel_requested_at=utcnow(),
    )


def requeue(session: Session, job_id: str, expect: tuple[str, ...], *, reset_attempts: bool) -> bool:
    """A finished job goes back to the queue (retry, resume); its work dir is kept."""
    values: dict[str, Any] = {
        "status": QUEUED,
        "error": None,
        "result": {},
        "finished_at": None,
        "pid": None,
        "exit_code": None,
        "cancel_requested": False,
        "cancel_requested_at": None,
    }
    if reset_attempts:
        values["attempts"] = 0
    return _update(session, job_id, expect, **values)
