"""Events: what happened to which resource, written in the same transaction as the change; the
event log (alerts among them) as the caller may see it, and acknowledging alerts."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from onebox.errors import (
    ConflictError,
    ErrorList,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    Problem,
)
from onebox.monitor import alert_store
from onebox.services.context import App
from onebox.services.projects import get_project
from onebox.store.tables import Event, Project, new_id


def record(
    session: Session,
    *,
    project_id: str | None,
    resource_type: str,
    resource_id: str | None,
    kind: str,
    message: str,
    severity: str = "info",
    **data: Any,
) -> Event:
    ev = Event(
        id=new_id("evt"),
        project_id=project_id,
        resource_type=resource_type,
        resource_id=resource_id,
        kind=kind,
        severity=severity,
        message=message,
        data=data,
    )
    session.add(ev)
    return ev


def for_resource(
    session: Session, resource_type: str, resource_id: str, kind: str | None = None
) -> list[Event]:
    q = select(Event).where(Event.resource_type == resource_type, Event.resource_id == resource_id)
    if kind:
        q = q.where(Event.kind == kind)
    return list(session.scalars(q.order_by(Event.created_at, Event.id)))


# -- the event log: listing with project isolation, acknowledging alerts ----------------------

SEVERITIES = ("info", "warning", "error", "critical")
"""Least to most severe; a listing's ``severity`` is the least it shows."""
STATES = ("firing", "resolved", "all")
MAX_LIMIT = 1000
MAX_NOTE = 1000
_EVENT_ID = re.compile(r"^evt_[0-9a-f]{1,32}$")
_RESOURCE = re.compile(r"^([a-z][a-z_]{0,31})(?::([A-Za-z0-9_.:\-]{1,128}))?$")


def _visible(app: App, all_projects: bool) -> Any:
    """The WHERE clause of the events the caller may see: its project's, plus node and cluster
    events (no project) for those who operate the box; every project's for administrators who
    ask for them. None: no restriction."""
    principal = app.principal
    if all_projects:
        if principal is not None and not principal.system_admin:
            raise PermissionDeniedError("only administrators may see every project's events")
        return None
    with app.db.session() as s:
        project_id = get_project(s, app.settings.project).id
    if principal is None or principal.can("operate"):
        return or_(Event.project_id == project_id, Event.project_id.is_(None))
    return Event.project_id == project_id


def _validate_listing(severity: str | None, state: str, resource: str | None, limit: int) -> None:
    errors = ErrorList()
    if severity is not None and severity not in SEVERITIES:
        errors.add("severity", f"{severity!r} is not a severity", f"use one of {', '.join(SEVERITIES)}")
    if state not in STATES:
        errors.add("state", f"{state!r} is not an alert state", f"use one of {', '.join(STATES)}")
    if resource is not None and not _RESOURCE.match(resource):
        errors.add(
            "resource", f"{resource!r} is not a resource", "write a type (job) or type:id (job:job_ab12)"
        )
    if not 1 <= limit <= MAX_LIMIT:
        errors.add("limit", f"must be between 1 and {MAX_LIMIT}")
    errors.raise_if_any("invalid events query", InvalidInputError)


def _with_projects(session: Session, rows: list[Event]) -> list[dict[str, Any]]:
    ids = {e.project_id for e in rows if e.project_id}
    names = (
        dict(session.execute(select(Project.id, Project.name).where(Project.id.in_(ids))).all())
        if ids
        else {}
    )
    out = []
    for e in rows:
        item = alert_store.view(e)
        item["project"] = names.get(e.project_id) if e.project_id else None
        out.append(item)
    return out


def list_events(
    app: App,
    *,
    severity: str | None = None,
    state: str = "all",
    alerts_only: bool = False,
    resource: str | None = None,
    since: str | float | None = None,
    limit: int = 100,
    all_projects: bool = False,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """Events newest first: at least ``severity``; alerts ``firing`` or ``resolved`` (``all``: every
    event, alerts or not, unless ``alerts_only``); of ``resource`` (``job`` or ``job:<id>``);
    since a time (``-1h``, ISO 8601, Unix seconds)."""
    _validate_listing(severity, state, resource, limit)
    from onebox.services.metrics import parse_time

    now = time.time() if now is None else now
    start = parse_time(since, now, "since", 0.0) if since not in (None, "") else None
    q = select(Event)
    scope = _visible(app, all_projects)
    if scope is not None:
        q = q.where(scope)
    if severity is not None:
        q = q.where(Event.severity.in_(SEVERITIES[SEVERITIES.index(severity) :]))
    if state != "all":
        q = q.where(Event.kind.like(alert_store.kind(state, "%")))
    elif alerts_only:
        q = q.where(Event.kind.like(alert_store.PREFIX + "%"))
    if resource is not None:
        m = _RESOURCE.match(resource)
        assert m is not None
        q = q.where(Event.resource_type == m.group(1))
        if m.group(2):
            q = q.where(Event.resource_id == m.group(2)[:32])
    if start is not None:
        q = q.where(Event.created_at >= datetime.fromtimestamp(start, UTC))
    with app.db.session() as s:
        rows = list(s.scalars(q.order_by(Event.created_at.desc(), Event.id.desc()).limit(limit)))
        return _with_projects(s, rows)


def acknowledge(
    app: App, event_id: str, note: str | None = None, *, now: float | None = None
) -> dict[str, Any]:
    """Acknowledge an alert: someone is on it (who, when, and a note). It keeps firing until its
    condition clears; acknowledging twice is a conflict, so nobody overwrites another's note."""
    note = (note or "").strip()
    errors = ErrorList()
    if len(note) > MAX_NOTE:
        errors.add("note", f"is longer than {MAX_NOTE} characters", "shorten it")
    if any(ord(c) < 32 and c not in "\n\t" for c in note):
        errors.add("note", "holds control characters", "write plain text")
    errors.raise_if_any("invalid acknowledgement", InvalidInputError)
    who = app.actor()
    who.require("operate", "acknowledge alerts")
    if not _EVENT_ID.match(event_id):
        raise NotFoundError(f"no event {event_id!r}")
    now = time.time() if now is None else now
    scope = _visible(app, False)
    with app.db.session() as s:
        visible = (
            s.scalar(select(Event.id).where(Event.id == event_id, scope)) if scope is not None else event_id
        )
        ev = alert_store.locked(s, event_id) if visible else None
        if ev is None:
            raise NotFoundError(f"no event {event_id!r}")
        if alert_store.state_of(ev.kind) is None:
            raise InvalidInputError(
                f"event {event_id} is not an alert",
                problems=[
                    Problem(
                        "event_id",
                        "only alerts can be acknowledged",
                        "pick an id from `onebox events --state firing`",
                    )
                ],
            )
        ack = (ev.data or {}).get("ack")
        if ack:
            raise ConflictError(
                f"alert {event_id} was already acknowledged by {ack.get('by')} at {ack.get('at')}"
            )
        ev.data = {**ev.data, "ack": {"by": who.actor, "at": alert_store.iso(now), "note": note}}
        [out] = _with_projects(s, [ev])
    app.audit(
        "event.acknowledged", resource_type="event", resource_id=event_id, rule=out.get("rule"), note=note
    )
    return out
