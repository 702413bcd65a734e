"""Reference counting of blobs in the metadata store, and garbage collection.

Writers store blobs first and then, in the same transaction that creates the owning resource,
record the blobs and their references. A crash in between leaves only unreferenced files,
which ``collect_garbage`` removes once they are older than a grace period.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from onebox.errors import InvalidInputError
from onebox.store.backends import LocalBackend
from onebox.store.blobs import BlobInfo, BlobStore
from onebox.store.db import Database
from onebox.store.tables import ArtifactRef, Blob, utcnow


def _insert(session: Session, table: type) -> object:
    dialect = session.get_bind().dialect.name
    return (pg_insert if dialect == "postgresql" else sqlite_insert)(table)


def add_refs(session: Session, owner_type: str, owner_id: str, blobs: Iterable[BlobInfo]) -> None:
    """Record blobs (idempotently) and ``owner``'s reference to each of them."""
    unique = {b.digest: b for b in blobs}
    if not unique:
        return
    now = utcnow()
    blob_rows = [{"digest": b.digest, "size": b.size, "created_at": now} for b in unique.values()]
    session.execute(_insert(session, Blob).values(blob_rows).on_conflict_do_nothing())  # type: ignore[attr-defined]
    ref_rows = [
        {"digest": d, "owner_type": owner_type, "owner_id": owner_id, "created_at": now} for d in unique
    ]
    session.execute(_insert(session, ArtifactRef).values(ref_rows).on_conflict_do_nothing())  # type: ignore[attr-defined]


def drop_refs(session: Session, owner_type: str, owner_id: str) -> int:
    """Remove every reference held by ``owner``; the blobs become garbage if nobody else holds them."""
    res = session.execute(
        delete(ArtifactRef).where(ArtifactRef.owner_type == owner_type, ArtifactRef.owner_id == owner_id)
    )
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


def ref_counts(session: Session, digests: Iterable[str] | None = None) -> dict[str, int]:
    q = select(Blob.digest, func.count(ArtifactRef.id)).outerjoin(ArtifactRef).group_by(Blob.digest)
    if digests is not None:
        q = q.where(Blob.digest.in_(list(digests)))
    return {d: int(n) for d, n in session.execute(q)}


@dataclass
class GcReport:
    blobs_deleted: int = 0
    bytes_freed: int = 0
    orphans_deleted: int = 0
    checkouts_deleted: int = 0
    temp_files_deleted: int = 0
    blobs_kept: int = 0
    dry_run: bool = False
    deleted: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "deleted"} | {"deleted": self.deleted[:100]}


def collect_garbage(db: Database, store: BlobStore, grace_seconds: int, dry_run: bool = False) -> GcReport:
    """Delete unreferenced blobs, orphan objects and stale checkouts older than the grace period.

    Rows go first, in a transaction that only deletes blobs still without references; files are
    unlinked after it commits, and only if nothing re-used them meanwhile (a writer that reuses a
    blob touches it, which restarts its grace period).
    """
    if grace_seconds < 0:
        raise InvalidInputError("the gc grace period must be >= 0 seconds")
    report = GcReport(dry_run=dry_run)
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    now = time.time()

    def idle(digest: str) -> bool:
        path = store.backend.local_path(digest)
        return path is None or now - path.stat().st_mtime >= grace_seconds

    with db.session() as s:
        counts = ref_counts(s)
        rows = {b.digest: b for b in s.scalars(select(Blob))}
        doomed = [d for d, n in counts.items() if n == 0 and rows[d].created_at <= cutoff and idle(d)]
        report.blobs_kept = len(counts) - len(doomed)
        if doomed and not dry_run:
            unreferenced = ~select(ArtifactRef.id).where(ArtifactRef.digest == Blob.digest).exists()
            s.execute(delete(Blob).where(Blob.digest.in_(doomed), unreferenced))
            doomed = [d for d in doomed if s.get(Blob, d) is None]
    for d in doomed:
        report.blobs_deleted += 1
        report.bytes_freed += rows[d].size
        report.deleted.append(d)
        if not dry_run and idle(d):
            store.backend.delete(d)
    # Objects with no row at all were written by an import that never committed.
    for obj in store.backend.list():
        if obj.key in rows or now - obj.mtime < grace_seconds:
            continue
        with db.session() as s:
            if s.get(Blob, obj.key) is not None:  # committed since we looked
                continue
        report.orphans_deleted += 1
        report.bytes_freed += obj.size
        report.deleted.append(obj.key)
        if not dry_run:
            store.backend.delete(obj.key)
    if store.checkout_root.is_dir():
        with db.session() as s:
            live = {d for d, n in ref_counts(s).items() if n > 0}
        for d in store.checkout_root.iterdir():
            stale_tmp = d.name.startswith(".") and now - d.stat().st_mtime > grace_seconds
            if (not d.name.startswith(".") and d.name not in live) or stale_tmp:
                report.checkouts_deleted += 1
                if not dry_run:
                    shutil.rmtree(d, ignore_errors=True)
    if isinstance(store.backend, LocalBackend) and not dry_run:
        report.temp_files_deleted = store.backend.clean_tmp(grace_seconds)
    return report
