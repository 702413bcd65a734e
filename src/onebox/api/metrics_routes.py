"""Monitoring under ``/api/v1``: query the time series, list the nodes. Thin over
``services/metrics``; task-level series of other projects are invisible to the caller."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from onebox.api.auth import onebox_for
from onebox.services import metrics

router = APIRouter(prefix="/api/v1", tags=["monitoring"])


class SeriesOut(BaseModel):
    level: str = Field(description="component, node, cluster or task.")
    node: str = Field(description="The node that collected the series.")
    resource: str = Field(
        description="cpu0, memory, fs:/, disk:sda, net:eth0, gpu0, <node>, cluster, job:<id>..."
    )
    metric: str
    name: str = Field(description="Display name of the resource (job or deployment name, GPU model).")
    project: str | None = Field(description="The project of a task-level series; null for hardware.")
    points: list[tuple[float, float]] = Field(description="[Unix seconds, value] pairs, oldest first.")


class QueryOut(BaseModel):
    start: str
    end: str
    step_s: int = Field(description="Width of the buckets each point averages.")
    resolution: str = Field(description="raw (collection passes) or rollup (per-minute means).")
    truncated: bool = Field(description="More series matched than max_series.")
    series: list[SeriesOut]


class NodeOut(BaseModel):
    id: str
    hostname: str
    status: str = Field(description="healthy, unhealthy or lost (no heartbeat for three intervals).")
    heartbeat_at: str
    heartbeat_age_s: float
    problems: list[str]
    versions: dict[str, str]
    info: dict[str, Any]
    summary: dict[str, float] = Field(description="The node-level values of its latest pass.")


@router.get("/metrics/query", response_model=QueryOut, summary="Query monitoring time series")
async def query_metrics(
    request: Request,
    level: str | None = Query(None, description="component, node, cluster or task."),
    node: str | None = Query(None, max_length=128, description="Node name; * is a wildcard."),
    resource: str | None = Query(None, max_length=255, description="Resource, e.g. gpu0 or job:*."),
    metric: str | None = Query(
        None, max_length=128, description="Metric name, e.g. cpu_usage_ratio or gpu_*."
    ),
    start: str | None = Query(
        None, max_length=64, description="now, -15m, -2h, -7d, Unix seconds or ISO 8601."
    ),
    end: str | None = Query(None, max_length=64, description="Same forms as start (default now)."),
    step: float | None = Query(None, description="Seconds per point (default: at most 720 points)."),
    resolution: str = Query("auto", description="auto, raw or rollup."),
    max_series: int = Query(100, description="Most series returned (1-1000)."),
    all_projects: bool = Query(False, description="Every project's task series (administrators only)."),
) -> dict[str, Any]:
    return await asyncio.to_thread(
        metrics.query,
        onebox_for(request),
        level=level,
        node=node,
        resource=resource,
        metric=metric,
        start=start,
        end=end,
        step=step,
        resolution=resolution,
        max_series=max_series,
        all_projects=all_projects,
    )


@router.get("/nodes", response_model=list[NodeOut], summary="Nodes: health, heartbeat, versions")
async def list_nodes(request: Request) -> list[dict[str, Any]]:
    return await asyncio.to_thread(metrics.nodes, onebox_for(request))
