"""Artifact housekeeping: garbage collection and verification of stored blobs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from onebox.errors import IntegrityError
from onebox.progress import ProgressFn, null_progress
from onebox.services.context import App
from onebox.store.refs import GcReport, collect_garbage
from onebox.store.tables import Blob


def gc(app: App, *, dry_run: bool = False, grace_seconds: int | None = None) -> GcReport:
    """Free blobs no version references any more (and leftovers of crashed imports)."""
    grace = app.settings.gc_grace_seconds if grace_seconds is None else grace_seconds
    return collect_garbage(app.db, app.blobs, grace, dry_run=dry_run)


def verify_all(app: App, progress: ProgressFn = null_progress) -> dict[str, Any]:
    """Re-hash every recorded blob; returns the digests that are missing or corrupted."""
    with app.db.session() as s:
        digests = list(s.scalars(select(Blob.digest)))
    bad: dict[str, str] = {}
    for i, d in enumerate(digests, 1):
        try:
            app.blobs.verify(d)
        except IntegrityError as exc:
            bad[d] = exc.code
        progress("verify", i, len(digests))
    return {"checked": len(digests), "bad": bad}
