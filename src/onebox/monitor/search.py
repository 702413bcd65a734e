"""Global search: one query over every resource (models and versions, datasets and versions,
jobs, deployments, knowledge bases and their documents, nodes, events, users) and job log lines,
ranked with BM25, limited to what the caller may see, each hit with its related resources.

The pieces: :mod:`.search_docs` (a resource as documents, and scopes), :mod:`.search_sync` (the
catch-up that keeps the index current), :mod:`.search_store` (tables and ranking on SQLite FTS5 or
PostgreSQL), :mod:`.search_rank` (BM25 and the postings budget), :mod:`.search_hits` (visibility
and related resources). Query text is segmented by :func:`onebox.rag.lexical.terms`, as indexed
text is, so Chinese is searchable word by word (``知识库`` finds ``知识库问答`` and ``知识``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from onebox.errors import ErrorList, InvalidInputError
from onebox.monitor import search_rank
from onebox.monitor.search_docs import KINDS
from onebox.monitor.search_hits import Resolver, Viewer
from onebox.monitor.search_store import SearchStore
from onebox.monitor.search_sync import QUERY_LOG_LINES, Hooks, catch_up, rebuild
from onebox.progress import ProgressFn, null_progress
from onebox.rag.lexical import query_terms
from onebox.store.tables import Project

__all__ = ["KINDS", "Hooks", "Query", "SearchIndex", "Viewer", "parse_query"]

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 256
MAX_TERMS = 16
MAX_LIMIT = 100
DEFAULT_LIMIT = 20
LOG_HITS_PER_JOB = 3
"""Log lines shown per job: a job whose log repeats a word must not fill the page."""
TYPE_ALIASES = {
    "kb": "knowledge_base",
    "kbs": "knowledge_base",
    "document": "kb_document",
    "documents": "kb_document",
    "logs": "log",
    "version": "model_version",
}


@dataclass(frozen=True)
class Query:
    text: str
    kinds: tuple[str, ...] | None = None
    limit: int = DEFAULT_LIMIT


def parse_query(
    text: str | None, types: Sequence[str] | str | None = None, limit: int | None = None
) -> Query:
    """A validated query: text (1..256 characters), types (a list or comma-separated), limit
    (1..100). Every problem is reported at once."""
    errs = ErrorList()
    text = (text or "").strip()
    if not text:
        errs.add("q", "is empty", "say what to search for")
    elif len(text) > MAX_QUERY_CHARS:
        errs.add("q", f"is {len(text)} characters long, more than {MAX_QUERY_CHARS}", "shorten it")
    if isinstance(types, str):
        types = [types]
    kinds: list[str] = []
    for t in [p.strip().lower() for item in types or [] for p in item.split(",")]:
        if not t:
            continue
        kind = TYPE_ALIASES.get(t, t)
        if kind not in KINDS:
            errs.add("types", f"{t!r} is not a searchable type", f"use some of {', '.join(KINDS)}")
        elif kind not in kinds:
            kinds.append(kind)
    limit = DEFAULT_LIMIT if limit is None else limit
    if not 1 <= limit <= MAX_LIMIT:
        errs.add("limit", f"{limit} is not between 1 and {MAX_LIMIT}")
    errs.raise_if_any("invalid search", InvalidInputError)
    return Query(text, tuple(kinds) or None, limit)


class SearchIndex:
    """The search index of one metadata store."""

    def __init__(self, engine: Any, hooks: Hooks | None = None) -> None:
        self.store = SearchStore(engine)
        self.hooks = hooks or Hooks()

    def catch_up(self, progress: ProgressFn = null_progress, log_lines: int | None = None) -> int:
        """Index what changed since the last catch-up (at most ``log_lines`` new log lines);
        returns the documents written or removed."""
        return catch_up(self.store, self.hooks, progress, log_lines)

    def rebuild(self, progress: ProgressFn = null_progress) -> int:
        """Empty the index and index every resource and log again; returns the documents written."""
        return rebuild(self.store, self.hooks, progress)

    def search(self, query: Query, viewer: Viewer, *, fresh: bool = True) -> dict[str, Any]:
        """Ranked hits for ``query`` among what ``viewer`` may see. ``fresh`` catches up first; if
        that cannot happen now (the store is busy) the current index answers."""
        if fresh:
            try:
                self.catch_up(log_lines=QUERY_LOG_LINES)
            except SQLAlchemyError as exc:
                log.warning("search index catch-up failed, answering from the index as it is: %s", exc)
        words = query_terms(query.text)[:MAX_TERMS]
        out: dict[str, Any] = {
            "query": query.text,
            "terms": words,
            "types": list(query.kinds or KINDS),
            "approximate": False,
            "hits": [],
        }
        if not words:
            return out
        k = min(3 * query.limit + 10, 400)
        with self.store.reading() as conn:
            ranked, out["approximate"] = self.store.rank(
                conn, search_rank.phrases(viewer.scopes(), words), query.kinds, k
            )
            docs = self.store.docs(conn, [i for i, _ in ranked])
        candidates = _distinct([(docs[i], score) for i, score in ranked if i in docs])
        with Session(self.store.engine) as s:
            out["hits"] = _hits(s, viewer, candidates, query.limit)
        return out


def _distinct(ranked: list[tuple[Any, float]]) -> list[tuple[Any, float]]:
    """One hit per resource (a user has a document per scope), a few log lines per job."""
    seen: set[tuple[str, str, int | None]] = set()
    per_job: dict[str, int] = {}
    out = []
    for doc, score in ranked:
        sig = (doc.kind, doc.resource_id, doc.line)
        if sig in seen:
            continue
        if doc.kind == "log":
            per_job[doc.resource_id] = per_job.get(doc.resource_id, 0) + 1
            if per_job[doc.resource_id] > LOG_HITS_PER_JOB:
                continue
        seen.add(sig)
        out.append((doc, score))
    return out


def _hits(
    s: Session, viewer: Viewer, candidates: list[tuple[Any, float]], limit: int
) -> list[dict[str, Any]]:
    resolver = Resolver(s, viewer)
    shown: list[tuple[Any, float, Any]] = []
    step = limit + 5  # most candidates are live: check the best first, more only when some are not
    for i in range(0, len(candidates), step):
        chunk = candidates[i : i + step]
        live = resolver.live([d for d, _ in chunk])
        shown += [(d, score, live[d.id]) for d, score in chunk if d.id in live]
        if len(shown) >= limit:
            break
    shown = shown[:limit]
    related = resolver.related([(d, row) for d, _, row in shown])
    pids = {d.project_id for d, _, _ in shown if d.project_id}
    names = (
        dict(s.execute(select(Project.id, Project.name).where(Project.id.in_(pids))).all()) if pids else {}
    )  # type: ignore[arg-type]
    hits = []
    for (doc, score, _), rel in zip(shown, related, strict=True):
        hit: dict[str, Any] = {
            "type": doc.kind,
            "id": doc.resource_id,
            "name": doc.title,
            "detail": doc.detail,
            "status": doc.status,
            "project": names.get(doc.project_id),
            "score": round(score, 4),
            "created_at": doc.created_at.isoformat() if doc.created_at else None,
            "related": rel,
        }
        if doc.line is not None:
            hit["line"] = doc.line
        hits.append(hit)
    return hits
