"""Keeping the search index current: a catch-up from change markers before each query.

Why not index on every create/update/delete? Writers are many and in many processes (services,
job workers and the executor, the monitor loop, other nodes in a cluster), they change rows by
ORM and by ``UPDATE`` statements alike, and some are hot (a job's progress every step, a node's
heartbeat every pass): hooks in each would add segmentation and index writes to those paths and
still miss a writer. Every source row already carries a marker (``updated_at``, ``created_at``,
a node's content, a log file's size), so the index catches up from them instead:

- per source, the rows whose marker is at or after the last catch-up less :data:`OVERLAP_S` (a
  transaction that committed late is still seen) are compared with the stamps of their
  documents through an index on the marker; only changed rows are segmented and written. When
  nothing changed, a catch-up is a dozen indexed range reads and no write;
- a hard delete leaves no row to see: its event (``deployment.deleted``, ``kb.deleted``) removes
  the documents, and every hit is checked against its live row before it is shown anyway
  (:mod:`.search_hits`), so a stale document is never a leak;
- job logs are followed by byte offset for the jobs that are running or changed recently.

Writes happen in batches, each in one transaction under the indexer's lock.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, cast, literal, select, union, union_all
from sqlalchemy.orm import Session

from onebox.jobs import state
from onebox.monitor import search_docs as sd
from onebox.monitor.search_store import Row, SearchStore, segment
from onebox.progress import ProgressFn, null_progress
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
    SearchDoc,
    User,
)

OVERLAP_S = 60.0
"""How far back each catch-up looks again: longer than any transaction between taking its
timestamps and committing (clocks of cluster nodes must agree within it, as NTP keeps them)."""
MARK_EVERY_S = 15.0
"""A source's mark is written when it moved this much (or something was indexed)."""
BATCH = 500
MAX_LOG_LINES = 50_000
"""Lines indexed per job log; a longer log is searchable in its first lines only."""
MAX_LOG_READ = 4 << 20
"""Bytes of one log read per catch-up (the rest on the next)."""
QUERY_LOG_LINES = 20_000
"""Log lines one search's catch-up indexes at most (about 1 s): a burst of log output never holds
a search for long; the gateway's background catch-up (and the next searches) take the rest."""
DELETING_EVENTS = {"deployment.deleted": "deployment", "kb.deleted": "knowledge_base"}
KB_CHANGING_EVENTS = frozenset({"kb.ingested", "kb.documents_removed", "kb.created", "kb.encrypted"})

KbDocuments = Callable[[KnowledgeBase], list[sd.KbDocument] | None]
"""A knowledge base's documents (None: cannot be read now, leave what is indexed)."""


@dataclass
class Hooks:
    """What the index needs from above: KB documents live in the KB's own index."""

    kb_documents: KbDocuments = lambda kb: None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


@dataclass
class _Batch:
    rows: list[Row] = field(default_factory=list)
    delete_keys: list[str] = field(default_factory=list)
    delete_owners: list[tuple[str, str | None]] = field(default_factory=list)
    marks: dict[str, str] = field(default_factory=dict)
    drop_marks: list[str] = field(default_factory=list)

    def add(self, docs: Iterable[sd.Doc]) -> None:
        self.rows.extend(segment(d) for d in docs)

    def __len__(self) -> int:
        return len(self.rows) + len(self.delete_keys) + len(self.delete_owners)


@dataclass(frozen=True)
class _Source:
    name: str
    table: Any
    column: Any
    """The indexed change marker; None: probe every row by content (few rows: nodes)."""
    build: Callable[[Session, Sequence[Any], Hooks, _Batch], None]
    feeds: str | None = None
    """Another source whose rows this one's changes re-index (a membership: its user's)."""
    probe_id: Any = None
    """The column naming the row to re-index (default: the table's id)."""


# -- builders: rows -> documents -------------------------------------------------------------


def _simple(to_doc: Callable[[Any], sd.Doc | None], kind: str) -> Callable[..., None]:
    def build(s: Session, rows: Sequence[Any], hooks: Hooks, out: _Batch) -> None:
        for r in rows:
            doc = to_doc(r)
            if doc is None:
                out.delete_owners.append((f"{kind}:{r.id}", None))
            else:
                out.add([doc])

    return build


def _names(s: Session, table: Any, ids: Iterable[str]) -> dict[str, str]:
    ids = list(set(ids))
    return dict(s.execute(select(table.id, table.name).where(table.id.in_(ids))).all()) if ids else {}  # type: ignore[arg-type]


def _model_versions(s: Session, rows: Sequence[ModelVersion], hooks: Hooks, out: _Batch) -> None:
    names = _names(s, Model, (r.model_id for r in rows))
    _simple(lambda r: sd.model_version_doc(r, names.get(r.model_id, "?")), "model_version")(
        s, rows, hooks, out
    )


def _dataset_versions(s: Session, rows: Sequence[DatasetVersion], hooks: Hooks, out: _Batch) -> None:
    names = _names(s, Dataset, (r.dataset_id for r in rows))
    build = _simple(lambda r: sd.dataset_version_doc(r, names.get(r.dataset_id, "?")), "dataset_version")
    build(s, rows, hooks, out)


def _kbs(s: Session, rows: Sequence[KnowledgeBase], hooks: Hooks, out: _Batch) -> None:
    for kb in rows:
        out.add([sd.kb_doc(kb)])
        _kb_documents(kb, hooks, out)


def _kb_documents(kb: KnowledgeBase, hooks: Hooks, out: _Batch) -> None:
    docs = hooks.kb_documents(kb)
    if docs is not None:  # the set replaces what was indexed (see SearchStore.apply)
        out.delete_owners.append((f"knowledge_base:{kb.id}", "kb_document"))
        out.add(sd.kb_document_doc(kb, d) for d in docs)


def _users(s: Session, rows: Sequence[User], hooks: Hooks, out: _Batch) -> None:
    """A user's documents are stamped with the latest change of the user or its memberships."""
    ids = [u.id for u in rows]
    member_of: dict[str, list[str]] = {}
    changed = {u.id: u.updated_at for u in rows}
    if ids:
        q = select(Membership.user_id, Membership.project_id, Membership.updated_at)
        for uid, pid, at in s.execute(q.where(Membership.user_id.in_(ids))):
            member_of.setdefault(uid, []).append(pid)
            changed[uid] = max(changed[uid], at)
    for u in rows:
        out.delete_owners.append((f"user:{u.id}", None))
        out.add(sd.user_docs(u, member_of.get(u.id, []), sd.iso(changed[u.id])))


def _events(s: Session, rows: Sequence[Event], hooks: Hooks, out: _Batch) -> None:
    kbs: set[str] = set()
    for e in rows:
        out.add([sd.event_doc(e)])
        gone = DELETING_EVENTS.get(e.kind)
        if gone is not None and e.resource_id:
            out.delete_owners.append((f"{gone}:{e.resource_id}", None))
        elif e.resource_type == "knowledge_base" and e.kind in KB_CHANGING_EVENTS and e.resource_id:
            kbs.add(e.resource_id)
    if kbs:
        for kb in s.scalars(select(KnowledgeBase).where(KnowledgeBase.id.in_(kbs))):
            _kb_documents(kb, hooks, out)


def _src(
    name: str,
    table: Any,
    build: Callable[..., None],
    column: str | None = "updated_at",
    feeds: str | None = None,
    probe_id: str | None = None,
) -> _Source:
    return _Source(
        name,
        table,
        getattr(table, column) if column else None,
        build,
        feeds,
        getattr(table, probe_id) if probe_id else None,
    )


SOURCES: tuple[_Source, ...] = (
    _src("model", Model, _simple(sd.model_doc, "model")),
    _src("model_version", ModelVersion, _model_versions),
    _src("dataset", Dataset, _simple(sd.dataset_doc, "dataset")),
    _src("dataset_version", DatasetVersion, _dataset_versions),
    _src("job", Job, _simple(sd.job_doc, "job")),
    _src("deployment", Deployment, _simple(sd.deployment_doc, "deployment")),
    _src("knowledge_base", KnowledgeBase, _kbs),
    _src("user", User, _users),
    # a membership has no document of its own: its user's documents are rebuilt
    _src("membership", Membership, _users, feeds="user", probe_id="user_id"),
    _src("node", Node, _simple(sd.node_doc, "node"), column=None),
    _src("event", Event, _events, column="created_at"),
)
"""Resources first, events last: an event's deletion outlives what its resource's row said."""


# -- the catch-up ----------------------------------------------------------------------------


@dataclass
class CatchUp:
    """One catch-up over every source; ``written`` counts documents written or removed."""

    store: SearchStore
    hooks: Hooks
    progress: ProgressFn = null_progress
    log_lines: int | None = None
    """Log lines this catch-up may index (None: all there are)."""
    written: int = 0
    _batch: _Batch = field(default_factory=_Batch)

    def run(self) -> int:
        now = self.hooks.clock()
        with self.store.reading() as conn:
            marks = self.store.marks(conn, "src:")
        since = {src.name: _since(marks.get(f"src:{src.name}")) for src in SOURCES}
        with Session(self.store.engine) as s:
            changed = self._changed(s, since)
            for src in SOURCES:
                ids = changed.get(src.name, [])
                for i in range(0, len(ids), BATCH):
                    rows = list(s.scalars(select(src.table).where(src.table.id.in_(ids[i : i + BATCH]))))
                    src.build(s, rows, self.hooks, self._batch)
                    self.progress(f"index {src.name}", min(i + BATCH, len(ids)), len(ids))
                    self._flush()
                self._mark(src.name, marks, now, bool(ids))
            self._logs(s, _since(marks.get("src:log")))
            self._mark("log", marks, now, False)
        self._flush(force=True)
        return self.written

    def _mark(self, name: str, marks: dict[str, str], now: datetime, did: bool) -> None:
        old = _since(marks.get(f"src:{name}"), 0.0)
        if did or old is None or (now - old).total_seconds() >= MARK_EVERY_S:
            self._batch.marks[f"src:{name}"] = now.isoformat()

    def _changed(self, s: Session, since: dict[str, datetime | None]) -> dict[str, list[Any]]:
        """Per source, the ids of rows whose documents are missing or older than the row: one
        probe of the change markers (a UNION of indexed range reads), then their stamps."""
        probes = []
        for src in SOURCES:
            if src.column is None:
                continue
            rid = src.probe_id if src.probe_id is not None else src.table.id
            q = select(
                literal(src.feeds or src.name, String).label("src"), cast(rid, String).label("id"), src.column
            )
            if since[src.name] is not None:
                q = q.where(src.column >= since[src.name])
            probes.append(q)
        found = [(name, rid, sd.iso(t)) for name, rid, t in s.execute(union_all(*probes))]
        nodes = [("node", n.id, sd.node_stamp(n)) for n in s.execute(select(Node.__table__))]
        stamps = _doc_stamps(s, [f"{name}:{rid}" for name, rid, _ in found + nodes])
        out: dict[str, set[Any]] = {}
        for name, rid, stamp in found:  # times: only a newer row is a change (stamps only grow)
            if stamps.get(f"{name}:{rid}", "") < stamp:
                out.setdefault(name, set()).add(rid)
        for name, rid, stamp in nodes:  # content hashes
            if stamps.get(f"{name}:{rid}") != stamp:
                out.setdefault(name, set()).add(rid)
        return {name: sorted(ids) for name, ids in out.items()}

    def _logs(self, s: Session, since: datetime | None) -> None:
        q = select(Job.id, Job.name, Job.project_id, Job.log_path, Job.status).where(
            Job.log_path.is_not(None)
        )
        if since is None:
            jobs = list(s.execute(q))
        else:  # two indexed reads (an OR of both would scan every job)
            jobs = list(
                s.execute(union(q.where(Job.status.in_(state.ACTIVE)), q.where(Job.updated_at >= since)))
            )
        for i in range(0, len(jobs), BATCH):
            chunk = jobs[i : i + BATCH]
            offsets = _marks_of(self.store, [f"log:{j.id}" for j in chunk])
            for j in chunk:
                self._log(j, offsets.get(f"log:{j.id}"))
                self._flush()

    def _log(self, job: Any, mark: str | None) -> None:
        offset, lines = (int(x) for x in mark.split(":")) if mark else (0, 0)
        try:
            size = os.stat(job.log_path).st_size
        except OSError:
            return
        out = self._batch
        if size < offset:  # replaced or truncated: index it again from the start
            out.delete_owners.append((f"job:{job.id}", "log"))
            offset = lines = 0
        if size == offset or lines >= MAX_LOG_LINES or self.log_lines == 0:
            return
        with open(job.log_path, "rb") as f:
            f.seek(offset)
            data = f.read(MAX_LOG_READ)
        end = data.rfind(b"\n") + 1
        if end == 0 and (job.status not in state.TERMINAL or offset + len(data) < size):
            return  # a partial line: wait for its end
        if end == 0 or (job.status in state.TERMINAL and offset + len(data) == size):
            end = len(data)
        docs = []
        done = 0  # bytes consumed
        while done < end and lines < MAX_LOG_LINES and self.log_lines != 0:
            nl = data.find(b"\n", done, end)
            raw = data[done : end if nl < 0 else nl + 1]
            done += len(raw)
            lines += 1
            if self.log_lines is not None:
                self.log_lines -= 1
            # a progress bar redraws with \r: the line is what the terminal shows last
            text = raw.decode("utf-8", errors="replace").rstrip().rsplit("\r", 1)[-1].strip()
            if text:
                docs.append(sd.log_doc(job.id, job.name or job.id, job.project_id, lines, text))
        out.add(docs)
        out.marks[f"log:{job.id}"] = f"{offset + done}:{lines}"
        self.progress("index log", len(docs), None)

    def _flush(self, force: bool = False) -> None:
        b = self._batch
        if not force and len(b) < BATCH:
            return
        if not len(b) and not b.marks:
            return
        with self.store.writing() as conn:
            self.written += self.store.apply(
                conn, b.rows, delete_keys=b.delete_keys, delete_owners=b.delete_owners
            )
            self.store.set_marks(conn, b.marks)
        self._batch = _Batch()


def _since(mark: str | None, overlap: float = OVERLAP_S) -> datetime | None:
    if not mark:
        return None
    return datetime.fromisoformat(mark) - timedelta(seconds=overlap)


def _doc_stamps(s: Session, keys: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in range(0, len(keys), BATCH):
        q = select(SearchDoc.key, SearchDoc.stamp).where(SearchDoc.key.in_(keys[i : i + BATCH]))
        out.update(s.execute(q).all())
    return out


def _marks_of(store: SearchStore, sources: Sequence[str]) -> dict[str, str]:
    if not sources:
        return {}
    with store.reading() as conn:
        return store.marks_of(conn, sources)


def catch_up(
    store: SearchStore, hooks: Hooks, progress: ProgressFn = null_progress, log_lines: int | None = None
) -> int:
    """Bring the index up to date (at most ``log_lines`` new log lines); returns the documents
    written or removed."""
    return CatchUp(store, hooks, progress, log_lines).run()


def rebuild(store: SearchStore, hooks: Hooks, progress: ProgressFn = null_progress) -> int:
    """Empty the index and index everything again (after a restore, or to reclaim space)."""
    with store.writing() as conn:
        store.clear(conn)
    return catch_up(store, hooks, progress)
