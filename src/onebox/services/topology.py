"""Task topology: for one job or deployment of the caller's project, gather the facts (inputs,
outputs, worker processes, the node and devices they ran on, the gateway and its callers, health
data and events) and build the graph with :func:`onebox.monitor.topology.build`.

A job or deployment of another project is not found, exactly like one that does not exist.
Samples are read for the window the task ran in: the last few collection intervals while it runs,
the minutes around its end once it finished (what the hardware looked like when it failed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from onebox.jobs import procs, state
from onebox.monitor import process_facts, topology
from onebox.monitor.topology_facts import (
    EventFact,
    GatewayFacts,
    LiveProcess,
    NodeFacts,
    ProcessFacts,
    TaskFacts,
    TopologyFacts,
    VersionFacts,
)
from onebox.monitor.topology_graph import ADAPTER
from onebox.services import apikeys, deployments, jobs
from onebox.services import topology_lineage as lineage
from onebox.services.context import App
from onebox.services.topology_reads import (
    event_fact,
    events,
    first_line,
    node_facts,
    recent_keys,
    task_samples,
)
from onebox.store.tables import Event, Job

HEARTBEAT_STALE_S = 60.0
"""A running job whose worker has not reported for this long is stuck (the executor's default
heartbeat timeout)."""
END_LOOKBACK_S = 300.0
"""How far before a finished task's end its node's samples are read."""
CLIENTS_WINDOW_S = 24 * 3600.0
"""API keys seen in this window count as a deployment's recent clients."""
PROCESS_METRICS = ("task_processes", "task_cpu_cores", "task_memory_rss_bytes", "task_gpu_memory_bytes")
"""Task-level samples measured over the worker processes' tree."""


def _ts(t: datetime | None) -> float | None:
    return t.timestamp() if t is not None else None


def _fresh_s(app: App) -> float:
    """How old a sample may be to describe the present: three collection intervals, at least 60 s."""
    return max(3 * app.settings.monitor_interval_s, 60.0)


def _window(app: App, finished: float | None, now: float) -> tuple[float, float]:
    """Which samples describe the task: the present while it runs; the minutes before its end
    (whatever it started from) once it finished."""
    if finished is None:
        return now - _fresh_s(app), now
    return finished - END_LOOKBACK_S, finished + _fresh_s(app)


# -- jobs -----------------------------------------------------------------------------------------


def _job_events(s: Session, job: Job) -> list[EventFact]:
    rows = s.scalars(
        select(Event)
        .where(Event.resource_type == "job", Event.resource_id == job.id, Event.project_id == job.project_id)
        .order_by(Event.created_at.desc(), Event.id.desc())
        .limit(200)
    )
    return [event_fact(e) for e in rows]


WORKER_EXIT_KINDS = ("job.requeued", "job.failed", "job.cancelled")


def _job_worker(job: Job, evs: list[EventFact], started: float | None) -> ProcessFacts | None:
    """The current (or last) attempt's worker; the reason it ended from the executor's event."""
    if not job.attempts and job.pid is None:
        return None
    ended = next(
        (e for e in evs if e.kind in WORKER_EXIT_KINDS and (started is None or e.at >= started - 1)), None
    )
    reason = None
    exit_code = job.exit_code
    if ended is not None:
        reason = first_line(ended.data.get("reason")) or (
            first_line(job.error) if job.status == "failed" else None
        )
        code = ended.data.get("exit_code")
        if exit_code is None and isinstance(code, int) and not isinstance(code, bool):
            exit_code = code
    live = None
    if job.status in state.ACTIVE and job.pid and job.host == procs.hostname():
        live = process_facts.inspect(job.pid) if procs.worker_alive(job.pid, job.id) else LiveProcess(False)
    worker_events = [e for e in evs if e is ended]
    gpus = [int(d) for d in job.devices or [] if str(d).isdigit()]
    return ProcessFacts(
        key="worker",
        label=f"worker (attempt {job.attempts})",
        host=job.host,
        pid=job.pid,
        exit_code=exit_code,
        reason=reason,
        gpus=gpus,
        live=live,
        events=worker_events,
    )


def _split_metrics(metrics: dict[str, float], procs_: list[ProcessFacts]) -> dict[str, float]:
    """Give the process-tree samples to the worker when there is exactly one; the rest stay the
    task's (with several replicas they are sums over all of them)."""
    if len(procs_) != 1:
        return metrics
    procs_[0].metrics = {k: v for k, v in metrics.items() if k in PROCESS_METRICS}
    return {k: v for k, v in metrics.items() if k not in PROCESS_METRICS}


def job_topology(app: App, ref: str, *, now: float | None = None) -> dict[str, Any]:
    """The topology of a job of the caller's project (by id or unique prefix)."""
    now = time.time() if now is None else now
    job = jobs.get(app, ref)
    started, finished = _ts(job.started_at), _ts(job.finished_at)
    start, end = _window(app, finished, now)
    with app.db.session() as s:
        evs = _job_events(s, job)
        inputs = lineage.job_inputs(s, job)
        outputs = lineage.job_outputs(s, app, job)
        since = (started or _ts(job.created_at) or now) - app.settings.monitor_interval_s
        metrics = task_samples(s, f"job:{job.id}", job.project_id, since)
        worker = _job_worker(job, evs, started)
        nodes: dict[str, NodeFacts] = {}
        if worker is not None and worker.host:
            nodes[worker.host] = node_facts(
                s, worker.host, project_id=job.project_id, start=start, end=end, now=now
            )
    current = [e for e in evs if started is None or e.at >= started - 1]
    processes = [worker] if worker is not None else []
    beat = _ts(job.heartbeat_at)
    task = TaskFacts(
        kind="job",
        id=job.id,
        name=job.name,
        status=job.status,
        type=job.type,
        error=first_line(job.error),
        started_at=started,
        finished_at=finished,
        heartbeat_age_s=max(now - beat, 0.0) if beat is not None and job.status in state.ACTIVE else None,
        heartbeat_stale_s=HEARTBEAT_STALE_S,
        attrs={
            "progress": job.progress,
            "attempts": job.attempts,
            "max_attempts": job.max_attempts,
            "owner": job.owner,
            "created_at": job.created_at.isoformat() if job.created_at else None,
            "started_at": job.started_at.isoformat() if job.started_at else None,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "checkpoint_step": job.checkpoint_step,
            "resources": dict(job.resources or {}),
        },
        metrics=_split_metrics(metrics, processes),
        events=current,
    )
    facts = TopologyFacts(
        task=task,
        inputs=inputs,
        outputs=outputs,
        processes=processes,
        nodes=nodes,
        data_path=str(state.work_dir(app.settings, job.id)),
        now=now,
    )
    return topology.build(facts).as_dict()


# -- deployments ----------------------------------------------------------------------------------


def _replica_gpus(engine: dict[str, Any], node: NodeFacts | None) -> list[int]:
    device = str(engine.get("device") or "auto")
    if device.startswith("cuda:") and device[5:].isdigit():
        return [int(device[5:])]
    has_gpus = bool(node and node.info.get("gpus"))
    return [0] if device in ("auto", "cuda") and has_gpus else []


def _replicas(
    dep_id: str, runtime: list[dict[str, Any]] | None, gateway_pid: int | None, gpus: list[int]
) -> list[ProcessFacts]:
    """The deployment's workers: as the supervisor sees them when called inside the gateway,
    else found among the gateway's children."""
    host = procs.hostname()
    out = []
    if runtime is not None:
        for r in runtime:
            pid = r.get("pid")
            out.append(
                ProcessFacts(
                    key=f"replica-{r.get('replica')}",
                    label=f"replica {r.get('replica')}",
                    host=host,
                    pid=pid,
                    state=str(r.get("state") or ""),
                    reason=first_line(r.get("last_error")),
                    restarts=int(r.get("restarts") or 0),
                    gpus=gpus,
                    live=process_facts.inspect(pid) if pid else None,
                )
            )
        return out
    for w in process_facts.deployment_workers(gateway_pid, dep_id) if gateway_pid else []:
        key = f"replica-{w.replica}" if w.replica is not None else f"pid-{w.pid}"
        label = f"replica {w.replica}" if w.replica is not None else "worker"
        out.append(ProcessFacts(key, label, host, w.pid, gpus=gpus, live=process_facts.inspect(w.pid)))
    return out


def deployment_topology(
    app: App,
    name: str,
    *,
    runtime: Callable[[str], list[dict[str, Any]] | None] | None = None,
    gateway_running: bool | None = None,
    gateway_pid: int | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The topology of a deployment of the caller's project. The caller says what it knows of the
    gateway supervising the workers (this layer does not know how it runs): ``runtime(id)``, the
    supervisor's view of a deployment's replicas when the gateway itself asks (None where it does
    not supervise it); else ``gateway_pid``, whose children are searched for the deployment's
    workers; ``gateway_running`` (None: unknown)."""
    now = time.time() if now is None else now
    info = deployments.show(app, name)  # NotFoundError for another project's, as for none
    spec = deployments.worker_spec(app, info["id"])
    pid = spec.project_id
    start, end = _window(app, None, now)
    host = procs.hostname()
    visible = {k["id"] for k in apikeys.list_keys(app, include_inactive=True)}
    with app.db.session() as s:
        inputs = [
            v for v in [lineage.model_version(s, spec.model_version_id, "base_model", pid)] if v is not None
        ]
        for a in spec.adapters.values():
            v = lineage.model_version(s, a.version_id, "adapter", pid)
            if v is not None:
                v.attrs["served_as"] = a.name
                inputs.append(v)
        for a_name, why in spec.adapter_errors.items():
            inputs.append(
                VersionFacts(f"unresolved:{a_name}", ADAPTER, a_name, "adapter", "unresolved", {"error": why})
            )
        dep_events = events(
            s, resource_type="deployment", resource_id=spec.id, project_id=pid, start=now - 3600, end=now
        )
        metrics = task_samples(s, f"deployment:{spec.id}", pid, now - _fresh_s(app))
        node = node_facts(s, host, project_id=pid, start=start, end=end, now=now)
        keys, hidden = recent_keys(s, pid, since=now - CLIENTS_WINDOW_S, visible=visible)
    known = runtime(spec.id) if runtime is not None else None
    replicas = _replicas(spec.id, known, gateway_pid, _replica_gpus(spec.engine, node))
    for e in dep_events:
        replica = e.data.get("replica")
        for p in replicas:
            if (
                replica is not None
                and p.key == f"replica-{replica}"
                and e.kind.startswith("deployment.replica")
            ):
                p.events.append(e)
    task = TaskFacts(
        kind="deployment",
        id=spec.id,
        name=spec.name,
        status=spec.status,
        type=spec.kind,
        replicas=spec.replicas,
        attrs={
            "model": spec.model_ref,
            "model_ids": spec.model_ids,
            "replicas": spec.replicas,
            "restarts": info.get("restarts", 0),
            "engine": dict(spec.engine),
        },
        metrics=_split_metrics(metrics, replicas),
        events=dep_events,
    )
    facts = TopologyFacts(
        task=task,
        inputs=inputs,
        processes=replicas,
        nodes={host: node},
        data_path=str(Path(app.settings.home)),
        gateway=GatewayFacts(running=gateway_running, pid=gateway_pid, host=host),
        keys=keys,
        hidden_keys=hidden,
        now=now,
    )
    return topology.build(facts).as_dict()
