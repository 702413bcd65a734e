"""Global search under ``/api/v1``: one query over every resource and job log the caller may see.
Thin over ``services/search``."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from onebox.api.auth import onebox_for
from onebox.monitor.search import DEFAULT_LIMIT, MAX_LIMIT, MAX_QUERY_CHARS
from onebox.monitor.search_docs import KINDS
from onebox.services import search as search_service

router = APIRouter(prefix="/api/v1", tags=["monitoring"])


class RelatedOut(BaseModel):
    relation: str = Field(
        description="How it relates to the hit: model, version, base_version, trained_on, produced_by, "
        "deployed_as, derived_version, input_of, output_model, ran_on, log_of, member_of..."
    )
    type: str = Field(description="Its type (a search type, or project).")
    id: str | None = Field(description="Its id (null for a deployment's adapter, named by reference).")
    name: str | None = Field(description="Its name as the CLI writes it (model:3, dataset:2, a job name).")
    status: str | None


class HitOut(BaseModel):
    type: str = Field(description=f"One of {', '.join(KINDS)}.")
    id: str = Field(description="The resource's id (a log line's job; a KB document's <kb id>/<doc id>).")
    name: str = Field(description="Display name (model:3 for a version; the job's name for a log line).")
    detail: str = Field(description="A line about it: description, source, error, the log line...")
    status: str | None = Field(description="Its status; an event's severity.")
    project: str | None = Field(description="Its project; null for nodes, users and project-less events.")
    score: float = Field(description="BM25 (higher is better).")
    created_at: str | None
    line: int | None = Field(default=None, description="A log hit's line number in the job log.")
    related: list[RelatedOut] = Field(description="Related resources the caller may see (lineage, usage).")


class SearchOut(BaseModel):
    query: str
    terms: list[str] = Field(description="The words searched for (Chinese segmented, compounds joined).")
    types: list[str]
    approximate: bool = Field(
        description="The query's words are so common that only the best candidates were ranked."
    )
    took_ms: float
    hits: list[HitOut]


class RebuildOut(BaseModel):
    documents: int = Field(description="Documents indexed.")
    seconds: float


@router.get(
    "/search",
    response_model=SearchOut,
    summary="Search every resource and job log",
    description="BM25-ranked hits among the caller's project's models, versions, datasets, jobs, "
    "deployments, knowledge bases and their documents (titles, sources), job log lines and events, "
    "plus nodes, and users as the caller's role allows; Chinese and English. Each hit lists its "
    "related resources. Another project's resources are never found.",
)
async def search(
    request: Request,
    q: str = Query("", description=f"What to search for (1-{MAX_QUERY_CHARS} characters)."),
    types: list[str] | None = Query(
        None, description=f"Only these types (repeat or comma-separate): {', '.join(KINDS)}."
    ),
    limit: int = Query(DEFAULT_LIMIT, description=f"Most hits returned (1-{MAX_LIMIT})."),
    all_projects: bool = Query(False, description="Every project's resources (administrators only)."),
) -> dict[str, Any]:
    return await asyncio.to_thread(
        search_service.search, onebox_for(request), q, types=types, limit=limit, all_projects=all_projects
    )


@router.post(
    "/search/rebuild",
    response_model=RebuildOut,
    summary="Rebuild the search index",
    description="Empty the index and index every resource and job log again (administrators).",
)
async def rebuild(request: Request) -> dict[str, Any]:
    return await asyncio.to_thread(search_service.rebuild, onebox_for(request))
