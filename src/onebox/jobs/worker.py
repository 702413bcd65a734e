"""``python -m onebox.jobs.worker <job-id>``: run one job in this process.

Every executor starts jobs through this entrypoint (the local one as a subprocess, Ray as a
task), so the behaviour is the same everywhere: take the job over in the store, log to the job
log, beat a heartbeat from a thread (which also picks up the cancel flag), translate SIGTERM into
``ctx.should_stop()``, run the handler and record its outcome.

Exit codes: 0 succeeded or cancelled, 1 failed, 2 the job cannot be run here (missing, finished,
or held by another live worker), 8 metadata store unreachable.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from onebox.config import Settings, load_settings
from onebox.errors import OneboxError
from onebox.jobs import state
from onebox.jobs.context import JobContext
from onebox.jobs.procs import hostname, worker_alive
from onebox.jobs.registry import handler_path, import_handler
from onebox.jobs.resources import Resources
from onebox.store.db import Database
from onebox.store.tables import Job, Project, utcnow

HEARTBEAT_ENV = "ONEBOX_JOB_HEARTBEAT_S"
"""Seconds between heartbeats; the executor passes it (default 2)."""
DEFAULT_HEARTBEAT_S = 2.0
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

EXIT_OK, EXIT_FAILED, EXIT_NOT_RUNNABLE, EXIT_STORE = 0, 1, 2, 8


def _json_safe(obj: Any) -> Any:
    """Results go into JSON columns: non-finite floats become None, unknown objects strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    return str(obj)


def _log_handler(path: Path) -> logging.Handler:
    """Log to stderr when the executor already points it at the job log, else append to the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.exists() and os.path.samestat(os.fstat(sys.stderr.fileno()), os.stat(path)):
            handler: logging.Handler = logging.StreamHandler(sys.stderr)
        else:
            handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    except (OSError, ValueError, AttributeError):  # stderr replaced by something without a file
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


class _Heartbeat(threading.Thread):
    """Beats, flushes pending progress and turns the store's cancel flag into ``should_stop``."""

    def __init__(self, db: Database, ctx: JobContext, interval: float, signalled: list[int]) -> None:
        super().__init__(name=f"heartbeat-{ctx.job_id}", daemon=True)
        self.db, self.ctx, self.interval, self.signalled = db, ctx, interval, signalled
        self.done = threading.Event()
        self._told = False

    def run(self) -> None:
        # Wake often to report a signal promptly, beat every ``interval``.
        last = time.monotonic()
        while not self.done.wait(min(self.interval, 0.2)):
            if self.signalled:
                self._tell(f"received {_signal_name(self.signalled[0])}; stopping at the next safe point")
            if time.monotonic() - last >= self.interval:
                last = time.monotonic()
                self.beat()

    def beat(self) -> None:
        ctx = self.ctx
        try:
            ctx.flush()
            with self.db.session() as s:
                row = s.execute(
                    select(Job.status, Job.cancel_requested).where(Job.id == ctx.job_id)
                ).one_or_none()
                s.execute(
                    update(Job)
                    .where(Job.id == ctx.job_id, Job.status.in_(state.ACTIVE))
                    .values(heartbeat_at=utcnow())
                    .execution_options(synchronize_session=False)
                )
        except (SQLAlchemyError, OSError) as exc:
            ctx.log.warning("heartbeat failed (will retry): %s", exc)
            return
        if row is None or row.status not in state.ACTIVE:
            ctx.request_stop()
            self._tell(f"the job is {row.status if row else 'gone'} in the store; stopping")
        elif row.cancel_requested:
            ctx.request_stop()
            self._tell("cancel requested; stopping at the next safe point")

    def _tell(self, message: str) -> None:
        if not self._told:
            self._told = True
            self.ctx.log.warning(message)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=30)
        if self.signalled:  # a signal that came in too late for the thread to report it
            self._tell(f"received {_signal_name(self.signalled[0])}; stopped")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _take_over(db: Database, job_id: str) -> dict[str, Any] | str:
    """Make this process the job's worker; returns a snapshot of the job, or why it cannot run."""
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            return f"job {job_id} does not exist"
        if job.status == state.QUEUED:  # started by hand rather than by an executor
            job = state.claim(s, job_id, hostname())
            if job is None:
                return f"job {job_id} was taken by another worker"
        elif job.status not in state.ACTIVE:
            return f"job {job_id} is {job.status}; nothing to run"
        elif job.pid not in (None, os.getpid()) and job.host == hostname() and worker_alive(job.pid, job_id):
            return f"job {job_id} is already run by worker pid {job.pid}"
        if not state.set_worker(s, job_id, os.getpid(), hostname()):
            return f"job {job_id} is no longer active"
        project = s.get(Project, job.project_id)
        return {
            "type": job.type,
            "handler": job.handler,
            "spec": dict(job.spec or {}),
            "resources": dict(job.resources or {}),
            "attempt": job.attempts,
            "max_attempts": job.max_attempts,
            "checkpoint_step": job.checkpoint_step,
            "cancel_requested": job.cancel_requested,
            "project": project.name if project else None,
        }


def run_job(
    settings: Settings,
    job_id: str,
    *,
    heartbeat_s: float | None = None,
    install_signals: bool = True,
) -> int:
    """Run job ``job_id`` to an outcome in this process; returns the worker's exit code."""
    db = Database(settings.db_url)
    try:
        try:
            snap = _take_over(db, job_id)
        except SQLAlchemyError as exc:
            print(f"onebox worker: cannot reach the metadata store: {exc}", file=sys.stderr)
            return EXIT_STORE
        if isinstance(snap, str):
            print(f"onebox worker: {snap}", file=sys.stderr)
            return EXIT_NOT_RUNNABLE
        return _run(db, settings, job_id, snap, heartbeat_s, install_signals)
    finally:
        db.dispose()


def _run(
    db: Database,
    settings: Settings,
    job_id: str,
    snap: dict[str, Any],
    heartbeat_s: float | None,
    install_signals: bool,
) -> int:
    log = logging.getLogger(f"onebox.job.{job_id}")
    log.setLevel(logging.INFO)
    handler = _log_handler(state.log_file(settings, job_id))
    log.addHandler(handler)
    log.propagate = False
    stop = threading.Event()
    signalled: list[int] = []
    previous: dict[int, Any] = {}
    if install_signals and threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, _frame: Any) -> None:
            # No logging here (not signal-safe); the heartbeat thread reports it.
            signalled.append(signum)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        resources = Resources.parse(snap["resources"])
    except OneboxError:
        resources = Resources()
    ctx = JobContext(
        job_id=job_id,
        job_type=snap["type"],
        spec=snap["spec"],
        resources=resources,
        attempt=snap["attempt"],
        work_dir=state.work_dir(settings, job_id),
        settings=settings,
        log=log,
        db=db,
        project=snap["project"],
        checkpoint_step=snap["checkpoint_step"],
        stop_event=stop,
    )
    interval = heartbeat_s or float(os.environ.get(HEARTBEAT_ENV) or DEFAULT_HEARTBEAT_S)
    beat = _Heartbeat(db, ctx, interval, signalled)
    log.info(
        "=== %s job %s, attempt %d of %d, pid %d on %s ===",
        snap["type"],
        job_id,
        snap["attempt"],
        snap["max_attempts"],
        os.getpid(),
        hostname(),
    )
    beat.start()
    result: dict[str, Any] | None = None
    error: str | None = None
    try:
        if snap["cancel_requested"]:
            log.info("cancelled before it started")
            status = state.CANCELLED
        else:
            fn = import_handler(snap["handler"] or handler_path(snap["type"]), snap["type"])
            out = fn(ctx)
            if out is not None and not isinstance(out, dict):
                raise TypeError(f"the {snap['type']} handler returned {type(out).__name__}, not a dict")
            result = _json_safe(out or {})
            status = state.CANCELLED if ctx.should_stop() else state.SUCCEEDED
            log.info("handler returned: %s", status)
    except OneboxError as exc:
        log.error("job failed: %s", exc, exc_info=True)
        status, error = state.FAILED, str(exc)
    except BaseException as exc:  # the worker must record every outcome, even SystemExit
        log.exception("job failed with an unexpected error")
        status, error = state.FAILED, f"{type(exc).__name__}: {exc} (traceback in the job log)"
    finally:
        beat.stop()
    code = EXIT_FAILED if status == state.FAILED else EXIT_OK
    try:
        ctx.flush()
    except (SQLAlchemyError, OSError) as exc:
        log.warning("could not write the last progress: %s", exc)
    ctx.close()
    with db.session() as s:
        if not state.finish(s, job_id, status, result=result, error=error, exit_code=code):
            row = s.get(Job, job_id)
            log.warning("outcome %s not recorded: the job is %s", status, row.status if row else "gone")
    log.info("=== %s ===", status)
    for sig, old in previous.items():
        signal.signal(sig, old)
    log.removeHandler(handler)
    handler.close()
    return code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m onebox.jobs.worker <job-id>", file=sys.stderr)
        return EXIT_NOT_RUNNABLE
    try:
        settings = load_settings()
    except OneboxError as exc:
        print(f"onebox worker: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNABLE
    root = logging.getLogger()
    if not root.handlers:  # library warnings (transformers, torch) go to the job log too
        logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)
    return run_job(settings, args[0])


if __name__ == "__main__":
    sys.exit(main())
