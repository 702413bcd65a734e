"""Row encoding and input checks shared by both index backends, so they store and return the same."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from onebox.errors import ErrorList, InvalidInputError
from onebox.rag.types import Chunk, DocumentRecord, SearchFilter

CHUNK_COLUMNS = (
    "chunk_id",
    "doc_id",
    "ordinal",
    "text",
    "heading_path",
    "page_start",
    "page_end",
    "sheet",
    "slide",
    "n_tokens",
)
DOC_COLUMNS = (
    "doc_id",
    "source",
    "content_hash",
    "format",
    "title",
    "size_bytes",
    "n_chunks",
    "tags",
    "modified",
    "added",
)


def epoch(when: datetime | None) -> float | None:
    """Seconds since 1970 for filtering; a naive time is read as UTC on both sides of a comparison."""
    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


def _from_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def doc_row(doc: DocumentRecord, n_chunks: int, added: datetime) -> tuple[Any, ...]:
    """Values in :data:`DOC_COLUMNS` order plus ``modified_ts``; times kept as ISO text so that a
    naive or aware datetime comes back exactly as it went in."""
    return (
        doc.doc_id,
        doc.source,
        doc.content_hash,
        doc.format,
        doc.title,
        doc.size_bytes,
        n_chunks,
        json.dumps(list(doc.tags), ensure_ascii=False),
        _iso(doc.modified),
        _iso(doc.added or added),
        epoch(doc.modified),
    )


def doc_from_row(row: Sequence[Any]) -> DocumentRecord:
    """Inverse of :func:`doc_row` for a row selected in :data:`DOC_COLUMNS` order."""
    d = dict(zip(DOC_COLUMNS, row, strict=True))
    return DocumentRecord(
        doc_id=d["doc_id"],
        source=d["source"],
        content_hash=d["content_hash"],
        format=d["format"],
        title=d["title"],
        size_bytes=int(d["size_bytes"]),
        n_chunks=int(d["n_chunks"]),
        tags=tuple(json.loads(d["tags"])),
        modified=_from_iso(d["modified"]),
        added=_from_iso(d["added"]),
    )


def chunk_row(c: Chunk) -> tuple[Any, ...]:
    return (
        c.chunk_id,
        c.doc_id,
        c.ordinal,
        c.text,
        json.dumps(list(c.heading_path), ensure_ascii=False),
        c.page_start,
        c.page_end,
        c.sheet,
        c.slide,
        c.n_tokens,
    )


def chunk_from_row(row: Sequence[Any]) -> Chunk:
    d = dict(zip(CHUNK_COLUMNS, row, strict=True))
    d["heading_path"] = tuple(json.loads(d["heading_path"]))
    return Chunk(**d)


def check_upsert(doc: DocumentRecord, chunks: Sequence[Chunk], vectors: np.ndarray, dim: int) -> np.ndarray:
    """Validate one upsert before anything is written; returns the vectors as unit float32 rows."""
    errs = ErrorList()
    if not doc.doc_id:
        errs.add("doc.doc_id", "is empty")
    if not doc.source:
        errs.add("doc.source", "is empty")
    vec = np.asarray(vectors, dtype=np.float32)
    if len(chunks) == 0 and vec.size == 0:
        vec = vec.reshape(0, dim)
    if vec.ndim != 2 or vec.shape != (len(chunks), dim):
        errs.add("vectors", f"shape {vec.shape} does not match {len(chunks)} chunks of dimension {dim}")
    seen: set[str] = set()
    for i, c in enumerate(chunks):
        if c.doc_id != doc.doc_id:
            errs.add(f"chunks[{i}].doc_id", f"{c.doc_id!r} is not the document's id {doc.doc_id!r}")
        if c.chunk_id in seen:
            errs.add(f"chunks[{i}].chunk_id", f"{c.chunk_id!r} appears twice")
        seen.add(c.chunk_id)
    errs.raise_if_any(f"cannot index document {doc.source!r}", InvalidInputError)
    norms = np.linalg.norm(vec, axis=1) if len(vec) else np.ones(0, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms < 1e-12))
    if len(bad):
        raise InvalidInputError(
            f"cannot index document {doc.source!r}: vector {int(bad[0])} is zero or not finite",
            field="vectors",
        )
    return np.ascontiguousarray(vec / norms[:, None], dtype=np.float32)


def check_query_vector(vector: np.ndarray, dim: int) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if v.shape != (dim,):
        raise InvalidInputError(f"query vector has {v.size} values, the index has dimension {dim}")
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n < 1e-12:
        raise InvalidInputError("query vector is zero or not finite")
    return v / n


def check_k(k: int) -> int:
    if not isinstance(k, int) or k < 0:
        raise InvalidInputError(f"k must be a non-negative integer, got {k!r}")
    return k


def filter_is_empty(flt: SearchFilter | None) -> bool:
    return flt is None or flt.is_empty()
