"""What each resource looks like to the global search: its document(s), and who may see them.

A document has a *name* (what people call the resource: its name, id, version label) and a
*body* (kind, status, description, source, error, spec values, a log line...); names weigh more
in ranking. Every document lives in exactly one *scope*, which prefixes each of its terms:

- ``p<project>``: the project's resources, knowledge-base documents, log lines and events;
- ``pub``: nodes (every reader sees the hardware, as ``GET /api/v1/nodes`` shows it);
- ``ops``: events that belong to no project (node, cluster, alerts): those who may operate the
  box see them, as in the event log;
- ``usr`` / ``u<user>`` / ``m<project>``: a user as all system administrators see it, as the
  user sees itself, and as the administrators of each project it is a member of see it (a user
  has one document per scope).

Knowledge-base document *contents* are never indexed here (the KB's own index serves them), and
an encrypted KB's titles and sources stay in its encrypted index too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from onebox.store.tables import (
    Dataset,
    DatasetVersion,
    Deployment,
    Event,
    Job,
    KnowledgeBase,
    Model,
    ModelVersion,
    Node,
    User,
)

KINDS: tuple[str, ...] = (
    "model",
    "model_version",
    "dataset",
    "dataset_version",
    "job",
    "deployment",
    "knowledge_base",
    "kb_document",
    "node",
    "event",
    "user",
    "log",
)
PUBLIC = "pub"
OPERATORS = "ops"
ALL_USERS = "usr"
MAX_BODY_CHARS = 4000
MAX_DETAIL_CHARS = 300
MAX_LINE_CHARS = 1000


def project_scope(project_id: str) -> str:
    return "p" + project_id.replace("_", "")


def self_scope(user_id: str) -> str:
    return "u" + user_id.replace("_", "")


def members_scope(project_id: str) -> str:
    return "m" + project_id.replace("_", "")


@dataclass(frozen=True)
class Doc:
    """One document before segmentation; ``owner`` is the ``kind:id`` whose removal removes it."""

    key: str
    kind: str
    resource_id: str
    owner: str
    scope: str
    project_id: str | None
    title: str
    detail: str
    status: str | None
    name_text: str
    body_text: str
    stamp: str
    created_at: datetime | None
    line: int | None = None


@dataclass(frozen=True)
class KbDocument:
    """What the search keeps of a knowledge-base document (never its content)."""

    doc_id: str
    source: str
    title: str
    format: str
    tags: tuple[str, ...] = ()


def iso(t: datetime | None) -> str:
    """A change marker: fixed width, so later times compare greater as strings too."""
    return t.astimezone(UTC).isoformat(timespec="microseconds") if t is not None else ""


def _cut(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _join(*parts: object) -> str:
    return " ".join(str(p) for p in parts if p not in (None, ""))


def values_text(value: Any, budget: int = 2000) -> str:
    """The scalar values of a JSON document (spec, config, event data), keys left out: references
    such as ``faq:2`` or ``smollm2-135m-instruct`` are what people search for."""
    out: list[str] = []
    size = 0

    def walk(v: Any) -> None:
        nonlocal size
        if size >= budget:
            return
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list | tuple):
            for x in v:
                walk(x)
        elif isinstance(v, str | int | float) and not isinstance(v, bool):
            s = str(v)[:200]
            out.append(s)
            size += len(s) + 1

    walk(value)
    return " ".join(out)[:budget]


def _doc(kind: str, rid: str, scope: str, project_id: str | None, **kw: Any) -> Doc:
    kw.setdefault("owner", f"{kind}:{rid}")
    kw["body_text"] = kw.get("body_text", "")[:MAX_BODY_CHARS]
    kw["detail"] = _cut(kw.get("detail", ""), MAX_DETAIL_CHARS)
    return Doc(
        key=kw.pop("key", f"{kind}:{rid}"),
        kind=kind,
        resource_id=rid,
        scope=scope,
        project_id=project_id,
        **kw,
    )


def model_doc(m: Model) -> Doc | None:
    if m.status == "deleted":
        return None
    return _doc(
        "model",
        m.id,
        project_scope(m.project_id),
        m.project_id,
        title=m.name,
        detail=m.description,
        status=m.status,
        name_text=_join(m.name),
        body_text=_join(m.id, m.kind, m.builtin, m.description),
        stamp=iso(m.updated_at),
        created_at=m.created_at,
    )


def model_version_doc(mv: ModelVersion, model_name: str) -> Doc | None:
    if mv.status == "deleted":
        return None
    label = f"{model_name}:{mv.version}"
    return _doc(
        "model_version",
        mv.id,
        project_scope(mv.project_id),
        mv.project_id,
        title=label,
        detail=_join(mv.format, mv.architecture, mv.source),
        status=mv.status,
        name_text=_join(model_name, f"v{mv.version}"),
        body_text=_join(
            mv.id, mv.format, mv.architecture, mv.license, mv.source, mv.error, values_text(mv.config, 500)
        ),
        stamp=iso(mv.updated_at),
        created_at=mv.created_at,
    )


def dataset_doc(ds: Dataset) -> Doc | None:
    if ds.status == "deleted":
        return None
    return _doc(
        "dataset",
        ds.id,
        project_scope(ds.project_id),
        ds.project_id,
        title=ds.name,
        detail=ds.description,
        status=ds.status,
        name_text=_join(ds.name),
        body_text=_join(ds.id, ds.description),
        stamp=iso(ds.updated_at),
        created_at=ds.created_at,
    )


def dataset_version_doc(dv: DatasetVersion, dataset_name: str) -> Doc | None:
    if dv.status == "deleted":
        return None
    return _doc(
        "dataset_version",
        dv.id,
        project_scope(dv.project_id),
        dv.project_id,
        title=f"{dataset_name}:{dv.version}",
        detail=_join(dv.schema, dv.source_format, dv.source_name),
        status=dv.status,
        name_text=_join(dataset_name, f"v{dv.version}"),
        body_text=_join(dv.id, dv.schema, dv.source_format, dv.source_name),
        stamp=iso(dv.updated_at),
        created_at=dv.created_at,
    )


def job_doc(j: Job) -> Doc:
    return _doc(
        "job",
        j.id,
        project_scope(j.project_id),
        j.project_id,
        title=j.name or j.id,
        detail=j.error or _join(j.type, j.status),
        status=j.status,
        name_text=_join(j.name),
        body_text=_join(j.id, j.type, j.status, j.error, j.owner, j.host, values_text(j.spec)),
        stamp=iso(j.updated_at),
        created_at=j.created_at,
    )


def deployment_doc(d: Deployment) -> Doc | None:
    if d.status == "deleted":
        return None
    cfg = d.config or {}
    adapters = cfg.get("adapters") or {}
    return _doc(
        "deployment",
        d.id,
        project_scope(d.project_id),
        d.project_id,
        title=d.name,
        detail=_join(cfg.get("model"), d.status),
        status=d.status,
        name_text=_join(d.name),
        body_text=_join(
            d.id, cfg.get("model"), d.alias, d.status, values_text(adapters, 500), " ".join(adapters)
        ),
        stamp=iso(d.updated_at),
        created_at=d.created_at,
    )


def kb_doc(kb: KnowledgeBase) -> Doc:
    cfg = kb.config or {}
    return _doc(
        "knowledge_base",
        kb.id,
        project_scope(kb.project_id),
        kb.project_id,
        title=kb.name,
        detail=kb.description,
        status=kb.status,
        name_text=_join(kb.name),
        body_text=_join(kb.id, kb.description, cfg.get("embedding"), cfg.get("chat_model")),
        stamp=iso(kb.updated_at),
        created_at=kb.created_at,
    )


def kb_document_doc(kb: KnowledgeBase, d: KbDocument) -> Doc:
    rid = f"{kb.id}/{d.doc_id}"[:128]
    return _doc(
        "kb_document",
        rid,
        project_scope(kb.project_id),
        kb.project_id,
        owner=f"knowledge_base:{kb.id}",
        title=d.title or d.source,
        detail=d.source,
        status=None,
        name_text=_join(d.title, d.source),
        body_text=_join(d.format, " ".join(d.tags), kb.name),
        stamp="",
        created_at=None,
    )


def node_stamp(n: Node) -> str:
    """Nodes beat every few seconds; what search indexes of them changes rarely."""
    text = json.dumps([n.hostname, n.healthy, n.problems, n.versions, _gpus(n)], sort_keys=True, default=str)
    return "h" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _gpus(n: Node) -> list[str]:
    return [str(g.get("name", "")) for g in (n.info or {}).get("gpus", []) if isinstance(g, dict)]


def node_doc(n: Node) -> Doc:
    return _doc(
        "node",
        n.id,
        PUBLIC,
        None,
        title=n.id,
        detail=_join(n.hostname, "; ".join(map(str, n.problems or []))),
        status="healthy" if n.healthy else "unhealthy",
        name_text=_join(n.id, n.hostname),
        body_text=_join(
            "healthy" if n.healthy else "unhealthy",
            values_text(n.problems, 500),
            values_text(n.versions, 500),
            " ".join(_gpus(n)),
        ),
        stamp=node_stamp(n),
        created_at=n.first_seen_at,
    )


def event_scope(e: Event) -> str:
    return project_scope(e.project_id) if e.project_id else OPERATORS


def event_doc(e: Event) -> Doc:
    return _doc(
        "event",
        e.id,
        event_scope(e),
        e.project_id,
        title=e.message or e.kind,
        detail=_join(e.kind, e.resource_type, e.resource_id),
        status=e.severity,
        name_text="",
        body_text=_join(
            e.message, e.kind, e.severity, e.resource_type, e.resource_id, values_text(e.data, 1000)
        ),
        stamp=iso(e.created_at),
        created_at=e.created_at,
    )


def user_docs(u: User, member_of: Iterable[str], stamp: str) -> list[Doc]:
    """One document per scope the user is visible in (see the module docstring); ``stamp`` is the
    latest change of the user or its memberships."""
    scopes = [ALL_USERS, self_scope(u.id), *(members_scope(p) for p in sorted(set(member_of)))]
    return [
        _doc(
            "user",
            u.id,
            scope,
            None,
            key=f"user:{u.id}" if scope == ALL_USERS else f"user:{u.id}@{scope}",
            title=u.username,
            detail=u.display_name,
            status=u.status,
            name_text=_join(u.username, u.display_name),
            body_text=_join("administrator" if u.is_admin else "", u.status),
            stamp=stamp,
            created_at=u.created_at,
        )
        for scope in scopes
    ]


def log_doc(job_id: str, job_name: str, project_id: str, line_no: int, text: str) -> Doc:
    text = text[:MAX_LINE_CHARS]
    return _doc(
        "log",
        job_id,
        project_scope(project_id),
        project_id,
        key=f"log:{job_id}:{line_no}",
        owner=f"job:{job_id}",
        title=job_name,
        detail=text,
        status=None,
        name_text="",
        body_text=text,
        stamp="",
        created_at=None,
        line=line_no,
    )
