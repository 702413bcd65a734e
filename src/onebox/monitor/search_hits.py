"""Hits of the global search: who may see what, each hit checked against its live row, and its
related resources (resource relationship aggregation) from the lineage columns.

The index only proposes candidates. Before a document is shown its resource is loaded from its
own table and must still exist (not deleted) and be visible to the caller: a document the
catch-up has not removed yet (a hard delete, a membership taken away) is never shown, so a
stale index cannot leak. Related resources pass the same visibility test, and are labelled the
way the CLI names them (``model:3``, ``dataset:2``, job names).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from onebox.jobs import state
from onebox.monitor import search_docs as sd
from onebox.store.tables import (
    Dataset,
    DatasetVersion,
    Deployment,
    Event,
    Job,
    KnowledgeBase,
    Membership,
    Model,
    ModelVersion,
    Node,
    Project,
    User,
)

RELATED_PER_RELATION = 5
_TABLES: dict[str, Any] = {
    "model": Model,
    "model_version": ModelVersion,
    "dataset": Dataset,
    "dataset_version": DatasetVersion,
    "job": Job,
    "log": Job,
    "deployment": Deployment,
    "knowledge_base": KnowledgeBase,
    "kb_document": KnowledgeBase,
}
"""The table of each project-scoped kind's live row (a log line's is its job's, a document's its KB's)."""
KB_INGEST_JOB = "kb_ingest"


@dataclass(frozen=True)
class Viewer:
    """Who searches: the projects it sees, and what it may see of users and the system."""

    project_ids: tuple[str, ...]
    user_id: str | None = None
    all_users: bool = False
    """Every user (a system administrator acting with its ``admin`` permission)."""
    members: bool = False
    """May see the members of its projects (a project administrator)."""
    operator: bool = False
    """May see events that belong to no project (nodes, cluster, alerts): who may operate."""

    def scopes(self) -> list[str]:
        out = [sd.project_scope(p) for p in self.project_ids] + [sd.PUBLIC]
        if self.user_id:
            out.append(sd.self_scope(self.user_id))
        if self.members:
            out += [sd.members_scope(p) for p in self.project_ids]
        if self.operator:
            out.append(sd.OPERATORS)
        if self.all_users:
            out.append(sd.ALL_USERS)
        return out

    def sees(self, project_id: str | None) -> bool:
        return project_id is not None and project_id in self.project_ids


@dataclass
class _Rel:
    hit: int
    relation: str
    kind: str
    id: str | None
    name: str | None = None


def _ids(s: Session, col: Any, values: Iterable[Any], *cols: Any, where: Any = None) -> list[Any]:
    values = list({v for v in values if v is not None})
    if not values:
        return []
    q = select(*cols).where(col.in_(values))
    if where is not None:
        q = q.where(where)
    return list(s.execute(q))


class Resolver:
    """Checks hits and gathers their related resources, in a few batched queries per kind."""

    def __init__(self, session: Session, viewer: Viewer) -> None:
        self.s = session
        self.v = viewer
        self.rels: list[_Rel] = []

    # -- live rows ------------------------------------------------------------------------------

    def live(self, docs: Sequence[Any]) -> dict[int, Any]:
        """Document id -> its live row, for the documents the viewer may see now."""
        by_kind: dict[str, list[Any]] = defaultdict(list)
        for d in docs:
            by_kind[d.kind].append(d)
        out: dict[int, Any] = {}
        for kind, group in by_kind.items():
            rows = self._rows(kind, [self._row_id(d) for d in group])
            for d in group:
                row = rows.get(self._row_id(d))
                if row is not None:
                    out[d.id] = row
        return out

    @staticmethod
    def _row_id(doc: Any) -> str:
        return str(doc.resource_id).split("/", 1)[0] if doc.kind == "kb_document" else str(doc.resource_id)

    def _rows(self, kind: str, ids: list[str]) -> dict[str, Any]:
        """Live rows as plain Core rows (attribute access, no ORM identity map: cheaper)."""
        s, v = self.s, self.v
        table = _TABLES.get(kind)
        if table is not None:
            t = table.__table__
            rows = s.execute(select(t).where(t.c.id.in_(ids), t.c.project_id.in_(v.project_ids)))
            return {r.id: r for r in rows if r.status != "deleted"}
        if kind == "node":
            return {r.id: r for r in s.execute(select(Node.__table__).where(Node.id.in_(ids)))}
        if kind == "event":
            rows = s.execute(select(Event.__table__).where(Event.id.in_(ids)))
            return {e.id: e for e in rows if self._sees_event(e)}
        if kind == "user":
            return self._users(ids)
        return {}

    def _sees_event(self, e: Any) -> bool:
        if e.project_id is not None:
            return self.v.sees(e.project_id)
        return self.v.operator

    def _users(self, ids: list[str]) -> dict[str, Any]:
        rows = {u.id: u for u in self.s.execute(select(User.__table__).where(User.id.in_(ids)))}
        if self.v.all_users:
            return rows
        members: set[str] = set()
        if self.v.members:
            q = select(Membership.user_id).where(
                Membership.user_id.in_(list(rows)), Membership.project_id.in_(self.v.project_ids)
            )
            members = set(self.s.scalars(q))
        return {uid: u for uid, u in rows.items() if uid == self.v.user_id or uid in members}

    # -- related resources ------------------------------------------------------------------------

    def related(self, hits: Sequence[tuple[Any, Any]]) -> list[list[dict[str, Any]]]:
        """For (document, live row) pairs, each one's related resources."""
        self.rels = []
        by_kind: dict[str, list[tuple[int, Any, Any]]] = defaultdict(list)
        for i, (doc, row) in enumerate(hits):
            by_kind[doc.kind].append((i, doc, row))
        for kind, group in by_kind.items():
            getattr(self, f"_rel_{kind}")(group)
        labels = self._labels()
        out: list[list[dict[str, Any]]] = [[] for _ in hits]
        seen: set[tuple[int, str, str, str | None]] = set()
        counts: dict[tuple[int, str], int] = defaultdict(int)
        for r in self.rels:
            if r.id is None:
                label = {"name": r.name, "status": None}
            else:
                found = labels.get((r.kind, r.id))
                if found is None:
                    continue  # gone, or not the viewer's to see
                label = found
            sig = (r.hit, r.relation, r.kind, r.id or r.name)
            if sig in seen or counts[(r.hit, r.relation)] >= RELATED_PER_RELATION:
                continue
            seen.add(sig)
            counts[(r.hit, r.relation)] += 1
            out[r.hit].append({"relation": r.relation, "type": r.kind, "id": r.id, **label})
        return out

    def _add(self, hit: int, relation: str, kind: str, rid: str | None, name: str | None = None) -> None:
        if rid is not None or name is not None:
            self.rels.append(_Rel(hit, relation, kind, rid, name))

    def _rel_model(self, group: list[tuple[int, Any, Any]]) -> None:
        idx = {row.id: i for i, _, row in group}
        versions = _ids(
            self.s,
            ModelVersion.model_id,
            idx,
            ModelVersion.model_id,
            ModelVersion.id,
            where=ModelVersion.status == "ready",
        )
        for mid, vid in sorted(versions, key=lambda r: r[1], reverse=True):
            self._add(idx[mid], "version", "model_version", vid)
        q = select(ModelVersion.model_id, Deployment.id).join(
            ModelVersion, Deployment.model_version_id == ModelVersion.id
        )
        for mid, did in self.s.execute(q.where(ModelVersion.model_id.in_(list(idx)))):
            self._add(idx[mid], "deployment", "deployment", did)

    def _rel_model_version(self, group: list[tuple[int, Any, Any]]) -> None:
        idx = {row.id: i for i, _, row in group}
        for i, _, mv in group:
            self._add(i, "model", "model", mv.model_id)
            self._add(i, "base_version", "model_version", mv.base_version_id)
            self._add(i, "trained_on", "dataset_version", mv.dataset_version_id)
            self._add(i, "produced_by", "job", mv.job_id)
        for mvid, did in _ids(
            self.s, Deployment.model_version_id, idx, Deployment.model_version_id, Deployment.id
        ):
            self._add(idx[mvid], "deployed_as", "deployment", did)
        for base, vid in _ids(
            self.s, ModelVersion.base_version_id, idx, ModelVersion.base_version_id, ModelVersion.id
        ):
            self._add(idx[base], "derived_version", "model_version", vid)
        for emb, kid in _ids(
            self.s,
            KnowledgeBase.embedding_version_id,
            idx,
            KnowledgeBase.embedding_version_id,
            KnowledgeBase.id,
        ):
            self._add(idx[emb], "embeds", "knowledge_base", kid)
        for inp, jid in _ids(self.s, Job.input_model_version_id, idx, Job.input_model_version_id, Job.id):
            self._add(idx[inp], "input_of", "job", jid)

    def _rel_dataset(self, group: list[tuple[int, Any, Any]]) -> None:
        idx = {row.id: i for i, _, row in group}
        rows = _ids(
            self.s,
            DatasetVersion.dataset_id,
            idx,
            DatasetVersion.dataset_id,
            DatasetVersion.id,
            DatasetVersion.version,
            where=DatasetVersion.status == "ready",
        )
        for dsid, dvid, _ in sorted(rows, key=lambda r: r[2], reverse=True):
            self._add(idx[dsid], "version", "dataset_version", dvid)

    def _rel_dataset_version(self, group: list[tuple[int, Any, Any]]) -> None:
        idx = {row.id: i for i, _, row in group}
        for i, _, dv in group:
            self._add(i, "dataset", "dataset", dv.dataset_id)
            self._add(i, "parent_version", "dataset_version", dv.parent_version_id)
            self._add(i, "produced_by", "job", dv.job_id)
        for dvid, jid in _ids(
            self.s, Job.input_dataset_version_id, idx, Job.input_dataset_version_id, Job.id
        ):
            self._add(idx[dvid], "input_of", "job", jid)
        for dvid, mvid in _ids(
            self.s, ModelVersion.dataset_version_id, idx, ModelVersion.dataset_version_id, ModelVersion.id
        ):
            self._add(idx[dvid], "trained", "model_version", mvid)

    def _rel_job(self, group: list[tuple[int, Any, Any]]) -> None:
        idx = {row.id: i for i, _, row in group}
        for i, _, j in group:
            self._add(i, "input_model", "model_version", j.input_model_version_id)
            self._add(i, "input_dataset", "dataset_version", j.input_dataset_version_id)
            kb = (j.spec or {}).get("kb_id")
            self._add(i, "knowledge_base", "knowledge_base", kb if isinstance(kb, str) else None)
        for jid, mvid in _ids(self.s, ModelVersion.job_id, idx, ModelVersion.job_id, ModelVersion.id):
            self._add(idx[jid], "output_model", "model_version", mvid)
        for jid, dvid in _ids(self.s, DatasetVersion.job_id, idx, DatasetVersion.job_id, DatasetVersion.id):
            self._add(idx[jid], "output_dataset", "dataset_version", dvid)
        hosts: dict[str, list[int]] = defaultdict(list)
        for i, _, j in group:
            if j.host:
                hosts[j.host].append(i)
        for nid, hostname in _ids(self.s, Node.hostname, hosts, Node.id, Node.hostname):
            for i in hosts[hostname]:
                self._add(i, "ran_on", "node", nid)

    def _rel_log(self, group: list[tuple[int, Any, Any]]) -> None:
        for i, _, j in group:
            self._add(i, "log_of", "job", j.id)

    def _rel_deployment(self, group: list[tuple[int, Any, Any]]) -> None:
        for i, _, d in group:
            self._add(i, "serves", "model_version", d.model_version_id)
            for name, ref in ((d.config or {}).get("adapters") or {}).items():
                self._add(i, "adapter", "model_version", None, f"{name} ({ref})")

    def _rel_knowledge_base(self, group: list[tuple[int, Any, Any]]) -> None:
        idx = {row.id: i for i, _, row in group}
        for i, _, kb in group:
            self._add(i, "embedding_model", "model_version", kb.embedding_version_id)
        kb_id = Job.spec["kb_id"].as_string()
        q = (
            select(Job.id, kb_id)
            .where(Job.type == KB_INGEST_JOB, Job.project_id.in_(self.v.project_ids), kb_id.in_(list(idx)))
            .order_by(Job.created_at.desc())
            .limit(RELATED_PER_RELATION * len(idx))
        )
        for jid, kb in self.s.execute(q):
            self._add(idx[kb], "ingest_job", "job", jid)

    def _rel_kb_document(self, group: list[tuple[int, Any, Any]]) -> None:
        for i, _, kb in group:
            self._add(i, "in_knowledge_base", "knowledge_base", kb.id)

    def _rel_node(self, group: list[tuple[int, Any, Any]]) -> None:
        hosts: dict[str, list[int]] = defaultdict(list)
        for i, _, n in group:
            hosts[n.hostname].append(i)
            if n.id != n.hostname:
                hosts[n.id].append(i)
        rows = _ids(self.s, Job.host, hosts, Job.host, Job.id, where=Job.status.in_(state.ACTIVE))
        for host, jid in rows:
            for i in hosts[host]:
                self._add(i, "running_job", "job", jid)

    def _rel_event(self, group: list[tuple[int, Any, Any]]) -> None:
        for i, _, e in group:
            if e.resource_type in sd.KINDS and e.resource_id:
                self._add(i, "about", e.resource_type, e.resource_id)

    def _rel_user(self, group: list[tuple[int, Any, Any]]) -> None:
        idx = {row.id: i for i, _, row in group}
        q = (
            select(Membership.user_id, Project.id, Project.name, Membership.role)
            .join(Project, Project.id == Membership.project_id)
            .where(Membership.user_id.in_(list(idx)))
        )
        for uid, pid, pname, role in self.s.execute(q):
            if self.v.all_users or self.v.sees(pid):
                self.rels.append(_Rel(idx[uid], "member_of", "project", pid, f"{pname} ({role})"))

    # -- labels -----------------------------------------------------------------------------------

    def _labels(self) -> dict[tuple[str, str], dict[str, Any]]:
        want: dict[str, set[str]] = defaultdict(set)
        for r in self.rels:
            if r.id is not None:
                want[r.kind].add(r.id)
        out: dict[tuple[str, str], dict[str, Any]] = {}
        pids = self.v.project_ids
        for kind, ids in want.items():
            if kind == "project":
                for r in self.rels:
                    if r.kind == "project" and r.id is not None:
                        out[("project", r.id)] = {"name": r.name, "status": None}
            elif kind == "model_version":
                q = (
                    select(ModelVersion.id, Model.name, ModelVersion.version, ModelVersion.status)
                    .join(Model, Model.id == ModelVersion.model_id)
                    .where(ModelVersion.id.in_(ids), ModelVersion.project_id.in_(pids))
                )
                for vid, name, ver, st in self.s.execute(q):
                    if st != "deleted":
                        out[(kind, vid)] = {"name": f"{name}:{ver}", "status": st}
            elif kind == "dataset_version":
                q = (
                    select(DatasetVersion.id, Dataset.name, DatasetVersion.version, DatasetVersion.status)
                    .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
                    .where(DatasetVersion.id.in_(ids), DatasetVersion.project_id.in_(pids))
                )
                for vid, name, ver, st in self.s.execute(q):
                    if st != "deleted":
                        out[(kind, vid)] = {"name": f"{name}:{ver}", "status": st}
            elif kind == "node":
                for nid, healthy in self.s.execute(select(Node.id, Node.healthy).where(Node.id.in_(ids))):
                    out[(kind, nid)] = {"name": nid, "status": "healthy" if healthy else "unhealthy"}
            else:
                table = _TABLES.get(kind)
                if table is None or kind in ("model_version", "dataset_version"):
                    continue
                q = select(table.id, table.name, table.status).where(
                    table.id.in_(ids), table.project_id.in_(pids)
                )
                for rid, name, st in self.s.execute(q):
                    if st != "deleted":
                        out[(kind, rid)] = {"name": name or rid, "status": st}
        return out
