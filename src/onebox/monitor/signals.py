"""Signals derived for alert rules from a monitoring pass: what a rule needs that no collector
measures as such. They are evaluated, not stored or exported (the collectors' metrics are).

- from the pass's samples, with memory across passes: how long a job's step has not advanced,
  its loss over its running minimum, a deployment's share of failed requests;
- from the store: every node's liveness (the nodes table, so a node notices another one lost),
  losses that became NaN or infinite (running jobs' latest metrics, and metric points written
  since the previous pass, so a job that failed on its NaN between two passes is still seen),
  and worker exits recorded since the previous pass (see :mod:`.exits`);
- from the kernel: OOM kills on this node since the previous pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from onebox.jobs.state import ACTIVE
from onebox.monitor import exits
from onebox.monitor.catalog import MetricSpec
from onebox.monitor.cluster import is_up
from onebox.monitor.samples import NODE, TASK, Sample, Snapshot
from onebox.store.db import Database
from onebox.store.tables import Deployment, Event, Job, JobMetric, Node, Project, utcnow

SIGNALS: dict[str, MetricSpec] = {
    "node_oom_kills": MetricSpec(
        "Processes the kernel's OOM killer killed since the previous pass.", (NODE,)
    ),
    "job_stalled_seconds": MetricSpec("Seconds since the job's step (or progress) last advanced.", (TASK,)),
    "job_loss_ratio_to_min": MetricSpec(
        "The job's latest loss over the lowest loss seen (from its third report on).", (TASK,)
    ),
    "job_loss_nonfinite": MetricSpec("1 when the job reported a NaN or infinite loss.", (TASK,)),
    "deployment_error_ratio": MetricSpec("Share of the deployment's requests answered with a 5xx.", (TASK,)),
    "worker_oom_killed": MetricSpec(
        "1 in the pass that found a job or deployment worker killed for memory.", (TASK,)
    ),
    "worker_crashed": MetricSpec("1 in the pass that found a job or deployment worker crashed.", (TASK,)),
}
"""Derived signals a rule may name besides the catalog's metrics (``node_up`` is recomputed for
every node from the store)."""

LOOKBACK_S = 600.0
"""On the first pass, records this recent are looked at (a restart does not alert on history)."""
OVERLAP_S = 60.0
"""Events are re-read this far back each pass (a slow commit lands late), deduplicated by id."""
SCAN_BACK_ROWS = 100_000
LOSS_MIN_REPORTS = 3


def _task(
    resource: str, metric: str, value: float, name: str, project_id: str | None, project: str
) -> Sample:
    return Sample(TASK, resource, metric, value, name=name, project_id=project_id, project=project)


class SignalDeriver:
    """Derives :data:`SIGNALS` pass after pass for one node's monitor."""

    def __init__(self, db: Database, node_id: str, *, vmstat: Path = exits.VMSTAT) -> None:
        self.db = db
        self.node_id = node_id
        self.vmstat = vmstat
        self.details: dict[tuple[str, str], str] = {}
        """(metric, resource) -> what explains this pass's value (an exit's evidence)."""
        self.lost_nodes: set[str] = set()
        self._steps: dict[str, tuple[tuple[float | None, float | None], float]] = {}
        self._loss_min: dict[str, tuple[float, int]] = {}
        self._oom_kills: int | None = None
        self._oom_delta = 0
        self._events_since: datetime | None = None
        self._seen_events: dict[str, datetime] = {}
        self._metric_mark: int | None = None

    def derive(self, snapshot: Snapshot) -> list[Sample]:
        self.details = {}
        out = self._from_samples(snapshot)
        out += self._nodes(snapshot.ts)
        out += self._kernel_oom()
        out += self._nonfinite_losses()
        out += self._worker_exits()
        return out

    # -- from the pass's samples --------------------------------------------------------------

    def _from_samples(self, snap: Snapshot) -> list[Sample]:
        tasks: dict[str, dict[str, Sample]] = {}
        for s in snap.samples:
            if s.level == TASK:
                tasks.setdefault(s.resource, {})[s.metric] = s
        out: list[Sample] = []
        for res, by in tasks.items():
            any_ = next(iter(by.values()))
            meta = (any_.name, any_.project_id, any_.project)
            if res.startswith("job:") and "job_progress_ratio" in by:
                out += self._job(res, by, snap.ts, meta)
            elif res.startswith("deployment:"):
                req, err = by.get("deployment_requests_per_second"), by.get("deployment_errors_per_second")
                if req is not None and err is not None and req.value > 0:
                    out.append(_task(res, "deployment_error_ratio", err.value / req.value, *meta))
        for state in (self._steps, self._loss_min):
            for gone in set(state) - set(tasks):
                del state[gone]
        return out

    def _job(
        self, res: str, by: dict[str, Sample], now: float, meta: tuple[str, str | None, str]
    ) -> list[Sample]:
        step = by.get("job_step")
        key = (step.value if step else None, by["job_progress_ratio"].value)
        last = self._steps.get(res)
        if last is None or last[0] != key:
            last = self._steps[res] = (key, now)
        out = [_task(res, "job_stalled_seconds", max(now - last[1], 0.0), *meta)]
        loss = by.get("job_loss")
        if loss is not None and loss.value > 0:
            low, n = self._loss_min.get(res, (loss.value, 0))
            low, n = min(low, loss.value), n + 1
            self._loss_min[res] = (low, n)
            if n >= LOSS_MIN_REPORTS:
                out.append(_task(res, "job_loss_ratio_to_min", loss.value / low, *meta))
        return out

    # -- from the store -----------------------------------------------------------------------

    def _nodes(self, now: float) -> list[Sample]:
        with self.db.session() as s:
            rows = list(s.scalars(select(Node)))
        out = []
        self.lost_nodes = set()
        for row in rows:
            up = is_up(row, now)
            if not up:
                self.lost_nodes.add(row.id)
                self.details[("node_up", row.id)] = (
                    f"last heartbeat {row.heartbeat_at.isoformat(timespec='seconds')}"
                )
            out.append(Sample(NODE, row.id, "node_up", 1.0 if up else 0.0, name=row.hostname))
        return out

    def _kernel_oom(self) -> list[Sample]:
        count = exits.kernel_oom_kills(self.vmstat)
        last, self._oom_kills = self._oom_kills, count
        if count is None or last is None:
            self._oom_delta = 0
            return []
        self._oom_delta = max(count - last, 0)
        return [Sample(NODE, self.node_id, "node_oom_kills", float(self._oom_delta), name=self.node_id)]

    def _projects(self, ids: Iterable[str | None]) -> dict[str, str]:
        want = {i for i in ids if i}
        if not want:
            return {}
        with self.db.session() as s:
            return dict(s.execute(select(Project.id, Project.name).where(Project.id.in_(want))).all())

    def _nonfinite_losses(self) -> list[Sample]:
        """Running jobs' latest losses (NaN and inf are stored as null) and loss points written as
        null since the previous pass (the job may have failed on them already)."""
        bad: dict[str, str] = {}
        with self.db.session() as s:
            active = s.execute(
                select(Job.id, Job.name, Job.project_id, Job.metrics).where(Job.status.in_(ACTIVE))
            ).all()
            top = s.scalar(select(func.max(JobMetric.id))) or 0
            if self._metric_mark is None:  # first pass: recent points only
                floor = utcnow() - timedelta(seconds=LOOKBACK_S)
                where = [JobMetric.id > top - SCAN_BACK_ROWS, JobMetric.created_at >= floor]
            else:
                where = [JobMetric.id > self._metric_mark]
            points = s.execute(
                select(JobMetric.job_id, JobMetric.name, JobMetric.step).where(
                    *where, JobMetric.id <= top, JobMetric.value.is_(None), JobMetric.name.like("%loss%")
                )
            ).all()
            self._metric_mark = top
            for job_id, name, step in points:
                bad.setdefault(job_id, f"{name} is not finite at step {step}")
            flagged = {}
            for job_id, job_name, project_id, metrics in active:
                keys = [k for k, v in (metrics or {}).items() if "loss" in k and v is None]
                if keys:
                    bad.setdefault(job_id, f"the latest {keys[0]} is not finite")
                if keys or any("loss" in k for k in metrics or {}):
                    flagged[job_id] = (job_name, project_id)
            missing = set(bad) - set(flagged)
            if missing:
                for job_id, job_name, project_id in s.execute(
                    select(Job.id, Job.name, Job.project_id).where(Job.id.in_(missing))
                ):
                    flagged[job_id] = (job_name, project_id)
        names = self._projects(p for _, p in flagged.values())
        out = []
        for job_id, (job_name, project_id) in flagged.items():
            res = f"job:{job_id}"
            if job_id in bad:
                self.details[("job_loss_nonfinite", res)] = bad[job_id]
            value = 1.0 if job_id in bad else 0.0
            out.append(
                _task(res, "job_loss_nonfinite", value, job_name, project_id, names.get(project_id or "", ""))
            )
        return out

    def _worker_exits(self) -> list[Sample]:
        now = utcnow()
        since = self._events_since or now - timedelta(seconds=LOOKBACK_S)
        start = since - timedelta(seconds=OVERLAP_S) if self._events_since else since
        with self.db.session() as s:
            rows = s.execute(
                select(
                    Event.id, Event.kind, Event.resource_type, Event.resource_id, Event.project_id,
                    Event.data, Event.created_at,
                ).where(Event.kind.in_(exits.EXIT_KINDS), Event.created_at >= start)
                .order_by(Event.created_at)
            ).all()  # fmt: skip
        self._events_since = now
        found: dict[tuple[str, str], tuple[exits.WorkerExit, Any]] = {}
        for ev_id, kind, rtype, rid, project_id, data, created in rows:
            if ev_id in self._seen_events or not rid:
                continue
            self._seen_events[ev_id] = created
            what = exits.classify(kind, data or {})
            if what is not None:
                found[(rtype, rid)] = (what, project_id)
        horizon = now - timedelta(seconds=2 * OVERLAP_S)
        self._seen_events = {k: t for k, t in self._seen_events.items() if t >= horizon}
        if not found:
            return []
        names = self._names(found)
        projects = self._projects(p for _, p in found.values())
        moved = self._oom_delta > 0
        out = []
        for (rtype, rid), (what, project_id) in found.items():
            res = f"{rtype}:{rid}"
            metric = "worker_oom_killed" if what.cause == exits.OOM else "worker_crashed"
            detail = what.evidence
            if what.cause == exits.OOM and moved:
                detail += "; the kernel's OOM killer acted since the previous pass"
            self.details[(metric, res)] = detail
            project = projects.get(project_id or "", "")
            out.append(_task(res, metric, 1.0, names.get(res, rid), project_id, project))
        return out

    def _names(self, found: dict[tuple[str, str], Any]) -> dict[str, str]:
        jobs = [rid for rtype, rid in found if rtype == "job"]
        deps = [rid for rtype, rid in found if rtype == "deployment"]
        out: dict[str, str] = {}
        with self.db.session() as s:
            if jobs:
                out |= {f"job:{i}": n for i, n in s.execute(select(Job.id, Job.name).where(Job.id.in_(jobs)))}
            if deps:
                out |= {
                    f"deployment:{i}": n
                    for i, n in s.execute(
                        select(Deployment.id, Deployment.name).where(Deployment.id.in_(deps))
                    )
                }
        return out
