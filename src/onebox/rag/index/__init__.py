"""Knowledge-base indexes: :func:`open_index` picks the backend from where the index lives."""

from __future__ import annotations

from pathlib import Path

from onebox.errors import InvalidInputError
from onebox.rag.types import ChunkIndex

_PG_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def open_index(url_or_path: str | Path, dim: int, **options: object) -> ChunkIndex:
    """A path (or ``file://``) opens the embedded index in that folder; a ``postgresql://`` URL
    opens pgvector (``?kb=<name>`` picks the knowledge base, default ``default``).

    Encryption at rest: the embedded index takes ``sealer=`` (SQLCipher database, sealed graph
    cache); a pgvector index relies on the PostgreSQL server's own encryption at rest."""
    if not isinstance(dim, int) or dim <= 0:
        raise InvalidInputError(f"dim must be a positive integer, got {dim!r}")
    target = str(url_or_path)
    if target.startswith(_PG_SCHEMES):
        from onebox.rag.index.pgvector import PgVectorIndex

        return PgVectorIndex.from_url(target, dim, **options)  # type: ignore[arg-type]
    if "://" in target and not target.startswith("file://"):
        raise InvalidInputError(
            f"unsupported index location {target!r}: use a folder path or a postgresql:// URL"
        )
    from onebox.rag.index.embedded import EmbeddedIndex

    return EmbeddedIndex(Path(target.removeprefix("file://")), dim, **options)  # type: ignore[arg-type]
