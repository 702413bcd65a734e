"""Events: what happened to which resource, written in the same transaction as the change."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from onebox.store.tables import Event, new_id


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
