"""Storage quota: the bytes a project holds, and the check made before it stores more.

A project's bytes are the logical sizes of its ready model versions and dataset versions (as
recorded at registration and import) plus the files in its knowledge bases' document snapshots.
Logical, not physical: two projects holding the same blob each pay for it, so one project's usage
never depends on what another stored. The check runs before anything is written; like any quota
checked outside one transaction, concurrent imports may overshoot it by one import.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from onebox.errors import NotFoundError, QuotaExceededError
from onebox.store.tables import DatasetVersion, KnowledgeBase, ModelVersion, Project

STORAGE_RETRY_AFTER_S = 3600.0
"""``Retry-After`` for a full project: space is not freed by waiting, so clients should not poll."""


@dataclass(frozen=True)
class StorageUsage:
    models: int
    datasets: int
    documents: int

    @property
    def total(self) -> int:
        return self.models + self.datasets + self.documents

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def kb_sources_dir(home: Path, kb_id: str) -> Path:
    """Where a knowledge base keeps its document snapshot (same as ``services.kbs.sources_dir``)."""
    return home / "kbs" / kb_id / "sources"


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (or of ``path`` itself); symlinks not followed."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:  # removed while walking
                continue
            if not os.path.islink(os.path.join(root, name)):
                total += st.st_size
    return total


def replacing_bytes(dest_root: Path, items: Iterable[tuple[str, Path]]) -> int:
    """Bytes that copying ``(name, file)`` pairs under ``dest_root`` adds: each file's size less
    that of the file it replaces (never below zero)."""
    total = 0
    for name, path in items:
        old = Path(dest_root) / name
        before = old.stat().st_size if old.is_file() else 0
        total += max(0, Path(path).stat().st_size - before)
    return total


def project_usage(session: Session, project_id: str, home: Path | None = None) -> StorageUsage:
    """Bytes held by the project; documents are counted only when ``home`` is given."""
    models = session.scalar(
        select(func.coalesce(func.sum(ModelVersion.size_bytes), 0)).where(
            ModelVersion.project_id == project_id, ModelVersion.status == "ready"
        )
    )
    datasets = session.scalar(
        select(func.coalesce(func.sum(DatasetVersion.size_bytes), 0)).where(
            DatasetVersion.project_id == project_id, DatasetVersion.status == "ready"
        )
    )
    documents = 0
    if home is not None:
        kb_ids = session.scalars(
            select(KnowledgeBase.id).where(
                KnowledgeBase.project_id == project_id, KnowledgeBase.status != "deleted"
            )
        )
        for kb_id in kb_ids:
            src = kb_sources_dir(home, kb_id)
            if src.is_dir():
                documents += tree_bytes(src)
    return StorageUsage(int(models or 0), int(datasets or 0), documents)


def check_storage(session: Session, project_id: str, adding_bytes: int, *, home: Path | None = None) -> None:
    """Raise :class:`QuotaExceededError` when storing ``adding_bytes`` more would take the project
    past ``storage_limit_bytes``; nothing is counted when the project has no limit."""
    project = session.get(Project, project_id)
    if project is None or project.storage_limit_bytes is None:
        return
    limit = int(project.storage_limit_bytes)
    used = project_usage(session, project_id, home)
    if used.total + max(0, adding_bytes) <= limit:
        return
    raise QuotaExceededError(
        f"project {project.name!r} would hold {human_bytes(used.total + adding_bytes)}, over its storage "
        f"quota of {human_bytes(limit)} ({human_bytes(used.total)} used, this adds "
        f"{human_bytes(adding_bytes)}); delete old model or dataset versions or documents, or ask an "
        "admin to raise the quota",
        retry_after=STORAGE_RETRY_AFTER_S,
        quota="project.storage",
        limit=limit,
        used=used.total,
        adding=adding_bytes,
    )


def enforce_storage(app: Any, adding_bytes: int) -> None:
    """:func:`check_storage` for the project a service context acts in (one line in services).

    ``app`` is a ``services.context.App`` (typed loosely: security sits below services)."""
    with app.db.session() as s:
        project = s.scalar(select(Project).where(Project.name == app.settings.project))
        if project is None:
            raise NotFoundError(f"project {app.settings.project!r} does not exist")
        check_storage(s, project.id, adding_bytes, home=app.settings.home)


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_bytes(text: str) -> int:
    """``10GiB``, ``500 MB``, ``1.5g``, ``1024`` -> bytes; ValueError with the accepted forms."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size; write e.g. 10GiB, 500MB or 1048576")
    return int(float(m.group(1)) * _UNITS[unit])


def human_bytes(n: int | float) -> str:
    """Binary units (GiB) with one decimal; quotas are usually set in them."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
