"""Reading the audit log with filters (the chain itself is in ``audit.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from onebox.store.db import Database
from onebox.store.tables import AuditRecord


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    """An exact action, or a prefix ending in ``.`` (``auth.``)."""
    outcome: str | None = None
    project_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100


def _utc(d: datetime) -> datetime:
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def record_dict(r: AuditRecord) -> dict[str, Any]:
    return {
        "seq": r.seq,
        "at": r.at.isoformat(),
        "actor": r.actor,
        "project_id": r.project_id,
        "action": r.action,
        "resource_type": r.resource_type,
        "resource_id": r.resource_id,
        "outcome": r.outcome,
        "source": r.source,
        "details": dict(r.details or {}),
    }


def list_records(db: Database, f: AuditFilter) -> list[dict[str, Any]]:
    q = select(AuditRecord)
    if f.actor:
        q = q.where(AuditRecord.actor.startswith(f.actor, autoescape=True))
    if f.action:
        q = q.where(
            AuditRecord.action.startswith(f.action, autoescape=True)
            if f.action.endswith(".")
            else AuditRecord.action == f.action
        )
    if f.outcome:
        q = q.where(AuditRecord.outcome == f.outcome)
    if f.project_id:
        q = q.where(AuditRecord.project_id == f.project_id)
    if f.since:
        q = q.where(AuditRecord.at >= _utc(f.since))
    if f.until:
        q = q.where(AuditRecord.at < _utc(f.until))
    q = q.order_by(AuditRecord.seq.desc()).limit(max(1, min(f.limit, 10_000)))
    with db.session() as s:
        return [record_dict(r) for r in s.scalars(q)]
