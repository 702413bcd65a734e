"""Knowledge bases: a named document collection, its index, ingestion jobs, search and grounded answers.

A KB row holds the name, the embedding model version and, in ``config``, where its index lives (a
folder under ``<home>/kbs/<id>/index`` in the embedded mode, a ``postgresql://`` URL in cluster
mode) and how documents are chunked. Files to add are first copied into the KB's source folder
(``<home>/kbs/<id>/sources``), so the ingestion job reads stable inputs even if the originals
change or the upload's temp files vanish; the job then brings the index up to date with them
(:mod:`onebox.rag.ingest`): unchanged files are skipped, so a cancelled, killed or retried job
continues where it stopped.

``ask`` retrieves, then answers with :func:`onebox.rag.answer.answer`; the model behind
``generate`` is a deployed one when a gateway serves it, or the model loaded in this process by
the onebox engine otherwise. Embedders, indexes and local engines are cached per process.

Encryption at rest: a KB created while it is on (``config["encrypted"]``) keeps nothing in
plaintext under its folder. Every source is sealed (AES-256-GCM under the KB's data key
``kb-<id>``, bound to its path in the KB folder) and decrypted in memory for parsing; the embedded
index is a SQLCipher database and its graph cache is sealed; ``to_dataset`` copies are sealed.
Deleting the KB shreds the key, so copies of its folder left in backups become unreadable. A KB
created before encryption was switched on stays readable as it is (plaintext index, plaintext
sources beside sealed ones added later) until ``onebox encryption encrypt-existing`` converts it
(:func:`encrypt_existing`). The pgvector index in cluster mode is out of reach of this: it relies
on the database server's own encryption at rest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from onebox.config import Settings
from onebox.errors import (
    AlreadyExistsError,
    AuthenticationError,
    ConfigError,
    ConflictError,
    ErrorList,
    InUseError,
    InvalidInputError,
    NotFoundError,
    OneboxError,
    Problem,
    UnavailableError,
)
from onebox.jobs import state
from onebox.jobs.resources import machine_capacity
from onebox.rag.ingest import FileResult, ParseOptions, ingest_folder, sha256_of, walk_folder
from onebox.rag.types import ChunkIndex, DocumentRecord, Hit, SearchFilter
from onebox.security.storage import enforce_storage, replacing_bytes
from onebox.security.streams import Sealer, is_sealed_file
from onebox.services import encryption, events, jobs, models
from onebox.services.context import App
from onebox.services.names import name_key, validate_name, validate_text
from onebox.services.projects import get_project
from onebox.store.tables import Job, KnowledgeBase, ModelVersion, new_id

RESOURCE = "knowledge_base"
JOB_TYPE = "kb_ingest"
DEFAULT_EMBEDDING = "all-minilm-l6-v2"
DEFAULT_CHAT_MODEL = "smollm2-135m-instruct"
MODES = ("hybrid", "lexical", "dense")
MAX_K = 50
DEFAULT_MAX_ANSWER_TOKENS = 384

Message = dict[str, str]
Generate = Callable[[list[Message]], str]


# -- where things live ------------------------------------------------------------------------


def kb_dir(settings: Settings, kb_id: str) -> Path:
    return settings.home / "kbs" / kb_id


def sources_dir(settings: Settings, kb_id: str) -> Path:
    """The snapshot of every file added to the KB: what ingestion jobs read."""
    return kb_dir(settings, kb_id) / "sources"


def index_location(settings: Settings, kb_id: str) -> str:
    """A folder in the embedded mode; ``<kb_index_url>?kb=<id>`` (pgvector) in cluster mode.

    Only the embedded index is encrypted by onebox; a pgvector index is protected by the
    PostgreSQL server's own encryption at rest (disk or tablespace encryption), configured there."""
    url = settings.kb_index_url
    if url:
        return f"{url}{'&' if '?' in url else '?'}kb={kb_id}"
    return str(kb_dir(settings, kb_id) / "index")


# -- per-process caches -------------------------------------------------------------------------

_lock = threading.RLock()
_embedders: dict[str, Any] = {}
_indexes: dict[str, ChunkIndex] = {}
_local_models: dict[str, Any] = {}


def _embedder(app: App, version_id: str) -> Any:
    """The KB's embedding model, loaded once per process (the gateway keeps it warm)."""
    from onebox.rag.embedding import Embedder

    with _lock:
        emb = _embedders.get(version_id)
        if emb is None:
            with app.db.session() as s:
                mv = s.get(ModelVersion, version_id)
                if mv is None:
                    raise NotFoundError(f"embedding model version {version_id} no longer exists")
                ref = f"{mv.model.name}:{mv.version}"
            emb = Embedder.load(models.checkout(app, ref, weights_in_memory=True))
            _embedders[version_id] = emb
        return emb


def _subject(kb_id: str) -> str:
    """The name of the KB's data key (see :mod:`onebox.security.datakeys`)."""
    return f"kb-{kb_id}"


def _index(location: str, dim: int, sealer: Callable[[], Sealer | None] = lambda: None) -> ChunkIndex:
    """The cached index at ``location``; ``sealer`` (asked only when it is opened) gives the key
    of an encrypted embedded index."""
    from onebox.rag.index import open_index

    with _lock:
        idx = _indexes.get(location)
        if idx is None:
            options: dict[str, Any] = {}
            if not location.startswith("postgres"):
                key = sealer()
                if key is not None:
                    options["sealer"] = key
            idx = open_index(location, dim, **options)
            _indexes[location] = idx
        return idx


def _index_sealer(app: App, kb_id: str, config: dict[str, Any]) -> Callable[[], Sealer | None]:
    """What opens the KB's index: its data key when the KB is encrypted (KeyUnavailableError
    without the master key that wrapped it), nothing for a plaintext KB."""
    if not config.get("encrypted"):
        return lambda: None
    return lambda: encryption.opener(app, _subject(kb_id))


def _forget_index(location: str) -> ChunkIndex | None:
    with _lock:
        return _indexes.pop(location, None)


def clear_caches() -> None:
    """Close every cached index and model (tests; a process that is about to fork)."""
    with _lock:
        for idx in _indexes.values():
            with contextlib.suppress(Exception):
                idx.close()
        for emb in _embedders.values():
            with contextlib.suppress(Exception):
                emb.close()
        _indexes.clear()
        _embedders.clear()
        _local_models.clear()


# -- rows -----------------------------------------------------------------------------------------


def _pid(session: Session, app: App) -> str:
    return get_project(session, app.settings.project).id


def _find(session: Session, pid: str, name: str) -> KnowledgeBase | None:
    key = name_key(name)
    rows = session.scalars(select(KnowledgeBase).where(KnowledgeBase.project_id == pid))
    return next((kb for kb in rows if name_key(kb.name) == key), None)


def _get(session: Session, pid: str, name: str) -> KnowledgeBase:
    kb = _find(session, pid, name)
    if kb is None:
        raise NotFoundError(f"knowledge base {name!r} does not exist; see `onebox kb list`", param="kb")
    return kb


def _event(s: Session, kb: KnowledgeBase, kind: str, message: str, **data: Any) -> None:
    events.record(
        s,
        project_id=kb.project_id,
        resource_type=RESOURCE,
        resource_id=kb.id,
        kind=kind,
        message=message,
        **data,
    )


class _Handle:
    """What a KB operation needs outside the database session: ids, config, index, embedder."""

    def __init__(self, app: App, kb: KnowledgeBase) -> None:
        self.app = app
        self.id = kb.id
        self.name = kb.name
        self.config = dict(kb.config)
        self.embedding_version_id = kb.embedding_version_id or ""
        self.location: str = self.config["index"]
        self.dim = int(self.config["dim"])
        self.encrypted = bool(self.config.get("encrypted"))
        self._opener: Sealer | None = None

    @property
    def index(self) -> ChunkIndex:
        return _index(self.location, self.dim, _index_sealer(self.app, self.id, self.config))

    def writer(self) -> Sealer | None:
        """What new files of the KB are sealed with: its key for an encrypted KB (even with
        encryption since switched off), a new or existing key while encryption is on, else None."""
        if self.encrypted:
            return encryption.opener(self.app, _subject(self.id))
        return encryption.sealer(self.app, _subject(self.id))

    def read_source(self, source: str, path: Path) -> bytes | None:
        """A snapshot file's plaintext when it is sealed (None: read the file as it is). In an
        encrypted KB a file that is not sealed was put there behind onebox's back: tampered."""
        if is_sealed_file(path):
            if self._opener is None:
                self._opener = encryption.opener(self.app, _subject(self.id))
            return self._opener.read(path, f"sources/{source}")
        if self.encrypted:
            from onebox.errors import TamperedError

            raise TamperedError(
                f"sources/{source} is not sealed, but knowledge base {self.name!r} is encrypted: it was "
                "put there behind onebox's back; add the document again",
                file=source,
            )
        return None

    @property
    def embedder(self) -> Any:
        return _embedder(self.app, self.embedding_version_id)

    @property
    def sources(self) -> Path:
        return sources_dir(self.app.settings, self.id)


def _handle(app: App, name: str) -> _Handle:
    with app.db.session() as s:
        return _Handle(app, _get(s, _pid(s, app), name))


def _active_jobs(app: App, kb_id: str) -> list[Job]:
    with app.db.session() as s:
        rows = s.scalars(
            select(Job).where(Job.type == JOB_TYPE, Job.status.in_((state.QUEUED, *state.ACTIVE)))
        )
        return [j for j in rows if (j.spec or {}).get("kb_id") == kb_id]


def kb_dict(app: App, kb: KnowledgeBase, *, with_stats: bool = True) -> dict[str, Any]:
    cfg = kb.config
    out: dict[str, Any] = {
        "id": kb.id,
        "name": kb.name,
        "description": kb.description,
        "status": kb.status,
        "embedding": cfg.get("embedding"),
        "embedding_version_id": kb.embedding_version_id,
        "dim": cfg.get("dim"),
        "chat_model": cfg.get("chat_model"),
        "chunk_tokens": cfg.get("chunk_tokens"),
        "overlap_tokens": cfg.get("overlap_tokens"),
        "index": cfg.get("index"),
        "documents": None,
        "chunks": None,
        "bytes_on_disk": None,
        "created_at": kb.created_at.isoformat(),
        "updated_at": kb.updated_at.isoformat(),
    }
    out["encrypted"] = bool(cfg.get("encrypted"))
    if with_stats:
        try:
            st = _index(cfg["index"], int(cfg["dim"]), _index_sealer(app, kb.id, cfg)).stats()
            out.update(documents=st.documents, chunks=st.chunks, bytes_on_disk=st.bytes_on_disk)
        except Exception as exc:  # one broken index must not hide the others from `kb list`
            out["status"] = "error"
            out["error"] = f"{type(exc).__name__}: {exc}"
    return out


# -- create, list, show, delete -------------------------------------------------------------------


def create(
    app: App,
    name: str,
    *,
    description: str = "",
    embedding: str | None = None,
    chat_model: str | None = None,
    chunk_tokens: int | None = None,
    overlap_tokens: int | None = None,
) -> dict[str, Any]:
    """A new, empty KB. ``embedding`` is an embedding model reference (default the built-in MiniLM);
    ``chat_model`` the model ``ask`` answers with when none is named."""
    errs = ErrorList()
    try:
        validate_name(name, "name")
    except InvalidInputError as exc:
        errs.problems.extend(exc.problems)
    try:
        validate_text(description, "description", 10_000)
    except InvalidInputError as exc:
        errs.problems.extend(exc.problems)
    try:
        opts = ParseOptions(
            max_tokens=chunk_tokens or ParseOptions.max_tokens,
            overlap_tokens=ParseOptions.overlap_tokens if overlap_tokens is None else overlap_tokens,
        )
    except ConfigError as exc:
        fields = {"max_tokens": "chunk_tokens"}
        errs.problems.extend(Problem(fields.get(p.field, p.field), p.reason) for p in exc.problems)
        opts = ParseOptions()
    errs.raise_if_any("invalid knowledge base", InvalidInputError)
    emb_ref = embedding or DEFAULT_EMBEDDING
    with app.db.session() as s:
        pid = _pid(s, app)
        if _find(s, pid, name) is not None:
            raise AlreadyExistsError(
                f"knowledge base {name!r} already exists",
                problems=[Problem("name", f"{name!r} is taken", "choose another name or delete the other")],
            )
        mv = models.resolve(s, pid, emb_ref)
        if mv.model.kind != "embedding":
            raise InvalidInputError(
                f"{emb_ref} is a {mv.model.kind} model",
                problems=[Problem("embedding", "is not an embedding model", f"use {DEFAULT_EMBEDDING}")],
            )
        emb_label = f"{mv.model.name}:{mv.version}"
        mv_id = mv.id
        if chat_model:
            models.resolve(s, pid, chat_model)  # NotFoundError names it now, not at the first ask
    embedder = _embedder(app, mv_id)  # loading it now proves the model works and gives its dims
    kb_id = new_id("kb")
    sealer = encryption.sealer(app, _subject(kb_id))  # creates the KB's data key
    config = {
        "embedding": emb_label,
        "dim": int(embedder.dim),
        "max_input_tokens": int(embedder.max_tokens),
        "chunk_tokens": min(opts.max_tokens, int(embedder.max_tokens)),
        "overlap_tokens": opts.overlap_tokens,
        "chat_model": chat_model or DEFAULT_CHAT_MODEL,
        "index": index_location(app.settings, kb_id),
        "encrypted": sealer is not None,
    }
    try:
        _index(config["index"], config["dim"], lambda: sealer)  # a bad pgvector URL fails here
    except BaseException:
        encryption.shred(app, _subject(kb_id))
        raise
    sources_dir(app.settings, kb_id).mkdir(parents=True, exist_ok=True)
    try:
        with app.db.session() as s:
            pid = _pid(s, app)
            if _find(s, pid, name) is not None:
                raise AlreadyExistsError(f"knowledge base {name!r} already exists")
            kb = KnowledgeBase(
                id=kb_id,
                project_id=pid,
                name=name,
                status="ready",
                description=description,
                embedding_version_id=mv_id,
                config=config,
            )
            s.add(kb)
            s.flush()
            _event(s, kb, "kb.created", f"created knowledge base {name} ({emb_label})")
            return kb_dict(app, kb)
    except (AlreadyExistsError, DBIntegrityError) as exc:
        _drop_storage(app.settings, kb_id, config)
        encryption.shred(app, _subject(kb_id))
        if isinstance(exc, AlreadyExistsError):
            raise
        raise ConflictError(f"knowledge base {name!r} was created concurrently; run it again") from exc


def list_kbs(app: App) -> list[dict[str, Any]]:
    with app.db.session() as s:
        rows = list(
            s.scalars(
                select(KnowledgeBase)
                .where(KnowledgeBase.project_id == _pid(s, app))
                .order_by(KnowledgeBase.name)
            )
        )
        return [kb_dict(app, kb) for kb in rows]


def show(app: App, name: str) -> dict[str, Any]:
    """The KB with counts, its ingestion jobs in flight, and its recent events."""
    with app.db.session() as s:
        kb = _get(s, _pid(s, app), name)
        out = kb_dict(app, kb)
        out["events"] = [
            {
                "kind": e.kind,
                "message": e.message,
                "severity": e.severity,
                "created_at": e.created_at.isoformat(),
            }
            for e in events.for_resource(s, RESOURCE, kb.id)
        ][-20:]
    out["jobs"] = [
        {"id": j.id, "status": j.status, "progress": j.progress} for j in _active_jobs(app, out["id"])
    ]
    return out


def document_dict(doc: DocumentRecord) -> dict[str, Any]:
    return {
        "doc_id": doc.doc_id,
        "source": doc.source,
        "title": doc.title,
        "format": doc.format,
        "size_bytes": doc.size_bytes,
        "chunks": doc.n_chunks,
        "tags": list(doc.tags),
        "content_hash": doc.content_hash,
        "modified": doc.modified.isoformat() if doc.modified else None,
        "added": doc.added.isoformat() if doc.added else None,
    }


def documents(app: App, name: str) -> list[dict[str, Any]]:
    return [document_dict(d) for d in _handle(app, name).index.documents()]


def _drop_storage(settings: Settings, kb_id: str, config: dict[str, Any]) -> None:
    location = str(config.get("index", ""))
    idx = _forget_index(location)
    if location.startswith("postgres"):
        from onebox.rag.index import open_index

        idx = idx or open_index(location, int(config["dim"]))
        drop = getattr(idx, "drop", None)
        if drop is not None:
            drop()
    if idx is not None:
        with contextlib.suppress(Exception):
            idx.close()
    shutil.rmtree(kb_dir(settings, kb_id), ignore_errors=True)


def delete(app: App, name: str) -> dict[str, Any]:
    """Remove the KB, its index and its source snapshot, then shred its data key (whatever copy of
    its sealed files survives, in a backup or a disk block, can no longer be read); refused while
    an ingestion job is active."""
    with app.db.session() as s:
        kb = _get(s, _pid(s, app), name)
        info = kb_dict(app, kb)
    active = _active_jobs(app, info["id"])
    if active:
        ids = ", ".join(j.id for j in active)
        raise InUseError(
            f"knowledge base {info['name']!r} is being ingested by {ids}; "
            "cancel it first (`onebox jobs cancel`)"
        )
    with app.db.session() as s:
        kb = s.get(KnowledgeBase, info["id"])
        if kb is None:
            raise NotFoundError(f"knowledge base {name!r} does not exist")
        _event(s, kb, "kb.deleted", f"deleted knowledge base {kb.name}")
        config = dict(kb.config)
        s.delete(kb)
    _drop_storage(app.settings, info["id"], config)
    encryption.shred(app, _subject(info["id"]))
    return {**info, "status": "deleted"}


# -- adding and removing documents --------------------------------------------------------------


def _check_source(source: str) -> str | None:
    """Why ``source`` cannot name a file in the snapshot (absolute, ``..``), or None."""
    p = PurePosixPath(source.replace("\\", "/"))
    if (
        not source.strip()
        or p.is_absolute()
        or ".." in p.parts
        or any(part.startswith(".") for part in p.parts)
    ):
        return f"{source!r} is not a plain relative file name"
    return None


def collect(paths: Sequence[Path | str]) -> tuple[list[tuple[str, Path]], list[str], bool]:
    """(source, file) pairs for CLI paths; a folder gives its documents with paths relative to it.

    Also returns the files of folders that are not documents (skipped), and whether exactly one
    folder was given (it may then be synced)."""
    items: list[tuple[str, Path]] = []
    skipped: list[str] = []
    errs = ErrorList()
    folders = 0
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            folders += 1
            found, left = walk_folder(p)
            items.extend(found)
            skipped.extend(str(p / s) for s in left)
        elif p.is_file():
            items.append((p.name, p))
        else:
            errs.add("paths", f"{p} does not exist", "check the path")
    errs.raise_if_any("cannot add these files", InvalidInputError)
    return items, skipped, folders == 1 and len(paths) == 1


def _snapshot(dest_root: Path, items: Sequence[tuple[str, Path]], sealer: Sealer | None = None) -> None:
    """Copy files into the snapshot atomically (a reader never sees half a file); identical ones stay.

    With ``sealer`` each file is sealed instead, bound to ``sources/<source>`` (its path in the KB
    folder), and an existing sealed copy is compared by its plaintext."""
    for source, path in items:
        dest = dest_root / source
        dest.parent.mkdir(parents=True, exist_ok=True)
        if _same_content(dest, path, source, sealer):
            continue
        if sealer is not None:
            st = path.stat()
            with open(path, "rb") as fh:
                sealer.write(dest, iter(lambda: fh.read(1 << 20), b""), f"sources/{source}")
            os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))  # the date filter uses the original's
            continue
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        shutil.copy2(path, tmp)  # keeps mtime: the date filter uses the original's
        os.replace(tmp, dest)


def _same_content(dest: Path, path: Path, source: str, sealer: Sealer | None) -> bool:
    """Whether the snapshot file ``dest`` already holds ``path``'s bytes (sealed or not as wanted)."""
    if not dest.is_file() or is_sealed_file(dest) != (sealer is not None):
        return False
    if sealer is None:
        return dest.stat().st_size == path.stat().st_size and sha256_of(dest) == sha256_of(path)
    import hashlib

    from onebox.errors import TamperedError

    h = hashlib.sha256()
    try:
        with open(dest, "rb") as fh:
            for block in sealer.open(fh, f"sources/{source}"):
                h.update(block)
    except TamperedError:
        return False  # damaged: overwrite it with the new copy
    return h.hexdigest() == sha256_of(path)


def add(
    app: App,
    name: str,
    items: Sequence[tuple[str, Path]],
    *,
    tags: Sequence[str] | None = None,
    sync: bool = False,
    ocr: bool = True,
    priority: int = 0,
) -> Job:
    """Snapshot ``(source, file)`` pairs into the KB and queue an ingestion job for them.

    With ``sync`` the KB is made to hold exactly these files: snapshot files not among them are
    removed and the job deletes their documents."""
    h = _handle(app, name)
    errs = ErrorList()
    seen: dict[str, Path] = {}
    for source, path in items:
        why = _check_source(source)
        if why:
            errs.add("files", why, "use names like report.pdf or folder/report.pdf")
        elif not Path(path).is_file():
            errs.add("files", f"{path} is not a file")
        elif source in seen:
            errs.add("files", f"{path} and {seen[source]} are both named {source!r}", "rename one")
        else:
            seen[source] = Path(path)
    if not items and not sync:
        errs.add("files", "no documents to add", "pass files or a folder with supported documents")
    clean_tags = [t.strip() for t in tags or [] if t.strip()]
    for t in clean_tags:
        if len(t) > 64 or "," in t:
            errs.add("tags", f"{t!r} is not a tag", "use up to 64 characters without commas")
    errs.raise_if_any("cannot add these files", InvalidInputError)
    enforce_storage(app, replacing_bytes(h.sources, seen.items()))  # storage quota
    h.sources.mkdir(parents=True, exist_ok=True)
    _snapshot(h.sources, list(seen.items()), h.writer())
    if sync:
        for source, _ in walk_folder(h.sources)[0]:
            if source not in seen:
                (h.sources / source).unlink(missing_ok=True)
    spec = {
        "kb": h.name,
        "kb_id": h.id,
        "sources": None if sync else sorted(seen),
        "sync": sync,
        "tags": clean_tags if tags is not None else None,
        "options": ParseOptions(
            ocr=ocr, max_tokens=int(h.config["chunk_tokens"]), overlap_tokens=int(h.config["overlap_tokens"])
        ).as_dict(),
    }
    cpus = min(2.0, float(machine_capacity(gpus=False).cpus))
    job = jobs.submit(
        app, JOB_TYPE, spec, name=f"kb-ingest-{h.name}"[:128], priority=priority,
        resources={"cpus": cpus, "memory_mb": 2048},
    )  # fmt: skip
    with app.db.session() as s:
        kb = s.get(KnowledgeBase, h.id)
        if kb is not None:
            _event(s, kb, "kb.ingest_submitted", f"{job.id}: {len(seen)} file(s){' (sync)' if sync else ''}")
    return job


def remove(app: App, name: str, sources: Sequence[str]) -> dict[str, Any]:
    """Delete documents (by source, as listed) from the index and the snapshot."""
    if not sources:
        raise InvalidInputError(
            "nothing to remove", problems=[Problem("sources", "name at least one document")]
        )
    h = _handle(app, name)
    known = {d.source: d for d in h.index.documents()}
    removed, missing = [], []
    for source in dict.fromkeys(sources):
        doc = known.get(source)
        if doc is not None:
            h.index.delete_document(doc.doc_id)
        snap = h.sources / source
        in_snapshot = _check_source(source) is None and snap.is_file()
        if in_snapshot:  # also a file whose ingestion failed or has not run yet
            snap.unlink()
        (removed if doc is not None or in_snapshot else missing).append(source)
    if missing and not removed:
        raise NotFoundError(
            f"knowledge base {h.name!r} has no document {missing[0]!r}; see `onebox kb show {h.name}`",
            problems=[Problem("sources", f"{m!r} is not in the knowledge base") for m in missing],
        )
    with app.db.session() as s:
        kb = s.get(KnowledgeBase, h.id)
        if kb is not None:
            _event(s, kb, "kb.documents_removed", f"removed {len(removed)} document(s)", sources=removed)
    return {"removed": removed, "missing": missing}


# -- the ingestion job -------------------------------------------------------------------------


def run_ingest_job(ctx: Any) -> dict[str, Any]:
    """Job handler (worker process): ingest the snapshot; resumable because the index is."""
    import time

    ctx.validate_spec({"kb": str, "kb_id": str, "sources": list, "sync": bool, "tags": list, "options": dict})
    app = ctx.open_app()
    spec = ctx.spec
    with app.db.session() as s:
        kb = s.get(KnowledgeBase, spec["kb_id"])
        if kb is None:
            from onebox.errors import JobFailedError

            raise JobFailedError(f"knowledge base {spec['kb']!r} was deleted before its ingestion ran")
        h = _Handle(app, kb)
    opts = ParseOptions.from_dict(spec.get("options"))
    target: Path | list[Path] = (
        h.sources if spec.get("sync") else [h.sources / src for src in spec.get("sources") or []]
    )
    if ctx.checkpoint_step:
        ctx.log.info("resuming: files already in the index are skipped")
    ctx.log.info("loading %s", h.config["embedding"])
    embedder, index = h.embedder, h.index
    state_ = {"files": 0, "total": 0, "last_mark": time.monotonic()}

    def progress(stage: str, done: int, total: int | None) -> None:
        if stage == "files":
            state_["files"], state_["total"] = done, total or 0
            ctx.progress(done, total)
        elif total:
            ctx.progress(state_["files"] + done / total, state_["total"] or None)

    def on_file(r: FileResult) -> None:
        if r.outcome == "failed":
            ctx.log.warning("failed %s: %s", r.source, r.reason)
        else:
            ctx.log.info("%s %s (%d chunks, %.1f s)", r.outcome, r.source, r.chunks, r.seconds)
        if time.monotonic() - state_["last_mark"] > 2.0:
            ctx.mark_checkpoint(state_["files"] + 1)  # the index is the checkpoint; this enables `resume`
            state_["last_mark"] = time.monotonic()

    report = ingest_folder(
        index,
        embedder,
        target,
        tags=spec.get("tags"),
        progress=progress,
        cancel=ctx.should_stop,
        parse_options=opts,
        base=None if spec.get("sync") else h.sources,
        on_file=on_file,
        read=h.read_source,
    )
    if report.cancelled:
        ctx.mark_checkpoint(state_["files"])
    counts = report.counts()
    ctx.log.info(
        "%s: %s; %d chunks in %.1f s",
        "stopped" if report.cancelled else "done",
        ", ".join(f"{v} {k}" for k, v in counts.items()),
        report.chunks,
        report.seconds,
    )
    with app.db.session() as s:
        kb = s.get(KnowledgeBase, h.id)
        if kb is not None:
            _event(s, kb, "kb.ingested", f"{ctx.job_id}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return {"kb": h.name, "stopped": report.cancelled, **report.as_dict()}


# -- search and ask -------------------------------------------------------------------------------


def search_filter(
    sources: Sequence[str] = (),
    tags: Sequence[str] = (),
    modified_from: datetime | str | None = None,
    modified_to: datetime | str | None = None,
) -> SearchFilter:
    """A filter from edge input; bad dates are reported with the field they came from."""
    errs = ErrorList()

    def when(value: datetime | str | None, field: str) -> datetime | None:
        if value is None or isinstance(value, datetime):
            return value
        try:
            d = datetime.fromisoformat(value)
        except ValueError:
            errs.add(field, f"{value!r} is not a date", "write YYYY-MM-DD or an ISO timestamp")
            return None
        return d if d.tzinfo else d.astimezone()

    flt = SearchFilter(
        sources=tuple(sources), tags=tuple(tags),
        modified_from=when(modified_from, "modified_from"), modified_to=when(modified_to, "modified_to"),
    )  # fmt: skip
    errs.raise_if_any("invalid filter", InvalidInputError)
    return flt


def _check_query(query: str, k: int, mode: str, field: str = "query") -> None:
    errs = ErrorList()
    if not isinstance(query, str) or not query.strip():
        errs.add(field, "must not be empty")
    if not 1 <= k <= MAX_K:
        errs.add("k", f"is {k}; must be between 1 and {MAX_K}")
    if mode not in MODES:
        errs.add("mode", f"is {mode!r}", f"use one of {', '.join(MODES)}")
    errs.raise_if_any("invalid search", InvalidInputError)


def retrieve(
    app: App, name: str, query: str, *, k: int = 5, mode: str = "hybrid", flt: SearchFilter | None = None
) -> list[Hit]:
    from onebox.rag.retrieval import Retriever

    _check_query(query, k, mode)
    h = _handle(app, name)
    return Retriever(h.index, h.embedder).search(query, k, mode, flt)  # type: ignore[arg-type]


def hit_dict(hit: Hit, number: int | None = None) -> dict[str, Any]:
    c, d = hit.chunk, hit.document
    out = {
        "rank": hit.rank,
        "score": round(float(hit.score), 6),
        "scores": {k: round(float(v), 6) for k, v in hit.scores.items()},
        "via": hit.via,
        "source": d.source,
        "title": d.title,
        "locator": c.locator(),
        "page_start": c.page_start,
        "page_end": c.page_end,
        "sheet": c.sheet,
        "slide": c.slide,
        "heading_path": list(c.heading_path),
        "text": c.text,
        "chunk_id": c.chunk_id,
        "doc_id": c.doc_id,
        "tags": list(d.tags),
    }
    if number is not None:
        out = {"number": number, **out}
    return out


def search(
    app: App, name: str, query: str, *, k: int = 5, mode: str = "hybrid", flt: SearchFilter | None = None
) -> list[dict[str, Any]]:
    return [hit_dict(h) for h in retrieve(app, name, query, k=k, mode=mode, flt=flt)]


def chat_model(app: App, name: str) -> str:
    """The model a KB answers with when the caller names none."""
    return str(_handle(app, name).config.get("chat_model") or DEFAULT_CHAT_MODEL)


def ask(
    app: App,
    name: str,
    question: str,
    *,
    k: int = 5,
    mode: str = "hybrid",
    flt: SearchFilter | None = None,
    generate: Generate | None = None,
    model: str | None = None,
    max_tokens: int = DEFAULT_MAX_ANSWER_TOKENS,
) -> dict[str, Any]:
    """Retrieve, then answer with citations (or say it is not in the KB without calling a model).

    ``generate`` defaults to the KB's (or ``model``'s) model loaded in this process."""
    from onebox.rag.answer import answer

    _check_query(question, k, mode, "question")
    model = model or chat_model(app, name)
    hits = retrieve(app, name, question, k=k, mode=mode, flt=flt)
    used: dict[str, str] = {}

    def gen(messages: list[Message]) -> str:
        fn = generate or local_generator(app, model, max_tokens=max_tokens)
        used["model"] = model
        return fn(messages)

    ans = answer(question, hits, gen)
    numbers = {c.chunk_id: c.number for c in ans.citations}
    inferred = {c.chunk_id for c in ans.citations if c.inferred}
    return {
        "kb": name,
        "question": question,
        "answer": ans.text,
        "not_found": ans.not_found,
        "model": used.get("model"),
        "citations": [asdict(c) for c in ans.citations],
        "sources": [
            {**hit_dict(h, i), "cited": h.chunk.chunk_id in numbers, "inferred": h.chunk.chunk_id in inferred}
            for i, h in enumerate(ans.hits, start=1)
        ],
    }


# -- generators -----------------------------------------------------------------------------------


def http_generator(
    url: str,
    model: str,
    *,
    max_tokens: int = DEFAULT_MAX_ANSWER_TOKENS,
    timeout: float = 600,
    api_key: str | None = None,
) -> Generate:
    """``generate`` through an OpenAI-compatible endpoint (a gateway, which needs ``api_key``, or
    one worker on loopback): greedy, one answer."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def generate(messages: list[Message]) -> str:
        body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
        try:
            r = httpx.post(
                url.rstrip("/") + "/v1/chat/completions", json=body, timeout=timeout, headers=headers
            )
        except httpx.HTTPError as exc:
            raise UnavailableError(f"{url} did not answer ({type(exc).__name__}: {exc})") from exc
        if r.status_code != 200:
            try:
                msg = r.json()["error"]["message"]
            except Exception:
                msg = r.text[:200]
            if r.status_code == 401:
                raise AuthenticationError(
                    f"{url} refused the credentials ({msg}); pass --api-key or set ONEBOX_API_KEY"
                )
            raise UnavailableError(f"{model} at {url} answered {r.status_code}: {msg}")
        return str(r.json()["choices"][0]["message"]["content"] or "")

    return generate


def served_by_gateway(app: App, model: str) -> bool:
    """True when a ready deployment serves ``model`` and this home's gateway is running."""
    from onebox.serve.supervisor import is_running
    from onebox.services import deployments

    if not is_running(app.settings):
        return False
    key = name_key(model.split(":")[0].split("@")[0])
    for d in deployments.list_deployments(app):
        if d["status"] == "ready" and key in {name_key(m) for m in d["model_ids"]}:
            return True
    return False


def local_generator(app: App, model: str, *, max_tokens: int = DEFAULT_MAX_ANSWER_TOKENS) -> Generate:
    """``generate`` with ``model`` loaded in this process by the onebox engine (cached), greedy."""
    with _lock:
        loaded = _local_models.get(model)
        if loaded is None:
            loaded = _load_local(app, model)
            _local_models[model] = loaded
    engine, tokenizer, template, gen_lock = loaded

    def generate(messages: list[Message]) -> str:
        from onebox.engine.llm_engine import generate_offline
        from onebox.engine.types import SamplingParams

        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, chat_template=template
        )
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        room = engine.max_model_len - len(ids)
        if room < 16:
            raise InvalidInputError(
                f"the grounded prompt ({len(ids)} tokens) does not fit {model}'s context "
                f"of {engine.max_model_len} tokens",
                problems=[Problem("k", "too many or too long sources", "ask with a smaller k")],
            )
        params = SamplingParams(max_tokens=min(max_tokens, room), temperature=0.0)
        with gen_lock:
            out = generate_offline(engine, [ids], params)[0]
        return str(tokenizer.decode(out, skip_special_tokens=True))

    return generate


def _load_local(app: App, model: str) -> tuple[Any, Any, str | None, threading.Lock]:
    from onebox.engine.config import EngineConfig
    from onebox.engine.llm_engine import LLMEngine
    from onebox.evaluate.chat import FALLBACK_CHAT_TEMPLATE
    from onebox.evaluate.loading import load_tokenizer

    with app.db.session() as s:
        mv = models.resolve(s, _pid(s, app), model)
        if mv.model.kind != "chat":
            raise InvalidInputError(
                f"{model} is a {mv.model.kind} model; answers need a chat model",
                problems=[Problem("model", "is not a chat model", f"use {DEFAULT_CHAT_MODEL}")],
            )
        if mv.format not in ("safetensors", "pytorch"):
            raise InvalidInputError(
                f"{model} is a {mv.format} version; answer with a full model or deploy it"
            )
        ref = f"{mv.model.name}:{mv.version}"
    model_dir = models.checkout(app, ref, weights_in_memory=True)
    tokenizer = load_tokenizer(model_dir)
    engine = LLMEngine.from_model_dir(model_dir, EngineConfig(max_model_len=2048, max_num_seqs=1))
    template = None if getattr(tokenizer, "chat_template", None) else FALLBACK_CHAT_TEMPLATE
    return engine, tokenizer, template, threading.Lock()


# -- knowledge base -> dataset ----------------------------------------------------------------------


def _passages(h: _Handle, max_chunks: int | None) -> list[Any]:
    """Every chunk as a :class:`Passage`; with ``max_chunks``, taken round-robin across documents
    (sorted by source) so a bounded run still samples every document."""
    from onebox.rag.to_dataset import Passage

    docs = sorted(h.index.documents(), key=lambda d: d.source)
    per_doc = [[f"{d.doc_id}:{i}" for i in range(d.n_chunks)] for d in docs]
    order: list[str] = []
    for i in range(max((len(ids) for ids in per_doc), default=0)):
        order.extend(ids[i] for ids in per_doc if i < len(ids))
    if max_chunks is not None:
        order = order[:max_chunks]
    by_id = {c.chunk_id: c for c in h.index.get_chunks(order)} if order else {}
    by_doc = {d.doc_id: d for d in docs}
    out = []
    for cid in order:
        c = by_id.get(cid)
        if c is not None:
            d = by_doc[c.doc_id]
            out.append(Passage(c.chunk_id, c.doc_id, d.source, d.title, c.locator(), c.text))
    return out


def _eval_retrieval(h: _Handle, rows: Sequence[dict[str, Any]], k: int = 5) -> dict[str, Any]:
    """hit@1 and hit@k of the generated questions against their gold chunks (hybrid search)."""
    from onebox.rag.retrieval import Retriever

    if not rows:
        return {"questions": 0}
    r = Retriever(h.index, h.embedder)
    ranks = []
    for row in rows:
        ids = [hit.chunk.chunk_id for hit in r.search(row["question"], k, "hybrid", None)]
        ranks.append(ids.index(row["gold_chunk_id"]) + 1 if row["gold_chunk_id"] in ids else None)
    n = len(ranks)
    return {
        "questions": n,
        "hit@1": round(sum(1 for x in ranks if x == 1) / n, 3),
        f"hit@{k}": round(sum(1 for x in ranks if x is not None) / n, 3),
        "mrr": round(sum(1 / x for x in ranks if x) / n, 3),
    }


def _keep_outputs(
    h: _Handle, files: dict[str, Path], out_dir: Path | None, name: str
) -> tuple[Path, Sealer | None]:
    """Copy to_dataset's files to ``out_dir`` as they are, or to the KB's ``to_dataset/<name>``
    folder, sealed when the KB's files are; returns the folder and the sealer used."""
    sealer = None if out_dir is not None else h.writer()
    dest = Path(out_dir or kb_dir(h.app.settings, h.id) / "to_dataset" / name)
    dest.mkdir(parents=True, exist_ok=True)
    for n, f in files.items():
        if sealer is None:
            shutil.copy2(f, dest / n)
        else:
            sealer.write(dest / n, f.read_bytes(), f"to_dataset/{name}/{n}")
    return dest, sealer


def to_dataset(
    app: App,
    name: str,
    *,
    dataset: str | None = None,
    generate: Generate | None = None,
    model: str | None = None,
    via: str = "local",
    questions_per_chunk: int = 1,
    max_chunks: int | None = None,
    out_dir: Path | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> dict[str, Any]:
    """Generate question/answer pairs from the KB's chunks, filter them, and register the kept ones
    as a new version of ``dataset`` (default ``<kb>-qa``), with the KB as its lineage.

    Next to it (``out_dir``, default ``<home>/kbs/<id>/to_dataset/<dataset>-v<n>``, and as blobs
    the version references) go ``review.md``/``review.jsonl`` (every generation, kept or rejected
    with reasons) and ``retrieval_eval.jsonl`` (question -> gold chunk id). ``generate`` defaults to
    ``model`` (or the KB's chat model) loaded in this process. When no generation passes the filter
    nothing is registered and the error names the review report.

    With encryption at rest the files are built in the private scratch folder; the default copies
    in the KB folder are sealed like its sources (``"sealed": true`` in the result), while an
    explicit ``out_dir`` gets readable copies: asking for them there is the user's decision."""
    import json
    import tempfile

    from onebox.rag.to_dataset import QAOptions, generate_qa, write_outputs
    from onebox.services import datasets
    from onebox.store.refs import add_refs
    from onebox.store.tables import DatasetVersion

    errs = ErrorList()
    if max_chunks is not None and max_chunks < 1:
        errs.add("max_chunks", f"is {max_chunks}; must be at least 1")
    if dataset is not None:
        try:
            validate_name(dataset, "dataset")
        except InvalidInputError as exc:
            errs.problems.extend(exc.problems)
    try:
        opts = QAOptions(questions_per_chunk=questions_per_chunk)
    except ConfigError as exc:
        errs.problems.extend(exc.problems)
    errs.raise_if_any("invalid to-dataset request", InvalidInputError)
    h = _handle(app, name)
    ds_name = dataset or f"{h.name}-qa"
    model = model or chat_model(app, name)
    passages = _passages(h, max_chunks)
    if not passages:
        raise InvalidInputError(
            f"knowledge base {h.name!r} has no chunks", problems=[Problem("kb", "add documents first")]
        )
    gen = generate or local_generator(app, model, max_tokens=opts.max_new_tokens)
    result = generate_qa(passages, gen, opts, progress=progress or (lambda *_: None))
    summary = result.summary()
    lineage = {
        "kb": h.name,
        "kb_id": h.id,
        "embedding": h.config.get("embedding"),
        "model": model,
        "via": via,
        "max_chunks": max_chunks,
        "questions_per_chunk": questions_per_chunk,
    }
    header = {"knowledge base": f"{h.name} ({h.id})", "model": f"{model} (via {via})"}
    staging = Path(tempfile.mkdtemp(dir=encryption.scratch_dir(app), prefix="kbqa-"))
    try:
        files = write_outputs(result, staging, f"Questions generated from knowledge base {h.name}", header)
        if not result.kept:
            dest, sealer = _keep_outputs(h, files, out_dir, f"{ds_name}-rejected")
            sealed = " (sealed: run again with --out DIR for a readable copy)" if sealer else ""
            raise InvalidInputError(
                f"none of the {summary['generations']} generations passed the filter "
                f"({', '.join(f'{r} {n}' for r, n in summary['rejected_by_reason'].items())}); "
                f"nothing was registered. Read {dest / 'review.md'}{sealed}",
                problems=[Problem("model", f"{model} wrote no usable question", "try a larger model")],
            )
        dv, created = datasets.import_file(
            app, files["qa.jsonl"], ds_name, description=f"questions generated from knowledge base {h.name}"
        )
        retrieval = _eval_retrieval(h, result.eval_rows())
        infos = {
            n: app.blobs.put_file(files[n]) for n in ("review.md", "review.jsonl", "retrieval_eval.jsonl")
        }
        with app.db.session() as s:
            row = s.get_one(DatasetVersion, dv.id)
            ref = f"{datasets.get_dataset_name(s, row)}:{row.version}"
            row.report = {
                **(row.report or {}),
                "from_kb": {
                    **lineage,
                    "summary": summary,
                    "retrieval": retrieval,
                    "files": {n: {"digest": b.digest, "size": b.size} for n, b in infos.items()},
                },
            }
            add_refs(s, datasets.OWNER, row.id, infos.values())
            events.record(
                s, project_id=row.project_id, resource_type=datasets.OWNER, resource_id=row.id,
                kind="dataset.generated_from_kb", message=f"{ref}: {len(result.kept)} pairs from {h.name}",
                kb_id=h.id, model=model,
            )  # fmt: skip
            kb = s.get(KnowledgeBase, h.id)
            if kb is not None:
                _event(s, kb, "kb.to_dataset", f"{ref}: kept {summary['kept']} of {summary['generations']}")
            info = datasets.version_dict(s, row)
        files["summary.json"] = staging / "summary.json"
        files["summary.json"].write_text(
            json.dumps({"dataset": info, "lineage": lineage, "summary": summary, "retrieval": retrieval},
                       ensure_ascii=False, indent=2), encoding="utf-8",
        )  # fmt: skip
        dest, sealer = _keep_outputs(h, files, out_dir, ref.replace(":", "-v"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "kb": h.name,
        "dataset": info,
        "created": created,
        "lineage": lineage,
        "summary": summary,
        "retrieval": retrieval,
        "files": {n: str(dest / n) for n in files},
        "sealed": sealer is not None,
        "kept": [{"question": g.question, "answer": g.answer, "source": g.source} for g in result.kept],
    }


# -- encrypting knowledge bases created before encryption at rest -------------------------------


def encrypt_existing(
    app: App, progress: Callable[[str, int, int | None], None] | None = None
) -> dict[str, Any]:
    """Encrypt every plaintext KB (all projects) in place: sources, to_dataset copies and the graph
    cache are sealed, the index becomes a SQLCipher copy (``sqlcipher_export``) swapped in, and the
    KB is marked encrypted last.

    Each file is replaced atomically, so a crash leaves every file readable; a KB interrupted
    between its index swap and its mark is unreadable until the command runs again (it sees the
    encrypted index and only marks it). A KB being ingested is skipped and reported; running
    services must be restarted afterwards (their open connections see the replaced index file).
    A pgvector KB gets its files sealed; its index is left to the database server's encryption."""
    from onebox.rag.index import _sqlite as sq
    from onebox.rag.index.embedded import ANN_DIR, DB_FILE

    report: dict[str, Any] = {"encrypted": [], "already": 0, "skipped": [], "failed": []}
    with app.db.session() as s:
        rows = [(kb.id, kb.name, dict(kb.config)) for kb in s.scalars(select(KnowledgeBase))]
    for i, (kb_id, name, config) in enumerate(rows, 1):
        if progress is not None:
            progress("knowledge bases", i - 1, len(rows))
        if config.get("encrypted"):
            report["already"] += 1
            continue
        if _active_jobs(app, kb_id):
            report["skipped"].append(f"{name}: being ingested; run this again when the job ends")
            continue
        sealer = encryption.sealer(app, _subject(kb_id))
        if sealer is None:
            raise ConfigError(
                "encryption at rest is off",
                problems=[Problem("ONEBOX_ENCRYPT_ARTIFACTS", "false", "set it to true first")],
            )
        idx = _forget_index(str(config["index"]))
        if idx is not None:
            idx.close()
        root = kb_dir(app.settings, kb_id)
        try:
            for path in sorted(root.rglob("*")):
                rel = path.relative_to(root).as_posix()
                if (
                    rel.split("/")[0] in ("sources", "to_dataset")
                    and path.is_file()
                    and not is_sealed_file(path)
                ):
                    if any(part.startswith(".") for part in path.relative_to(root).parts):
                        continue  # temporaries and locks
                    st = path.stat()
                    sealer.write(path, path.read_bytes(), rel)
                    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
            folder = Path(config["index"])  # a pgvector URL: no such folder, the server's encryption
            graph = folder / ANN_DIR / "graph.hnsw"
            if graph.is_file() and not is_sealed_file(graph):
                from onebox.rag.index._ann import SEALED_NAME

                sealer.write(graph, graph.read_bytes(), SEALED_NAME)
            db = folder / DB_FILE
            if sq.is_plaintext(db):
                _encrypt_index_file(db, sq.index_key(sealer.key))
            with app.db.session() as s:
                kb = s.get(KnowledgeBase, kb_id)
                if kb is not None:
                    kb.config = {**kb.config, "encrypted": True}
                    _event(s, kb, "kb.encrypted", f"encrypted knowledge base {name} at rest")
            report["encrypted"].append(name)
        except (OSError, *sq.Error) as exc:
            report["failed"].append(f"{name}: {type(exc).__name__}: {exc}")
        except OneboxError as exc:
            report["failed"].append(f"{name}: {exc.message}")
    if progress is not None:
        progress("knowledge bases", len(rows), len(rows))
    return report


def _encrypt_index_file(db: Path, key: bytes) -> None:
    """Swap the plaintext SQLite file ``db`` for an encrypted copy (its WAL folded in first)."""
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    tmp = db.with_name(f".{db.name}.{os.getpid()}.sealing")
    tmp.unlink(missing_ok=True)
    try:
        from onebox.rag.index import _sqlite as sq

        sq.encrypt_copy(db, tmp, key)
        os.replace(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):  # the plaintext file's: must not be applied to the new one
        db.with_name(db.name + suffix).unlink(missing_ok=True)
