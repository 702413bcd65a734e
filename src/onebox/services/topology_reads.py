"""The store reads behind a task topology: events in a time window, the worst component samples
of a node over a window, the node's heartbeat row, and the project's API keys seen calling.

Hardware rows (nodes, component series, node events) belong to no project; everything of a
project is filtered by the caller's project id before it leaves here.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from onebox.monitor import cluster, tsdb
from onebox.monitor.samples import COMPONENT, TASK
from onebox.monitor.topology_facts import EventFact, KeyFacts, NodeFacts
from onebox.store.tables import ApiKey, AuditRecord, Event, MetricPoint, MetricSeries, Node, User

ALERT_FIRING = "alert.firing."
"""Kind prefix of an open alert (alerts are rows of the events table); one that fired before a
window still applies inside it."""
MAX_EVENTS = 200


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def event_fact(e: Event) -> EventFact:
    return EventFact(
        kind=e.kind,
        severity=e.severity,
        message=e.message,
        at=e.created_at.timestamp(),
        resource_type=e.resource_type,
        resource_id=e.resource_id,
        data=dict(e.data or {}),
    )


def events(
    s: Session,
    *,
    resource_type: str,
    resource_id: str,
    project_id: str | None,
    start: float,
    end: float,
) -> list[EventFact]:
    """Events about one resource between ``start`` and ``end``, plus alerts still firing that
    fired before ``end``; only the project's own or nobody's."""
    in_window = and_(Event.created_at >= _dt(start), Event.created_at <= _dt(end))
    still_firing = and_(Event.kind.like(ALERT_FIRING + "%"), Event.created_at <= _dt(end))
    rows = s.scalars(
        select(Event)
        .where(
            Event.resource_type == resource_type,
            Event.resource_id == resource_id[:32],
            or_(Event.project_id.is_(None), Event.project_id == project_id),
            or_(in_window, still_firing),
        )
        .order_by(Event.created_at.desc(), Event.id.desc())
        .limit(MAX_EVENTS)
    )
    return [event_fact(e) for e in rows]


def task_samples(s: Session, resource: str, project_id: str, since: float) -> dict[str, float]:
    """The newest task-level value of each metric of ``job:<id>``/``deployment:<id>``."""
    clauses = tsdb.series_filter(level=TASK, resource=resource, projects=[project_id])
    out: dict[str, float] = {}
    for d in tsdb.latest(s, clauses, since_ms=tsdb.to_ms(since)):
        if d.points:
            out[d.metric] = d.points[-1][1]
    return out


def component_samples(s: Session, node: str, start: float, end: float) -> dict[str, dict[str, float]]:
    """resource -> metric -> the highest value (the worst, for usage, heat and error counts) of
    the node's component series in ``[start, end]``, raw points and rollups alike."""
    rows = s.execute(
        select(MetricSeries.resource, MetricSeries.metric, func.max(MetricPoint.value))
        .join(MetricPoint, MetricPoint.series_id == MetricSeries.id)
        .where(
            MetricSeries.node == node,
            MetricSeries.level == COMPONENT,
            MetricPoint.ts >= tsdb.to_ms(start),
            MetricPoint.ts <= tsdb.to_ms(end),
        )
        .group_by(MetricSeries.resource, MetricSeries.metric)
    )
    out: dict[str, dict[str, float]] = {}
    for resource, metric, value in rows:
        out.setdefault(resource, {})[metric] = float(value)
    # file systems known to the node even without points in the window: which one holds the
    # task's files does not depend on when it was sampled
    for (resource,) in s.execute(
        select(MetricSeries.resource)
        .where(MetricSeries.node == node, MetricSeries.level == COMPONENT, MetricSeries.resource.like("fs:%"))
        .distinct()
    ):
        out.setdefault(resource, {})
    return out


def find_node(s: Session, host: str) -> Node | None:
    """The monitored node of a host name (a node is named after its host unless configured)."""
    row = s.get(Node, host[:128])
    if row is not None:
        return row
    return s.scalars(select(Node).where(Node.hostname == host).order_by(Node.heartbeat_at.desc())).first()


def node_facts(
    s: Session, host: str, *, project_id: str | None, start: float, end: float, now: float
) -> NodeFacts:
    """The machine called ``host`` with its heartbeat, problems, component samples and events."""
    row = find_node(s, host)
    if row is None:
        return NodeFacts(id=host, hostname=host, monitored=False)
    info = dict(row.info or {})
    info["versions"] = dict(row.versions or {})
    up = cluster.is_up(row, now)
    return NodeFacts(
        id=row.id,
        hostname=row.hostname,
        monitored=True,
        up=up,
        heartbeat_age_s=round(max(now - row.heartbeat_at.timestamp(), 0.0), 1),
        problems=list(row.problems or []) if up else [],
        info=info,
        summary={k: float(v) for k, v in (row.summary or {}).items()},
        components=component_samples(s, row.id, start, end),
        events=events(
            s, resource_type="node", resource_id=row.id, project_id=project_id, start=start, end=end
        ),
    )


def recent_keys(
    s: Session, project_id: str, *, since: float, visible: set[str]
) -> tuple[list[KeyFacts], int]:
    """Keys of the project used since ``since`` (``last_used_at`` or a ``key.used`` audit record)
    that the caller may see, and how many others there were. Prefixes and names only."""
    used: Counter[str] = Counter(
        dict(
            s.execute(
                select(AuditRecord.resource_id, func.count())
                .where(
                    AuditRecord.action == "key.used",
                    AuditRecord.project_id == project_id,
                    AuditRecord.at >= _dt(since),
                )
                .group_by(AuditRecord.resource_id)
            ).all()
        )
    )
    rows = s.execute(
        select(ApiKey, User.username)
        .join(User, User.id == ApiKey.user_id)
        .where(
            ApiKey.project_id == project_id,
            or_(ApiKey.last_used_at >= _dt(since), ApiKey.id.in_(list(used))),
        )
        .order_by(ApiKey.last_used_at.desc(), ApiKey.id)
    ).all()
    refused: Counter[str] = Counter(
        dict(
            s.execute(
                select(AuditRecord.resource_id, func.count())
                .where(
                    AuditRecord.action == "auth.key",
                    AuditRecord.outcome == "denied",
                    AuditRecord.resource_id.in_([k.id for k, _ in rows]),
                    AuditRecord.at >= _dt(since),
                )
                .group_by(AuditRecord.resource_id)
            ).all()
        )
    )
    now = datetime.now(UTC)
    out, hidden = [], 0
    for k, username in rows:
        if k.id not in visible:
            hidden += 1
            continue
        state = "active"
        if k.revoked_at is not None:
            state = "revoked"
        elif k.expires_at is not None and k.expires_at <= now:
            state = "expired"
        out.append(
            KeyFacts(
                id=k.id,
                prefix=f"obx_{k.prefix}",
                name=k.name,
                user=username,
                state=state,
                last_used_at=k.last_used_at.timestamp() if k.last_used_at else None,
                active_minutes=int(used.get(k.id, 0)),
                refused=int(refused.get(k.id, 0)),
            )
        )
    return out, hidden


def first_line(text: Any) -> str | None:
    if not text:
        return None
    lines = str(text).strip().splitlines()
    return lines[0][:300] if lines else None
