"""Events and alerts under ``/api/v1``: list them (the caller's project, plus node and cluster
events for operators) and acknowledge an alert. Thin over ``services/events``."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from onebox.api.auth import onebox_for
from onebox.services import events

router = APIRouter(prefix="/api/v1", tags=["monitoring"])


class Acknowledgement(BaseModel):
    by: str
    at: str
    note: str


class EventOut(BaseModel):
    id: str
    time: str | None = Field(description="When it happened (for an alert: when it fired).")
    kind: str = Field(description="e.g. job.started, deployment.replica_crashed, alert.firing.disk_full.")
    severity: str = Field(description="info, warning, error or critical.")
    message: str
    resource_type: str = Field(description="job, deployment, node, cluster, model...")
    resource_id: str | None
    project: str | None = Field(description="The project; null for node and cluster events.")
    state: str | None = Field(description="firing or resolved for an alert; null for other events.")
    node: str | None = Field(None, description="The node an alert is about (or that saw it).")
    rule: str | None = None
    level: str | None = Field(None, description="The alert's level: component, node, cluster or task.")
    resource: str | None = Field(None, description="The monitored resource: fs:/data, gpu0, job:<id>...")
    name: str | None = None
    metric: str | None = None
    value: float | None = Field(None, description="The value when the alert fired.")
    op: str | None = None
    threshold: float | None = None
    detail: str | None = None
    fired_at: str | None = None
    resolved_at: str | None = None
    resolution: str | None = None
    acknowledged: Acknowledgement | None = None
    deliveries: dict[str, dict[str, Any]] | None = Field(
        None, description="Webhook deliveries: '<state> #<n> <origin>' -> status, attempts, last error."
    )
    data: dict[str, Any] | None = Field(None, description="Details of an event that is not an alert.")


class AckIn(BaseModel):
    note: str = Field("", max_length=1000, description="What is being done about it.")


@router.get("/events", response_model=list[EventOut], summary="Events and alerts, newest first")
async def list_events(
    request: Request,
    severity: str | None = Query(None, max_length=16, description="The least severity shown."),
    state: str = Query("all", max_length=16, description="firing, resolved (alerts) or all (every event)."),
    alerts: bool = Query(False, description="Only alerts (with state=all)."),
    resource: str | None = Query(None, max_length=200, description="A type (job) or type:id (job:job_ab12)."),
    since: str | None = Query(None, max_length=64, description="-1h, -7d, Unix seconds or ISO 8601."),
    limit: int = Query(100, description="Most events returned (1-1000)."),
    all_projects: bool = Query(False, description="Every project's events (administrators only)."),
) -> list[dict[str, Any]]:
    return await asyncio.to_thread(
        events.list_events,
        onebox_for(request),
        severity=severity,
        state=state,
        alerts_only=alerts,
        resource=resource,
        since=since,
        limit=limit,
        all_projects=all_projects,
    )


@router.post("/events/{event_id}/ack", response_model=EventOut, summary="Acknowledge an alert")
async def acknowledge(request: Request, event_id: str, body: AckIn | None = None) -> dict[str, Any]:
    note = body.note if body is not None else ""
    return await asyncio.to_thread(events.acknowledge, onebox_for(request), event_id, note)
