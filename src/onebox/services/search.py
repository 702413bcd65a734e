"""Global search as the caller may use it: its project (every project for an administrator who
asks), users and events by its role, KB documents read through the KB service.

Visibility follows the rest of the control plane: a project's resources to its members; nodes to
every reader; events of no project to those who may operate; users to system administrators,
to the administrators of a project they belong to, and to themselves. A caller never learns that
another project's resource exists: such resources are not in its scopes (see
:mod:`onebox.monitor.search_docs`), so it gets exactly what a word found nowhere gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from onebox.errors import PermissionDeniedError
from onebox.monitor.search import Hooks, SearchIndex, Viewer, parse_query
from onebox.monitor.search_docs import KbDocument
from onebox.progress import ProgressFn, null_progress
from onebox.services.context import App
from onebox.services.projects import get_project
from onebox.store.tables import KnowledgeBase, Project

log = logging.getLogger(__name__)

KEEP_CURRENT_S = 30.0
"""How often the supervising gateway catches the index up in the background."""


def _kb_documents(app: App) -> Any:
    def documents(kb: KnowledgeBase) -> list[KbDocument] | None:
        config = kb.config or {}
        if config.get("encrypted") or "index" not in config:
            return []  # titles and sources stay in the KB's encrypted index; no index: no documents
        from onebox.services import kbs

        try:
            with app.db.session() as s:
                project = s.get_one(Project, kb.project_id).name
            rows = kbs.documents(app.in_project(project), kb.name)
        except Exception as exc:  # an unreadable KB must not stop indexing the rest
            log.warning("search: cannot list the documents of knowledge base %s: %s", kb.id, exc)
            return None
        return [
            KbDocument(d["doc_id"], d["source"], d["title"] or "", d["format"] or "", tuple(d["tags"] or ()))
            for d in rows
        ]

    return documents


def index(app: App) -> SearchIndex:
    """The search index of the app's store, with its KB documents read through the KB service."""
    return SearchIndex(app.db.engine, Hooks(kb_documents=_kb_documents(app)))


def viewer(app: App, all_projects: bool = False) -> Viewer:
    """What the acting principal may see (the local operator: its project, as an administrator)."""
    actor = app.actor()
    with app.db.session() as s:
        if all_projects:
            if not actor.system_admin:
                raise PermissionDeniedError("only administrators may search every project")
            projects = tuple(s.scalars(select(Project.id).order_by(Project.id)))
        else:
            projects = (get_project(s, app.settings.project).id,)
    return Viewer(
        projects,
        user_id=None if actor.user_id == "local" else actor.user_id,
        all_users=actor.system_admin,
        members=actor.can("admin"),
        operator=actor.can("operate"),
    )


def search(
    app: App,
    q: str | None,
    *,
    types: Sequence[str] | str | None = None,
    limit: int | None = None,
    all_projects: bool = False,
) -> dict[str, Any]:
    """Ranked hits for ``q`` with their related resources; ``took_ms`` is the whole call."""
    started = time.perf_counter()
    query = parse_query(q, types, limit)
    result = index(app).search(query, viewer(app, all_projects))
    result["took_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def rebuild(app: App, progress: ProgressFn = null_progress) -> dict[str, Any]:
    """Empty the index and index everything again (system administrators)."""
    actor = app.actor()
    if not actor.system_admin:
        raise PermissionDeniedError("only administrators may rebuild the search index")
    started = time.perf_counter()
    written = index(app).rebuild(progress)
    app.audit("search.rebuilt", resource_type="search_index", documents=written)
    return {"documents": written, "seconds": round(time.perf_counter() - started, 2)}


class Keeper:
    """Catches the index up every :data:`KEEP_CURRENT_S` in the background (the supervising
    gateway runs one), so a search rarely has much to index and a burst of log output is indexed
    off the request path."""

    def __init__(self, app: App, interval_s: float = KEEP_CURRENT_S) -> None:
        self.index = index(app)
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[Any] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="search-keeper")

    async def stop(self) -> None:
        """Stop, and wait for a catch-up already running in its thread (cancelling the task does
        not stop the thread, and the store is closed right after)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._inflight is not None:
            with contextlib.suppress(Exception):
                await self._inflight

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self._inflight = asyncio.ensure_future(asyncio.to_thread(self.index.catch_up))
                await asyncio.shield(self._inflight)
            except Exception:  # the next pass tries again; searches still catch up themselves
                log.exception("search index catch-up failed")
