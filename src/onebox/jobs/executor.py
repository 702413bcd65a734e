"""The local executor: one worker subprocess per job, started while the job fits what is free.

``tick()`` is one scheduling pass; ``run_until``/``run_forever`` loop over it. State lives in the
store, not in this object, so a control process that restarts re-attaches to workers that are
still alive (by pid, checked against the worker's command line) and re-queues or fails the jobs
whose workers are gone. Workers run in their own session: stopping the control process (Ctrl+C)
leaves them running, and a SIGKILL of the group takes their children down with them.

Scheduling is strict priority, then age: when the first queued job does not fit, nothing after it
starts (no backfilling), so a large job is never starved by a stream of small ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from pydantic import SecretStr
from sqlalchemy import select

from onebox import pidlock
from onebox.config import Settings
from onebox.errors import ExecutorBusyError, OneboxError
from onebox.jobs import procs, state
from onebox.jobs.resources import Resources, machine_capacity, visible_gpu_ids
from onebox.jobs.worker import HEARTBEAT_ENV
from onebox.store.db import Database
from onebox.store.tables import Job, utcnow

logger = logging.getLogger(__name__)


@dataclass
class _Worker:
    job_id: str
    pid: int
    resources: Resources
    devices: list[str]
    proc: subprocess.Popen[bytes] | None  # None when re-attached after a restart
    started: float = field(default_factory=time.monotonic)
    terminated_at: float | None = None  # when we sent SIGTERM for a cancel
    ended_at: float | None = None  # when we first saw its outcome recorded while it still ran
    killed_for: str | None = None  # why we sent SIGKILL (heartbeat lost, cancel grace over)


@dataclass
class TickReport:
    """What one scheduling pass did (for the CLI to print)."""

    started: list[str] = field(default_factory=list)
    finished: list[tuple[str, str]] = field(default_factory=list)  # (job id, status)
    reattached: list[str] = field(default_factory=list)
    killed: list[tuple[str, str]] = field(default_factory=list)  # (job id, reason)

    def __bool__(self) -> bool:
        return bool(self.started or self.finished or self.reattached or self.killed)


def _settings_env(settings: Settings) -> dict[str, str]:
    """The executor's settings as ONEBOX_* variables, so the worker reads the same store."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None:
            continue
        # pydantic-settings reads complex values (lists, dicts) from the environment as JSON.
        plain = isinstance(value, str | int | float | bool | Path)
        env[f"ONEBOX_{name.upper()}"] = str(value) if plain else json.dumps(value, default=str)
    env["ONEBOX_DATABASE_URL"] = settings.db_url
    env["ONEBOX_ARTIFACTS"] = settings.artifacts_url
    return env


class LocalExecutor:
    """Runs queued jobs of this machine's store as ``python -m onebox.jobs.worker <id>`` processes.

    ``capacity`` defaults to the machine; ``heartbeat_timeout`` is how stale a heartbeat may get
    before the worker is killed and treated as dead; ``cancel_grace`` is how long a cancelled
    worker has to stop after SIGTERM before it is SIGKILLed with its process group.
    """

    def __init__(
        self,
        settings: Settings,
        capacity: Resources | None = None,
        *,
        heartbeat_interval: float = 2.0,
        heartbeat_timeout: float = 60.0,
        cancel_grace: float = 30.0,
        python: str = sys.executable,
    ) -> None:
        self.settings = settings
        self.capacity = capacity or machine_capacity()
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.cancel_grace = cancel_grace
        self.python = python
        self.host = procs.hostname()
        self.db = Database(settings.db_url)
        self.workers: dict[str, _Worker] = {}
        gpu_ids = visible_gpu_ids() if self.capacity.gpus else []
        self._gpu_ids = (gpu_ids or [str(i) for i in range(self.capacity.gpus)])[: self.capacity.gpus]
        self._lock_file: IO[str] | None = None
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> TickReport:
        """Take the executor lock of this home and recover jobs a previous control process left.

        Called by the first ``tick``; raises ExecutorBusyError when another executor holds it."""
        report = TickReport()
        if self._started:
            return report
        home = self.settings.home
        self._lock_file = pidlock.acquire(
            home / "jobs" / "executor.lock",
            lambda holder: ExecutorBusyError(
                f"another onebox executor (pid {holder}) is already running the jobs of {home}; "
                "stop it or let it run them"
            ),
        )
        self._started = True
        self._recover(report)
        return report

    def close(self) -> None:
        """Stop supervising (as if the control process exited); workers keep running."""
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None
        for w in self.workers.values():
            if w.proc is not None:
                # Forget the child without a "still running" warning: the next executor re-attaches.
                w.proc.returncode = 0
        self.workers.clear()
        self._started = False
        self.db.dispose()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _recover(self, report: TickReport) -> None:
        with self.db.session() as s:
            rows = s.execute(
                select(Job.id, Job.pid, Job.host, Job.resources, Job.devices).where(
                    Job.status.in_(state.ACTIVE)
                )
            ).all()
        for job_id, pid, host, resources, devices in rows:
            if host not in (None, self.host):
                continue  # another machine's executor looks after it
            if pid and procs.worker_alive(pid, job_id):
                self.workers[job_id] = _Worker(job_id, pid, _resources(resources), list(devices or []), None)
                report.reattached.append(job_id)
                with self.db.session() as s:
                    job = s.get_one(Job, job_id)
                    state.record_event(s, job, "job.reattached", f"executor re-attached to worker pid {pid}")
                logger.info("re-attached to job %s (pid %s)", job_id, pid)
            else:
                why = "its worker is gone (the control process restarted)"
                if not pid:
                    why = "it never got a worker (the control process stopped while starting it)"
                with self.db.session() as s:
                    new = state.worker_lost(s, job_id, why)
                if new:
                    report.finished.append((job_id, new))

    # -- scheduling --------------------------------------------------------------------------

    @property
    def used(self) -> Resources:
        total = Resources(0.0, 0, 0)
        for w in self.workers.values():
            total = total + w.resources
        return total

    @property
    def free(self) -> Resources:
        return self.capacity - self.used

    def tick(self) -> TickReport:
        """One pass: reap finished workers, detect dead ones, enforce heartbeats and cancel grace,
        then start queued jobs by priority and age while they fit what is free."""
        report = self.start() if not self._started else TickReport()
        self._reap(report)
        self._enforce(report)
        self._schedule(report)
        return report

    def _reap(self, report: TickReport) -> None:
        for w in list(self.workers.values()):
            if w.proc is not None:
                code = w.proc.poll()
                if code is None:
                    continue
            else:
                if procs.worker_alive(w.pid, w.job_id):
                    continue
                code = procs.reap(w.pid)
            del self.workers[w.job_id]
            with self.db.session() as s:
                job = s.get(Job, w.job_id)
                if job is None:
                    continue
                if job.status in state.ACTIVE:
                    new = state.worker_lost(s, w.job_id, _death_reason(code, w.killed_for), exit_code=code)
                    status = new or job.status
                else:
                    status = job.status
                    if code is not None and job.exit_code != code:
                        job.exit_code = code
            report.finished.append((w.job_id, status))

    def _enforce(self, report: TickReport) -> None:
        if not self.workers:
            return
        with self.db.session() as s:
            rows = {
                r.id: r
                for r in s.execute(
                    select(Job.id, Job.status, Job.heartbeat_at, Job.cancel_requested_at).where(
                        Job.id.in_(list(self.workers))
                    )
                )
            }
        now = utcnow()
        for w in self.workers.values():
            row = rows.get(w.job_id)
            if row is None or w.killed_for:
                continue
            if row.status in state.TERMINAL:
                # The outcome is recorded; a worker that does not exit (a stray non-daemon thread)
                # would hold its resources forever.
                w.ended_at = w.ended_at or time.monotonic()
                if time.monotonic() - w.ended_at > self.cancel_grace:
                    self._kill(w, f"still running {self.cancel_grace:g}s after recording its outcome", report)
                continue
            if row.status == state.CANCELLING:
                if w.terminated_at is None:
                    procs.terminate(w.pid)  # the canceller may live elsewhere; SIGTERM is idempotent
                    w.terminated_at = time.monotonic()
                asked = row.cancel_requested_at or now
                if now - asked > timedelta(seconds=self.cancel_grace):
                    self._kill(
                        w, f"did not stop within the {self.cancel_grace:g}s cancel grace period", report
                    )
                    continue
            beat = row.heartbeat_at
            if beat is not None and now - beat > timedelta(seconds=self.heartbeat_timeout):
                age = (now - beat).total_seconds()
                self._kill(w, f"no heartbeat for {age:.0f}s (timeout {self.heartbeat_timeout:g}s)", report)

    def _kill(self, w: _Worker, reason: str, report: TickReport) -> None:
        logger.warning("killing job %s (pid %d): %s", w.job_id, w.pid, reason)
        w.killed_for = reason
        procs.kill_group(w.pid)
        report.killed.append((w.job_id, reason))

    def _schedule(self, report: TickReport) -> None:
        with self.db.session() as s:
            queued = s.execute(
                select(Job.id, Job.resources)
                .where(Job.status == state.QUEUED)
                .order_by(Job.priority.desc(), Job.created_at, Job.id)
            ).all()
        for job_id, resources in queued:
            need = _resources(resources)
            if not need.fits(self.capacity):
                with self.db.session() as s:
                    self._fail_unfittable(s, job_id, need)
                report.finished.append((job_id, state.FAILED))
                continue
            if not need.fits(self.free):
                break  # strict order: nothing jumps ahead of a job that is waiting for room
            if self._launch(job_id, need):
                report.started.append(job_id)

    def _fail_unfittable(self, s: Any, job_id: str, need: Resources) -> None:
        problems = "; ".join(str(p) for p in need.shortfall(self.capacity))
        state.end_queued(s, job_id, state.FAILED, error=f"can never start on this executor: {problems}")

    def _launch(self, job_id: str, need: Resources) -> bool:
        with self.db.session() as s:
            job = state.claim(s, job_id, self.host)
            if job is None:
                return False
        used_gpus = {d for w in self.workers.values() for d in w.devices}
        devices = [d for d in self._gpu_ids if d not in used_gpus][: need.gpus]
        log_path = state.log_file(self.settings, job_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **_settings_env(self.settings),
            HEARTBEAT_ENV: str(self.heartbeat_interval),
            "CUDA_VISIBLE_DEVICES": ",".join(devices),
            "PYTHONUNBUFFERED": "1",
        }
        threads = str(max(1, math.floor(need.cpus)))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, threads)
        # Workers share the box with the control process and other jobs: spinning OpenMP threads
        # that wait on a descheduled sibling made generation ~10x slower under contention (measured
        # 295 s vs 30 s for the demo evaluation on 2 busy cores); passive waiting avoids that.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(
                    [self.python, "-m", procs.WORKER_MODULE, job_id],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
        except OSError as exc:
            with self.db.session() as s:
                state.finish(s, job_id, state.FAILED, error=f"cannot start a worker: {exc}")
            return False
        self.workers[job_id] = _Worker(job_id, proc.pid, need, devices, proc)
        with self.db.session() as s:
            state.set_worker(s, job_id, proc.pid, self.host, devices)
            row = s.get(Job, job_id)
            if row is not None and row.log_path != str(log_path):
                row.log_path = str(log_path)
        logger.info("started job %s as pid %d", job_id, proc.pid)
        return True

    # -- loops -------------------------------------------------------------------------------

    def idle(self) -> bool:
        """No worker is running and nothing this executor could start is queued."""
        if self.workers:
            return False
        with self.db.session() as s:
            return s.scalar(select(Job.id).where(Job.status == state.QUEUED).limit(1)) is None

    def is_finished(self, job_id: str) -> bool:
        """The job has ended and, if this executor ran it, its worker has exited and was reaped."""
        if job_id in self.workers:
            return False
        with self.db.session() as s:
            job = s.get(Job, job_id)
            return job is None or job.status in state.TERMINAL

    def run_until(
        self,
        predicate: Callable[[], bool],
        poll: float = 0.5,
        timeout: float | None = None,
        on_tick: Callable[[TickReport], None] | None = None,
    ) -> bool:
        """Tick until ``predicate()`` holds (True) or ``timeout`` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            report = self.tick()
            if on_tick is not None:
                on_tick(report)
            if predicate():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(poll)

    def run_forever(self, poll: float = 0.5, on_tick: Callable[[TickReport], None] | None = None) -> None:
        self.run_until(lambda: False, poll=poll, on_tick=on_tick)


def _resources(value: Any) -> Resources:
    try:
        return Resources.parse(value)
    except OneboxError:
        return Resources()


def _death_reason(code: int | None, killed_for: str | None) -> str:
    if killed_for:
        return f"worker killed: {killed_for}"
    if code is None:
        return "worker disappeared"
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker killed by {name}"
    return f"worker exited with code {code} without reporting an outcome"
