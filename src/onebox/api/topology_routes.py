"""Task topology under ``/api/v1/topology``: the graph of a job or a deployment (inputs, task,
worker processes, node, devices, outputs, gateway and keys) with health and a probable cause,
for the console's drill-down. Thin over ``services/topology``."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from onebox.api.auth import onebox_for
from onebox.serve.supervisor import Supervisor, gateway_pid
from onebox.services import topology

router = APIRouter(prefix="/api/v1/topology", tags=["monitoring"])


class EventOut(BaseModel):
    kind: str
    severity: str = Field(description="info, warning, error or critical.")
    message: str
    at: str = Field(description="ISO 8601.")


class NodeOut(BaseModel):
    id: str = Field(description="Unique in the graph and stable between calls: `<kind>:<key>`.")
    kind: str = Field(
        description="job, deployment, dataset_version, model_version, adapter, process, node, cpus, "
        "memory, gpu, filesystem, checkpoint, report, gateway or api_key."
    )
    label: str
    health: str = Field(description="ok, warning, critical or unknown (no data).")
    reasons: list[str] = Field(description="Why it has that health, most severe first (empty when ok).")
    attrs: dict[str, Any] = Field(description="Facts about the resource: ids, status, pid, host, sizes...")
    metrics: dict[str, float] = Field(description="Its latest monitoring samples (metric -> value).")
    events: list[EventOut] = Field(description="Its latest events, newest first.")


class EdgeOut(BaseModel):
    source: str
    target: str
    kind: str = Field(
        description="input (version -> task), runs_as (task -> process), runs_on (process -> node), "
        "has (node -> device), uses (process -> device), produced (task -> output), routes "
        "(gateway -> deployment), calls (API key -> gateway)."
    )
    role: str = Field(description="Finer label: dataset, base_model, adapter, evaluated, checkpoint...")


class CauseOut(BaseModel):
    node: str = Field(description="Id of the graph node most likely behind the task's trouble.")
    kind: str
    label: str
    health: str
    reason: str
    path: list[str] = Field(description="Node ids from the task to the cause.")


class TopologyOut(BaseModel):
    root: str = Field(description="The task's node id.")
    kind: str = Field(description="job or deployment.")
    health: str = Field(description="The task's health.")
    generated_at: float = Field(description="Unix seconds.")
    nodes: list[NodeOut]
    edges: list[EdgeOut]
    cause: CauseOut | None = Field(description="Null while the task is healthy.")


@router.get(
    "/jobs/{id}",
    response_model=TopologyOut,
    summary="Topology of a job: inputs, worker, node, devices, outputs, health and probable cause",
)
async def job_topology(request: Request, id: str) -> dict[str, Any]:
    return await asyncio.to_thread(topology.job_topology, onebox_for(request), id)


@router.get(
    "/deployments/{name}",
    response_model=TopologyOut,
    summary="Topology of a deployment: model and adapters, replicas, node, devices, gateway and "
    "the API keys of the project seen calling in the last 24 h",
)
async def deployment_topology(request: Request, name: str) -> dict[str, Any]:
    supervisor: Supervisor = request.app.state.supervisor
    # this gateway's own workers, read on the event loop that changes them; a gateway that only
    # serves the control plane supervises none, and the service finds them under the one that does
    replicas = {dep_id: supervisor.runtime(dep_id) for dep_id in supervisor.specs}
    pid = await asyncio.to_thread(gateway_pid, request.app.state.onebox.settings)
    return await asyncio.to_thread(
        topology.deployment_topology,
        onebox_for(request),
        name,
        runtime=replicas.get,
        gateway_running=pid is not None,
        gateway_pid=pid,
    )
