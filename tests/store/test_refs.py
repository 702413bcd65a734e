"""Reference counting and garbage collection, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import time
from datetime import timedelta

from onebox.services.context import App
from onebox.store.refs import add_refs, collect_garbage, drop_refs, ref_counts
from onebox.store.tables import Blob, utcnow


def test_refs_count_and_gc(app: App) -> None:
    a = app.blobs.put_bytes(b"a")
    b = app.blobs.put_bytes(b"b")
    orphan = app.blobs.put_bytes(b"written by an import that crashed before commit")
    with app.db.session() as s:
        add_refs(s, "thing", "t1", [a, b])
        add_refs(s, "thing", "t2", [a])
        add_refs(s, "thing", "t2", [a])  # idempotent
    with app.db.session() as s:
        assert ref_counts(s) == {a.digest: 2, b.digest: 1}
        assert drop_refs(s, "thing", "t1") == 2
    with app.db.session() as s:
        assert ref_counts(s) == {a.digest: 1, b.digest: 0}
    dry = collect_garbage(app.db, app.blobs, grace_seconds=0, dry_run=True)
    assert dry.blobs_deleted == 1 and dry.orphans_deleted == 1
    assert app.blobs.exists(b.digest)  # dry run changed nothing
    report = collect_garbage(app.db, app.blobs, grace_seconds=0)
    assert report.blobs_deleted == 1 and report.orphans_deleted == 1 and report.bytes_freed > 0
    assert app.blobs.exists(a.digest)
    assert not app.blobs.exists(b.digest) and not app.blobs.exists(orphan.digest)
    with app.db.session() as s:
        assert ref_counts(s) == {a.digest: 1}


def test_gc_grace_period_protects_fresh_blobs(app: App) -> None:
    fresh = app.blobs.put_bytes(b"an import is about to reference me")
    report = collect_garbage(app.db, app.blobs, grace_seconds=3600)
    assert report.orphans_deleted == 0 and app.blobs.exists(fresh.digest)
    path = app.blobs.backend.local_path(fresh.digest)
    old = time.time() - 7200
    os.utime(path, (old, old))
    report = collect_garbage(app.db, app.blobs, grace_seconds=3600)
    assert report.orphans_deleted == 1


def test_reused_blob_survives_gc(app: App) -> None:
    """A writer that reuses an unreferenced blob restarts its grace period (no lost data)."""
    blob = app.blobs.put_bytes(b"shared content")
    with app.db.session() as s:
        add_refs(s, "thing", "t1", [blob])
        drop_refs(s, "thing", "t1")
        s.get(Blob, blob.digest).created_at = utcnow() - timedelta(hours=2)
    path = app.blobs.backend.local_path(blob.digest)
    old = time.time() - 7200
    os.utime(path, (old, old))
    assert collect_garbage(app.db, app.blobs, grace_seconds=3600, dry_run=True).blobs_deleted == 1
    app.blobs.put_bytes(b"shared content")  # an import about to reference it again
    report = collect_garbage(app.db, app.blobs, grace_seconds=3600)
    assert report.blobs_deleted == 0 and app.blobs.exists(blob.digest)


def test_negative_grace_is_refused(app: App) -> None:
    import pytest

    from onebox.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        collect_garbage(app.db, app.blobs, grace_seconds=-1)
