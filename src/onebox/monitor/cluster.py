"""Nodes and the cluster: each node's heartbeat row in the store, and cluster-level aggregates
over every node (one on the embedded default; every machine sharing the store in cluster mode)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from onebox.monitor.node import NodeIdentity
from onebox.monitor.samples import CLUSTER, CLUSTER_RESOURCE, Sample
from onebox.store.db import Database
from onebox.store.tables import Node

LOST_AFTER_INTERVALS = 3
"""A node whose heartbeat is older than this many of its intervals is lost."""


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def heartbeat(
    db: Database,
    node: NodeIdentity,
    *,
    now: float,
    interval_s: float,
    summary: dict[str, float],
    problems: list[str],
) -> None:
    """Create or refresh this node's row."""
    with db.session() as s:
        row = s.get(Node, node.id)
        if row is None:
            row = Node(id=node.id, first_seen_at=_dt(now))
            s.add(row)
        row.hostname = node.hostname
        row.heartbeat_at = _dt(now)
        row.interval_s = interval_s
        row.healthy = not problems
        row.problems = problems
        row.versions = node.versions
        row.info = node.info
        row.summary = summary


def is_up(row: Node, now: float) -> bool:
    return now - row.heartbeat_at.timestamp() <= LOST_AFTER_INTERVALS * max(row.interval_s, 1.0)


def node_dict(row: Node, now: float) -> dict[str, Any]:
    up = is_up(row, now)
    return {
        "id": row.id,
        "hostname": row.hostname,
        "status": ("healthy" if row.healthy else "unhealthy") if up else "lost",
        "heartbeat_at": row.heartbeat_at.isoformat(),
        "heartbeat_age_s": round(max(now - row.heartbeat_at.timestamp(), 0.0), 1),
        "problems": list(row.problems or []) if up else ["no heartbeat"],
        "versions": dict(row.versions or {}),
        "info": dict(row.info or {}),
        "summary": dict(row.summary or {}),
    }


def list_nodes(db: Database, now: float) -> list[dict[str, Any]]:
    with db.session() as s:
        return [node_dict(r, now) for r in s.scalars(select(Node).order_by(Node.id))]


def _weighted(nodes: list[dict[str, float]], value: str, weight: str) -> float | None:
    pairs = [(n[value], n.get(weight, 0.0)) for n in nodes if value in n]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def aggregate(db: Database, *, now: float, jobs_running: int = 0, deployments: int = 0) -> list[Sample]:
    """Cluster-level samples over the nodes that are up (the totals count lost nodes out)."""
    with db.session() as s:
        rows = list(s.scalars(select(Node)))
    up = [dict(r.summary or {}) for r in rows if is_up(r, now)]
    values: dict[str, float | None] = {
        "cluster_nodes": float(len(rows)),
        "cluster_nodes_up": float(len(up)),
        "cluster_jobs_running": float(jobs_running),
        "cluster_deployments": float(deployments),
    }
    for metric in (
        "cpu_count",
        "memory_total_bytes",
        "memory_used_bytes",
        "gpu_count",
        "gpu_memory_total_bytes",
        "gpu_memory_used_bytes",
    ):
        values[metric] = float(sum(n.get(metric, 0.0) for n in up))
    total, used = values["memory_total_bytes"], values["memory_used_bytes"]
    values["memory_usage_ratio"] = used / total if total and used is not None else None
    values["cpu_usage_ratio"] = _weighted(up, "cpu_usage_ratio", "cpu_count")
    values["gpu_utilization_ratio"] = _weighted(up, "gpu_utilization_ratio", "gpu_count")
    return [Sample(CLUSTER, CLUSTER_RESOURCE, m, v) for m, v in values.items() if v is not None]
