"""Alerts as rows of the events table, so they show up with the resource's other events.

One row per alert: its ``kind`` carries the state and the rule (``alert.firing.disk_full``, then
``alert.resolved.disk_full``), so listing open alerts is a prefix match on an existing column and
no migration is needed. ``data`` holds the rest: the rule, the fingerprint that identifies the
alert across passes and nodes, the observing node, the values, acknowledgement (who, when, note)
and the state of each webhook delivery.

Writers (the monitor pass, the webhook thread, an acknowledgement from the API or the CLI) update
``data`` read-modify-write; :func:`locked` takes the row's write lock first (an UPDATE before the
read: a row lock on PostgreSQL, the database write lock on SQLite), so none of them loses
another's change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from onebox.monitor.samples import CLUSTER, COMPONENT, TASK, Sample
from onebox.store.db import Database
from onebox.store.tables import Event, new_id

PREFIX = "alert."
FIRING = "firing"
RESOLVED = "resolved"
STATES = (FIRING, RESOLVED)


def kind(state: str, rule: str) -> str:
    return f"{PREFIX}{state}.{rule}"


def state_of(event_kind: str) -> str | None:
    """``firing`` or ``resolved`` for an alert's kind; None for any other event."""
    if not event_kind.startswith(PREFIX):
        return None
    state = event_kind[len(PREFIX) :].partition(".")[0]
    return state if state in STATES else None


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def fingerprint(rule: str, sample: Sample, node: str) -> str:
    """What makes an alert the same alert from pass to pass: a component is one of a node's;
    nodes, tasks and the cluster are named the same from every node."""
    where = f"{node}/{sample.resource}" if sample.level == COMPONENT else sample.resource
    return f"{rule}|{sample.level}|{where}"


def resource_ref(sample: Sample, node: str) -> tuple[str, str | None]:
    """The (resource_type, resource_id) of the events table: a job's or deployment's own id, the
    node for its components and itself, nothing for the cluster."""
    if sample.level == TASK:
        rtype, _, rid = sample.resource.partition(":")
        return rtype or "task", rid or None
    if sample.level == CLUSTER:
        return "cluster", None
    return "node", (sample.resource if sample.level != COMPONENT else node)[:32]


@dataclass(frozen=True)
class OpenAlert:
    id: str
    rule: str
    fingerprint: str
    observer: str
    """The node whose monitor fired it (it resolves the alert when the resource goes away)."""
    level: str
    resource: str


def open_alerts(db: Database) -> tuple[dict[str, OpenAlert], list[OpenAlert]]:
    """Firing alerts by fingerprint, and the younger duplicates where two nodes raced to fire
    the same alert (to be resolved as such)."""
    with db.session() as s:
        rows = s.execute(
            select(Event.id, Event.data)
            .where(Event.kind.like(f"{PREFIX}{FIRING}.%"))
            .order_by(Event.created_at, Event.id)
        ).all()
    out: dict[str, OpenAlert] = {}
    dupes: list[OpenAlert] = []
    for ev_id, data in rows:
        d = data or {}
        fp = d.get("fingerprint")
        if not isinstance(fp, str):
            continue
        alert = OpenAlert(
            ev_id, str(d.get("rule", "")), fp, str(d.get("observer", "")), str(d.get("level", "")),
            str(d.get("resource", "")),
        )  # fmt: skip
        if fp in out:
            dupes.append(alert)
        else:
            out[fp] = alert
    return out, dupes


def locked(session: Session, event_id: str) -> Event | None:
    """The row, re-read after taking its write lock (see the module docstring)."""
    session.execute(
        update(Event)
        .where(Event.id == event_id)
        .values(id=Event.id)
        .execution_options(synchronize_session=False)
    )
    return session.get(Event, event_id, populate_existing=True)


def fire(
    db: Database,
    *,
    rule: str,
    severity: str,
    message: str,
    sample: Sample,
    node: str,
    observer: str,
    data: dict[str, Any],
    now: float,
) -> dict[str, Any]:
    """Write a firing alert about ``sample`` (on ``node``) seen by ``observer``; returns its view."""
    rtype, rid = resource_ref(sample, node)
    ev = Event(
        id=new_id("evt"),
        project_id=sample.project_id,
        resource_type=rtype,
        resource_id=rid,
        kind=kind(FIRING, rule),
        severity=severity,
        message=message,
        data={
            "rule": rule,
            "state": FIRING,
            "fingerprint": fingerprint(rule, sample, node),
            "level": sample.level,
            "resource": sample.resource,
            "name": sample.name,
            "project": sample.project,
            "node": node,
            "observer": observer,
            "fired_at": now,
            **data,
        },
        created_at=datetime.fromtimestamp(now, UTC),
    )
    with db.session() as s:
        s.add(ev)
    return view(ev)


def resolve(
    db: Database, event_id: str, *, now: float, value: float | None, why: str
) -> dict[str, Any] | None:
    """A firing alert resolves; None when it was not firing any more (another node got there)."""
    with db.session() as s:
        ev = locked(s, event_id)
        if ev is None or state_of(ev.kind) != FIRING:
            return None
        rule = str(ev.data.get("rule", ""))
        ev.kind = kind(RESOLVED, rule)
        ev.data = {
            **ev.data,
            "state": RESOLVED,
            "resolved_at": now,
            "resolved_value": value,
            "resolution": why,
        }
        return view(ev)


def set_deliveries(db: Database, event_id: str, updates: dict[str, dict[str, Any]]) -> None:
    """Merge delivery records (key ``<alert state> <webhook label>``) into the alert."""
    with db.session() as s:
        ev = locked(s, event_id)
        if ev is None:
            return
        deliveries = dict(ev.data.get("deliveries") or {})
        for key, record in updates.items():
            deliveries[key] = {**deliveries.get(key, {}), **record}
        ev.data = {**ev.data, "deliveries": deliveries}


def view(ev: Event) -> dict[str, Any]:
    """An event as the API, the CLI and webhooks show it (alerts carry their state and values)."""
    d = dict(ev.data or {})
    out: dict[str, Any] = {
        "id": ev.id,
        "time": ev.created_at.isoformat() if ev.created_at else None,
        "kind": ev.kind,
        "severity": ev.severity,
        "message": ev.message,
        "resource_type": ev.resource_type,
        "resource_id": ev.resource_id,
        "project": d.get("project") or None,
        "state": state_of(ev.kind),
        "node": d.get("node"),
    }
    if out["state"] is None:
        out["data"] = d
        return out
    out.update(
        rule=d.get("rule"),
        level=d.get("level"),
        resource=d.get("resource"),
        name=d.get("name"),
        metric=d.get("metric"),
        value=d.get("value"),
        op=d.get("op"),
        threshold=d.get("threshold"),
        detail=d.get("detail") or None,
        fired_at=iso(d.get("fired_at")),
        resolved_at=iso(d.get("resolved_at")),
        resolution=d.get("resolution"),
        acknowledged=d.get("ack"),
        deliveries=d.get("deliveries") or {},
    )
    return out
