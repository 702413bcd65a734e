"""Jobs: submit, inspect, cancel, retry, resume, logs and metrics.

Executors (``onebox.jobs.executor``) run what is queued here; every status change goes through
``onebox.jobs.state`` so that services, executor and workers agree on the transitions. Jobs are
named by id or by a unique prefix of it (``job_3f2a`` or just ``3f2a``).
"""

from __future__ import annotations

import getpass
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from onebox.errors import (
    ErrorList,
    InvalidInputError,
    JobStateError,
    NoCheckpointError,
    NotFoundError,
    OneboxError,
    Problem,
)
from onebox.jobs import procs, state
from onebox.jobs.registry import handler_path
from onebox.jobs.resources import Resources, check_fits_machine, machine_capacity
from onebox.security.quotas import check_job_slots
from onebox.services import events
from onebox.services.context import App
from onebox.services.names import validate_name
from onebox.services.projects import get_project
from onebox.store.tables import DatasetVersion, Job, JobMetric, ModelVersion, new_id

MAX_ATTEMPTS_LIMIT = 100


def _project_id(session: Session, app: App) -> str:
    return get_project(session, app.settings.project).id


def _owner() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return None


def submit(
    app: App,
    type: str,
    spec: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    priority: int = 0,
    resources: Resources | dict[str, Any] | None = None,
    max_attempts: int = 3,
    input_model_version_id: str | None = None,
    input_dataset_version_id: str | None = None,
    owner: str | None = None,
    capacity: Resources | None = None,
) -> Job:
    """Queue a job. Refuses an unknown type, a spec that is not a JSON object, and resources that
    could never fit ``capacity`` (default: this machine), each with a clear error."""
    path = handler_path(type)  # UnknownJobTypeError names the known types
    errors = ErrorList()
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        errors.add("spec", f"must be a JSON object, not {_type_name(spec)}")
    else:
        try:
            json.dumps(spec, allow_nan=False)
        except (TypeError, ValueError) as exc:
            errors.add("spec", f"is not plain JSON: {exc}", "use strings, numbers, lists and objects")
    if isinstance(priority, bool) or not isinstance(priority, int):
        errors.add("priority", f"{priority!r} is not a whole number")
    if (
        isinstance(max_attempts, bool)
        or not isinstance(max_attempts, int)
        or not (1 <= max_attempts <= MAX_ATTEMPTS_LIMIT)
    ):
        errors.add("max_attempts", f"{max_attempts!r} is not between 1 and {MAX_ATTEMPTS_LIMIT}")
    errors.raise_if_any(f"invalid {type} job", InvalidInputError)
    if name is not None:
        validate_name(name, "name")
    request = Resources.parse(resources)
    check_fits_machine(request, capacity or machine_capacity(gpus=request.gpus > 0))
    with app.db.session() as s:
        pid = _project_id(s, app)
        check_job_slots(s, pid)  # QuotaExceededError when the project's job slots are full
        if input_model_version_id and s.get(ModelVersion, input_model_version_id) is None:
            raise NotFoundError(f"model version {input_model_version_id} does not exist")
        if input_dataset_version_id and s.get(DatasetVersion, input_dataset_version_id) is None:
            raise NotFoundError(f"dataset version {input_dataset_version_id} does not exist")
        job_id = new_id("job")
        job = Job(
            id=job_id,
            project_id=pid,
            name=name or type,
            status=state.QUEUED,
            type=type,
            handler=path,
            priority=priority,
            spec=spec,
            resources=request.as_dict(),
            max_attempts=max_attempts,
            owner=owner or _owner(),
            log_path=str(state.log_file(app.settings, job_id)),
            input_model_version_id=input_model_version_id,
            input_dataset_version_id=input_dataset_version_id,
        )
        s.add(job)
        s.flush()
        events.record(
            s,
            project_id=pid,
            resource_type="job",
            resource_id=job.id,
            kind="job.submitted",
            message=f"submitted {type} job {job.name} (priority {priority}, {request})",
            type=type,
            priority=priority,
        )
        return job


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def get(app: App, job_id: str) -> Job:
    """A job of the current project by full id or unique prefix (``job_`` may be left out)."""
    key = job_id.strip()
    if not key:
        raise InvalidInputError("invalid job id", problems=[Problem("job", "must not be empty")])
    with app.db.session() as s:
        pid = _project_id(s, app)
        exact = s.get(Job, key)
        if exact is not None and exact.project_id == pid:
            return exact
        prefixes = [key] if key.startswith("job_") else [key, f"job_{key}"]
        for prefix in prefixes:
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            rows = s.scalars(
                select(Job)
                .where(Job.project_id == pid, Job.id.like(escaped + "%", escape="\\"))
                .order_by(Job.created_at.desc())
                .limit(6)
            ).all()
            if len(rows) == 1:
                return rows[0]
            if len(rows) > 1:
                shown = ", ".join(r.id for r in rows[:5])
                raise InvalidInputError(
                    f"job id prefix {key!r} matches {len(rows)} or more jobs ({shown}); give more characters"
                )
    raise NotFoundError(f"job {key!r} does not exist; see `onebox jobs list`")


def list_jobs(
    app: App, status: str | list[str] | None = None, *, type: str | None = None, limit: int | None = 100
) -> list[Job]:
    """Jobs of the current project, newest first, optionally only some statuses or one type."""
    wanted = [status] if isinstance(status, str) else list(status or [])
    bad = [s for s in wanted if s not in state.STATUSES]
    if bad:
        raise InvalidInputError(
            "invalid status",
            problems=[
                Problem("status", f"{b!r} is not a job status", f"use {', '.join(state.STATUSES)}")
                for b in bad
            ],
        )
    with app.db.session() as s:
        q = select(Job).where(Job.project_id == _project_id(s, app))
        if wanted:
            q = q.where(Job.status.in_(wanted))
        if type:
            q = q.where(Job.type == type)
        q = q.order_by(Job.created_at.desc(), Job.id.desc())
        if limit:
            q = q.limit(limit)
        return list(s.scalars(q))


def _record(s: Session, job: Job, kind: str, message: str, **data: Any) -> None:
    events.record(
        s,
        project_id=job.project_id,
        resource_type="job",
        resource_id=job.id,
        kind=kind,
        message=message,
        **data,
    )


def cancel(app: App, job_id: str, *, force: bool = False) -> Job:
    """Cancel a job: a queued one at once; a running one gracefully (its handler sees should_stop,
    and the executor SIGKILLs it after the grace period), or at once with ``force``."""
    job_id = get(app, job_id).id
    for _ in range(5):  # the job may change under us (a worker finishing, an executor starting it)
        with app.db.session() as s:
            job = s.get_one(Job, job_id, populate_existing=True)
            if job.status in state.TERMINAL:
                raise JobStateError(
                    f"job {job.id} already {job.status}; there is nothing to cancel",
                    job=job.id,
                    status=job.status,
                )
            if job.status == state.CANCELLING:
                break
            if job.status == state.QUEUED and state.end_queued(s, job.id, state.CANCELLED):
                _record(s, job, "job.cancel_requested", "cancelled while queued")
                break
            if job.status == state.RUNNING and state.request_cancel(s, job.id):
                _record(s, job, "job.cancel_requested", "cancel requested" + (" (forced)" if force else ""))
                break
    job = get(app, job_id)
    pid = job.pid
    if job.status != state.CANCELLING or job.host != procs.hostname() or not procs.worker_alive(pid, job.id):
        return job  # no worker here (yet): the worker or the executor picks the flag up
    assert pid is not None
    if not force:
        procs.terminate(pid)  # the executor would too; doing it here makes the cancel prompt
        return job
    procs.kill_group(pid)
    deadline = time.monotonic() + 5
    while procs.worker_alive(pid, job.id) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not procs.worker_alive(pid, job.id):
        with app.db.session() as s:
            state.worker_lost(s, job.id, "killed by a forced cancel")
    return get(app, job.id)


def _check_restartable(job: Job, verb: str) -> None:
    if job.status in (state.FAILED, state.CANCELLED):
        return
    if job.status == state.SUCCEEDED:
        raise JobStateError(f"job {job.id} succeeded; submit a new job to run it again", job=job.id)
    raise JobStateError(
        f"job {job.id} is {job.status}; only a failed or cancelled job can be {verb}", job=job.id
    )


def retry(app: App, job_id: str, *, fresh: bool = False) -> Job:
    """Queue a failed or cancelled job again with a new attempt budget. The work dir is kept, so a
    handler resumes from its checkpoint; ``fresh`` empties it (the log is kept) to start over."""
    job = get(app, job_id)
    _check_restartable(job, "retried")
    if fresh:
        wd = state.work_dir(app.settings, job.id)
        if wd.is_dir():
            for p in wd.iterdir():
                if p.name != "job.log":
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
    with app.db.session() as s:
        if not state.requeue(s, job.id, (state.FAILED, state.CANCELLED), reset_attempts=True):
            raise JobStateError(f"job {job.id} changed while retrying it; look again with `onebox jobs show`")
        if fresh:
            row = s.get_one(Job, job.id)
            row.checkpoint_step = None
            row.checkpoint_at = None
            row.progress = 0.0
            row.metrics = {}
        _record(s, job, "job.retried", "re-queued from the start" if fresh else "re-queued", fresh=fresh)
    return get(app, job.id)


def resume(app: App, job_id: str) -> Job:
    """Queue a failed or cancelled job again to continue from its last checkpoint; refuses when
    the job never marked one (or its work dir lost it)."""
    job = get(app, job_id)
    _check_restartable(job, "resumed")
    if job.checkpoint_step is None:
        raise NoCheckpointError(
            f"job {job.id} has no checkpoint to resume from; `onebox jobs retry {job.id}` runs it again",
            job=job.id,
        )
    marker = state.work_dir(app.settings, job.id) / state.CHECKPOINT_MARKER
    if job.host in (None, procs.hostname()) and not marker.is_file():
        raise NoCheckpointError(
            f"job {job.id} recorded a checkpoint at step {job.checkpoint_step}, but {marker.parent} "
            "no longer holds it; `onebox jobs retry --fresh` starts over",
            job=job.id,
        )
    with app.db.session() as s:
        if not state.requeue(s, job.id, (state.FAILED, state.CANCELLED), reset_attempts=True):
            raise JobStateError(f"job {job.id} changed while resuming it; look again with `onebox jobs show`")
        _record(s, job, "job.resumed", f"resuming from step {job.checkpoint_step}", step=job.checkpoint_step)
    return get(app, job.id)


def log_path(app: App, job: Job) -> Path:
    return Path(job.log_path) if job.log_path else state.log_file(app.settings, job.id)


def logs(app: App, job_id: str, *, tail: int | None = None) -> str:
    """The job's log (every attempt), or its last ``tail`` lines; empty before it first runs."""
    job = get(app, job_id)
    path = log_path(app, job)
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace")
    if tail is not None:
        if tail < 0:
            raise InvalidInputError("invalid tail", problems=[Problem("tail", f"{tail} is negative")])
        lines = text.splitlines(keepends=True)
        text = "".join(lines[-tail:]) if tail else ""
    return text


def follow(
    app: App,
    job_id: str,
    *,
    poll: float = 0.5,
    start_at_end: bool = False,
    tick: Callable[[], None] | None = None,
) -> Iterator[str]:
    """Yield what is appended to the job's log until the job has ended and the log is drained.

    ``tick`` is called between polls (to drive an executor in the same process)."""
    job = get(app, job_id)
    path = log_path(app, job)
    offset = path.stat().st_size if start_at_end and path.is_file() else 0
    while True:
        if tick is not None:
            tick()
        ended = _status(app, job.id) in state.TERMINAL
        if path.is_file():
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            if chunk:
                offset += len(chunk)
                yield chunk.decode("utf-8", errors="replace")
                continue
        if ended:
            return
        time.sleep(poll)


def _status(app: App, job_id: str) -> str:
    with app.db.session() as s:
        return s.scalar(select(Job.status).where(Job.id == job_id)) or state.FAILED


def metrics(app: App, job_id: str, name: str | None = None) -> list[dict[str, Any]]:
    """The job's metric time series, in step order (all attempts; a resumed step appears again)."""
    job = get(app, job_id)
    with app.db.session() as s:
        q = select(JobMetric).where(JobMetric.job_id == job.id)
        if name:
            q = q.where(JobMetric.name == name)
        rows = s.scalars(q.order_by(JobMetric.step, JobMetric.id))
        return [
            {
                "step": r.step,
                "name": r.name,
                "value": r.value,
                "attempt": r.attempt,
                "created_at": r.created_at.isoformat(),
            }
            for r in rows
        ]


def job_dict(job: Job) -> dict[str, Any]:
    """A job as plain JSON (for ``--json`` and the API)."""

    def iso(t: Any) -> str | None:
        return t.isoformat() if t is not None else None

    duration = None
    if job.started_at is not None:
        end = job.finished_at or (job.heartbeat_at if job.status in state.ACTIVE else None)
        if end is not None:
            duration = round((end - job.started_at).total_seconds(), 3)
    return {
        "id": job.id,
        "name": job.name,
        "type": job.type,
        "status": job.status,
        "priority": job.priority,
        "progress": job.progress,
        "metrics": job.metrics,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "resources": job.resources,
        "devices": job.devices,
        "spec": job.spec,
        "result": job.result,
        "error": job.error,
        "owner": job.owner,
        "host": job.host,
        "pid": job.pid,
        "exit_code": job.exit_code,
        "cancel_requested": job.cancel_requested,
        "checkpoint_step": job.checkpoint_step,
        "log_path": job.log_path,
        "inputs": {
            "model_version_id": job.input_model_version_id,
            "dataset_version_id": job.input_dataset_version_id,
        },
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "heartbeat_at": iso(job.heartbeat_at),
        "duration_s": duration,
    }


SEALED_RESULT = "result.sealed"
"""The file in a job folder holding a result that carries data (predictions, questions): with
encryption at rest a handler seals the full result there under the job's data key and returns a
copy without the data, which the database stores with ``sealed_result`` naming this file."""


def seal_result(app: App, job_id: str, full: dict[str, Any], public: dict[str, Any]) -> dict[str, Any]:
    """What a handler returns for a result holding data: ``full`` as is when encryption is off;
    else ``public`` (the same without the data), the full result being sealed in the job folder."""
    from onebox.services import encryption

    sealer = encryption.sealer(app, f"job-{job_id}")
    if sealer is None:
        return full
    data = json.dumps(full, ensure_ascii=False, default=str).encode()
    sealer.write(state.work_dir(app.settings, job_id) / SEALED_RESULT, data, SEALED_RESULT)
    return {**public, "sealed_result": SEALED_RESULT}


def full_result(app: App, job_id: str, result: dict[str, Any] | None) -> dict[str, Any] | None:
    """A job's result with its sealed part opened (every reader of results goes through this);
    raises TamperedError or KeyUnavailableError when the sealed file cannot be opened."""
    if not result or result.get("sealed_result") != SEALED_RESULT:
        return result
    from onebox.services import encryption

    sealer = encryption.opener(app, f"job-{job_id}")
    path = state.work_dir(app.settings, job_id) / SEALED_RESULT
    if not path.is_file():
        raise NotFoundError(f"the sealed result of job {job_id} is missing from {path.parent}", job=job_id)
    full: dict[str, Any] = json.loads(sealer.read(path, SEALED_RESULT))
    return full


def show(app: App, job_id: str) -> dict[str, Any]:
    """A job with its events and a summary of its metrics (last value and count per name); a
    sealed result is opened, or kept without its data and with ``sealed_result_error`` saying why."""
    job = get(app, job_id)
    out = job_dict(job)
    try:
        out["result"] = full_result(app, job.id, out["result"])
    except OneboxError as exc:
        out["sealed_result_error"] = f"{exc.code}: {exc.message}"
    with app.db.session() as s:
        out["events"] = [
            {
                "kind": e.kind,
                "message": e.message,
                "severity": e.severity,
                "created_at": e.created_at.isoformat(),
            }
            for e in events.for_resource(s, "job", job.id)
        ]
        last_step = (
            select(JobMetric.name, func.max(JobMetric.id).label("last"), func.count().label("n"))
            .where(JobMetric.job_id == job.id)
            .group_by(JobMetric.name)
            .subquery()
        )
        rows = s.execute(
            select(JobMetric.name, JobMetric.step, JobMetric.value, last_step.c.n).join(
                last_step, JobMetric.id == last_step.c.last
            )
        )
        out["metric_series"] = {
            name: {"last_step": step, "last_value": value, "points": n} for name, step, value, n in rows
        }
    return out
