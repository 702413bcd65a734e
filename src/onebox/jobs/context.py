"""What a job handler gets: its spec, a work dir, a logger, and ways to report back.

Reports are cheap to call from a training loop: ``progress`` is written at most once per
``progress_interval`` (the heartbeat thread flushes what is pending), metric points are written
in batches, and only ``mark_checkpoint`` writes at once, because resume depends on it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, update

from onebox.config import Settings
from onebox.errors import InvalidInputError
from onebox.fsutil import atomic_write_json
from onebox.jobs.resources import Resources
from onebox.jobs.state import ACTIVE, CHECKPOINT_MARKER
from onebox.store.db import Database
from onebox.store.tables import Job, JobMetric, utcnow

if TYPE_CHECKING:
    from onebox.services.context import App

METRIC_BATCH = 500


def _finite(value: Any) -> float | None:
    """Metric values as floats; NaN and infinities become None (JSON and SQLite cannot hold them)."""
    v = float(value)
    return v if math.isfinite(v) else None


class JobContext:
    """Passed to a handler ``run(ctx) -> dict``; see the module docstring for the write policy."""

    def __init__(
        self,
        *,
        job_id: str,
        job_type: str,
        spec: dict[str, Any],
        resources: Resources,
        attempt: int,
        work_dir: Path,
        settings: Settings,
        log: logging.Logger,
        db: Database,
        project: str | None = None,
        checkpoint_step: int | None = None,
        progress_interval: float = 1.0,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.job_id = job_id
        self.job_type = job_type
        self.spec = spec
        self.resources = resources
        self.attempt = attempt
        self.work_dir = work_dir
        self.settings = settings
        self.log = log
        self.project = project or settings.project
        self._db = db
        self._checkpoint_step = checkpoint_step
        self._interval = progress_interval
        self._stop = stop_event or threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[str, Any] | None = None
        self._last_write = -math.inf  # the first report is written at once
        self._metric_rows: list[dict[str, Any]] = []
        self._last_metric_write = time.monotonic()
        self._rate_origin: tuple[float, float] | None = None  # (time, done) of this attempt's first report
        self._app: App | None = None
        work_dir.mkdir(parents=True, exist_ok=True)

    # -- reporting -------------------------------------------------------------------------

    def progress(self, done: float, total: float | None = None, **metrics: float) -> None:
        """Report ``done`` of ``total`` units (steps, rows) and the latest metrics (loss, tokens_per_s).

        The job's progress fraction and an ETA (from this attempt's rate) are derived here."""
        now = time.monotonic()
        latest: dict[str, Any] = {k: _finite(v) for k, v in metrics.items()}
        latest["done"] = done
        latest["total"] = total
        if self._rate_origin is None:
            self._rate_origin = (now, done)
        t0, d0 = self._rate_origin
        if total and done > d0 and now > t0:
            rate = (done - d0) / (now - t0)
            latest["eta_s"] = round(max(total - done, 0) / rate, 1)
        values: dict[str, Any] = {"metrics": latest}
        if total:
            values["progress"] = min(max(done / total, 0.0), 1.0)
        with self._lock:
            self._pending = values
        if now - self._last_write >= self._interval:
            self.flush(metrics_too=False)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Append points to the job's metric time series (``onebox jobs show``, comparisons)."""
        now = utcnow()
        rows = []
        for name, value in metrics.items():
            v = _finite(value)
            if v is None:
                self.log.warning("metric %s is %s at step %d", name, value, step)
            rows.append(
                {
                    "job_id": self.job_id,
                    "attempt": self.attempt,
                    "step": int(step),
                    "name": str(name)[:128],
                    "value": v,
                    "created_at": now,
                }
            )
        with self._lock:
            self._metric_rows.extend(rows)
            due = len(self._metric_rows) >= METRIC_BATCH or time.monotonic() - self._last_metric_write >= 1.0
        if due:
            self.flush(progress_too=False)

    def mark_checkpoint(self, step: int) -> None:
        """Say that a complete checkpoint for ``step`` is in ``work_dir``; ``resume`` relies on it.

        Call it after the checkpoint files are fully written (the handler owns their format).
        Pending progress and metric points are written first, so what a crash loses is only what
        came after the checkpoint (and is redone from it)."""
        self.flush()
        marker = self.work_dir / CHECKPOINT_MARKER
        atomic_write_json(marker, {"step": int(step), "attempt": self.attempt, "time": utcnow().isoformat()})
        with self._db.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == self.job_id)
                .values(checkpoint_step=int(step), checkpoint_at=utcnow())
                .execution_options(synchronize_session=False)
            )
        self._checkpoint_step = int(step)

    @property
    def checkpoint_step(self) -> int | None:
        """The last step marked by ``mark_checkpoint`` (in this or an earlier attempt)."""
        return self._checkpoint_step

    def should_stop(self) -> bool:
        """True once a graceful cancel was asked (SIGTERM or the cancel flag): save and return."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()

    def open_app(self) -> App:
        """An onebox services App in the job's project, for handlers that register results."""
        if self._app is None:
            from onebox.services.context import open_app

            self._app = open_app(self.settings.model_copy(update={"project": self.project}), migrate=False)
        return self._app

    # -- used by the worker ------------------------------------------------------------------

    def flush(self, *, progress_too: bool = True, metrics_too: bool = True) -> None:
        """Write what is pending (called by the heartbeat thread and at the end)."""
        with self._lock:
            pending = self._pending if progress_too else None
            if progress_too:
                self._pending = None
            rows = self._metric_rows if metrics_too else []
            if metrics_too:
                self._metric_rows = []
        if pending is None and not rows:
            return
        with self._db.session() as s:
            if pending is not None:
                s.execute(
                    update(Job)
                    .where(Job.id == self.job_id, Job.status.in_(ACTIVE))
                    .values(**pending)
                    .execution_options(synchronize_session=False)
                )
            if rows:
                s.execute(insert(JobMetric), rows)
        if pending is not None:
            self._last_write = time.monotonic()
        if rows:
            self._last_metric_write = time.monotonic()

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None

    def validate_spec(self, allowed: dict[str, type | tuple[type, ...]]) -> None:
        """Refuse unknown or mistyped spec keys with one error listing each of them."""
        from onebox.errors import ErrorList

        errors = ErrorList()
        for key, value in self.spec.items():
            if key not in allowed:
                errors.add(f"spec.{key}", "unknown option", f"use one of {', '.join(sorted(allowed))}")
            elif value is not None and not isinstance(value, allowed[key]):
                errors.add(f"spec.{key}", f"{value!r} has the wrong type")
        errors.raise_if_any(f"invalid spec for a {self.job_type} job", InvalidInputError)
