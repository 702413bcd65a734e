"""Control plane for deployments under ``/api/v1/deployments``: thin over the deployments service.

Writes record desired state and wake the supervisor; reads merge the stored deployment with what
the supervisor sees of its replicas right now.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, ConfigDict, Field

from onebox.api.auth import onebox_for
from onebox.services import deployments

router = APIRouter(prefix="/api/v1/deployments", tags=["deployments"])


class AdapterOut(BaseModel):
    name: str
    ref: str
    version: str | None = Field(description="The version the reference resolves to now (name:N).")
    error: str | None = Field(description="Why the adapter cannot be served now, if it cannot.")


class ReplicaOut(BaseModel):
    replica: int
    state: str = Field(description="pending, starting, ready, backoff, failed or stopping.")
    pid: int | None
    port: int | None
    restarts: int
    outstanding: int = Field(description="Requests in flight through this gateway.")
    adapters: list[str]
    last_error: str | None
    log: str


class EventOut(BaseModel):
    kind: str
    message: str
    severity: str
    created_at: str


class DeploymentOut(BaseModel):
    id: str
    name: str
    kind: str = Field(description="text or embedding.")
    status: str = Field(description="starting, ready, degraded, failed or stopped.")
    model: str | None = Field(description="The base model version served (name:N).")
    model_version_id: str
    requested: str | None = Field(description="The model reference as deployed.")
    alias: str | None
    replicas: int
    adapters: list[AdapterOut]
    engine: dict[str, Any]
    model_ids: list[str] = Field(description="Values of the OpenAI `model` field this deployment serves.")
    created_at: str
    updated_at: str
    replica_status: list[ReplicaOut] = []
    restarts: int | None = None
    events: list[EventOut] | None = None


class DeployIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="Model reference: name, name:version or name@alias (a LoRA adapter deploys its base)."
    )
    name: str | None = Field(default=None, description="Deployment name (default: the model's name).")
    adapters: list[str] = Field(default_factory=list, description="LoRA adapter references of the same base.")
    replicas: int = Field(default=1, description="Worker processes.")
    engine: dict[str, Any] = Field(
        default_factory=dict, description="Engine options (max_model_len, dtype...)."
    )


class ScaleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(description="Worker processes wanted (0 stops them all).")


class AdapterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter: str = Field(description="LoRA adapter reference (name follows new versions; name:3 pins).")


def _with_runtime(request: Request, d: dict[str, Any]) -> dict[str, Any]:
    sup = request.app.state.supervisor
    return {**d, "replica_status": sup.runtime(d["id"]) if sup is not None else []}


async def _write(request: Request, fn: Any, *args: Any, **kw: Any) -> dict[str, Any]:
    out = await asyncio.to_thread(fn, onebox_for(request), *args, **kw)
    if request.app.state.supervisor is not None:
        request.app.state.supervisor.wake()
    return _with_runtime(request, out)


@router.get("", response_model=list[DeploymentOut], summary="List deployments")
async def list_deployments(request: Request) -> list[dict[str, Any]]:
    rows = await asyncio.to_thread(deployments.list_deployments, onebox_for(request))
    return [_with_runtime(request, d) for d in rows]


@router.post("", response_model=DeploymentOut, status_code=status.HTTP_201_CREATED, summary="Deploy a model")
async def create_deployment(request: Request, body: DeployIn) -> dict[str, Any]:
    return await _write(
        request,
        deployments.deploy,
        body.model,
        name=body.name,
        adapters=body.adapters,
        replicas=body.replicas,
        engine=body.engine,
    )


@router.get("/{name}", response_model=DeploymentOut, summary="Show a deployment with replicas and events")
async def show_deployment(request: Request, name: str) -> dict[str, Any]:
    d = await asyncio.to_thread(deployments.show, onebox_for(request), name)
    return _with_runtime(request, d)


@router.patch("/{name}", response_model=DeploymentOut, summary="Scale a deployment")
async def scale_deployment(request: Request, name: str, body: ScaleIn) -> dict[str, Any]:
    return await _write(request, deployments.scale, name, body.replicas)


@router.delete("/{name}", response_model=DeploymentOut, summary="Undeploy (workers stop)")
async def delete_deployment(request: Request, name: str) -> dict[str, Any]:
    return await _write(request, deployments.delete, name)


@router.post("/{name}/adapters", response_model=DeploymentOut, summary="Serve another LoRA adapter")
async def add_adapter(request: Request, name: str, body: AdapterIn) -> dict[str, Any]:
    return await _write(request, deployments.add_adapter, name, body.adapter)


@router.delete("/{name}/adapters/{adapter}", response_model=DeploymentOut, summary="Stop serving an adapter")
async def remove_adapter(request: Request, name: str, adapter: str) -> dict[str, Any]:
    return await _write(request, deployments.remove_adapter, name, adapter)
