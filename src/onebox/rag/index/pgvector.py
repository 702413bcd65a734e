"""The knowledge-base index on PostgreSQL: pgvector HNSW for dense search, ``tsvector`` for lexical.

One schema per knowledge base (``kb_<name>``), not a ``kb_id`` column: each KB may use another
embedding model, and a pgvector HNSW index needs one fixed dimension per column; a per-KB graph
also keeps filtered searches inside one KB from walking other KBs' vectors, and dropping a KB is
one ``DROP SCHEMA``. PostgreSQL has no Chinese parser, so chunks are stored as the terms of
:mod:`onebox.rag.lexical` (jieba-segmented, space-joined) in a ``simple``-config ``tsvector``,
ranked with ``ts_rank_cd`` against an OR of the query's terms: the same terms as the embedded index.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from onebox.errors import ConflictError, InvalidInputError, StoreError
from onebox.rag import lexical
from onebox.rag.index import _optional, _records
from onebox.rag.types import Chunk, DocumentRecord, Hit, IndexStats, SearchFilter

_KB_NAME = re.compile(r"^[a-z0-9_]{1,40}$")
_DOCS = ", ".join(f"d.{c}" for c in _records.DOC_COLUMNS).replace("d.tags", "d.tags::text")
_CHUNKS = ", ".join(f"c.{c}" for c in _records.CHUNK_COLUMNS)
_ND = len(_records.DOC_COLUMNS)
MAX_SCAN_TUPLES = 20_000


def _schema_sql(s: str, dim: int) -> list[str]:
    return [
        "CREATE EXTENSION IF NOT EXISTS vector",
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS {s}.documents (
            doc_no bigserial PRIMARY KEY, doc_id text NOT NULL UNIQUE, source text NOT NULL UNIQUE,
            content_hash text NOT NULL, format text NOT NULL, title text NOT NULL,
            size_bytes bigint NOT NULL, n_chunks integer NOT NULL, tags jsonb NOT NULL,
            modified text, added text, modified_ts double precision)""",
        f"""CREATE TABLE IF NOT EXISTS {s}.chunks (
            id bigserial PRIMARY KEY, chunk_id text NOT NULL UNIQUE,
            doc_no bigint NOT NULL REFERENCES {s}.documents(doc_no) ON DELETE CASCADE,
            doc_id text NOT NULL, ordinal integer NOT NULL, text text NOT NULL, heading_path text NOT NULL,
            page_start integer, page_end integer, sheet text, slide integer, n_tokens integer NOT NULL,
            embedding vector({dim}) NOT NULL, terms tsvector NOT NULL)""",
        f"CREATE INDEX IF NOT EXISTS chunks_doc ON {s}.chunks (doc_no)",
        f"CREATE INDEX IF NOT EXISTS chunks_terms ON {s}.chunks USING gin (terms)",
        f"CREATE INDEX IF NOT EXISTS chunks_hnsw ON {s}.chunks USING hnsw (embedding vector_cosine_ops)",
        f"CREATE INDEX IF NOT EXISTS documents_tags ON {s}.documents USING gin (tags)",
    ]


def _vec(v: np.ndarray) -> str:
    return "[" + ",".join(map(str, v.tolist())) + "]"


class PgVectorIndex:
    """:class:`~onebox.rag.types.ChunkIndex` in schema ``kb_<kb>`` of a PostgreSQL database."""

    def __init__(
        self,
        conninfo: str,
        dim: int,
        *,
        kb: str = "default",
        analyzer: Callable[[str], list[str]] = lexical.terms,
    ) -> None:
        if not _KB_NAME.match(kb):
            raise InvalidInputError(f"knowledge-base name {kb!r} must match [a-z0-9_]{{1,40}}", field="kb")
        self._pg = _optional.psycopg()
        self.dim = dim
        self.kb = kb
        self._schema = f"kb_{kb}"
        self._conninfo = conninfo
        self._analyzer = analyzer
        self._local = threading.local()
        self._conns: list[Any] = []
        self._lock = threading.Lock()
        self._init_schema()

    @classmethod
    def from_url(cls, url: str, dim: int, **options: Any) -> PgVectorIndex:
        """``postgresql://...?kb=name``: the ``kb`` parameter is ours, the rest goes to libpq."""
        parts = urlsplit(url.replace("postgresql+psycopg://", "postgresql://", 1))
        query = parse_qsl(parts.query, keep_blank_values=True)
        kb = next((v for k, v in query if k == "kb"), options.pop("kb", "default"))
        rest = urlencode([(k, v) for k, v in query if k != "kb"])
        return cls(urlunsplit(parts._replace(query=rest)), dim, kb=str(kb), **options)

    # -- connections --------------------------------------------------------------------------

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            try:
                conn = self._pg.connect(self._conninfo, autocommit=True)
            except self._pg.Error as exc:
                raise StoreError(f"cannot connect to the knowledge-base database: {exc}") from exc
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _fail(self, exc: Exception, what: str) -> Exception:
        if isinstance(exc, self._pg.errors.UniqueViolation):
            return ConflictError(f"{what}: {exc.diag.message_detail or exc}")
        return StoreError(f"knowledge base {self.kb!r}: {what} failed: {exc}")

    def _init_schema(self) -> None:
        conn = self._conn()
        s = self._schema
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (s,))
                for stmt in _schema_sql(s, self.dim):
                    conn.execute(stmt)
                row = conn.execute(f"SELECT value FROM {s}.meta WHERE key = 'dim'").fetchone()
                if row is None:
                    conn.execute(f"INSERT INTO {s}.meta VALUES ('dim', %s)", (str(self.dim),))
        except self._pg.Error as exc:
            raise self._fail(exc, "creating the index tables") from exc
        if row is not None and int(row[0]) != self.dim:
            raise InvalidInputError(
                f"knowledge base {self.kb!r} holds {row[0]}-dimensional vectors, not {self.dim}", field="dim"
            )

    # -- writes -------------------------------------------------------------------------------

    def upsert_document(self, doc: DocumentRecord, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        vec = _records.check_upsert(doc, chunks, vectors, self.dim)
        terms = [" ".join(self._analyzer(c.embed_text(doc.title))) for c in chunks]
        s = self._schema
        values = list(_records.doc_row(doc, len(chunks), datetime.now(UTC)))
        conn = self._conn()
        try:
            with conn.transaction():
                row = conn.execute(self._upsert_doc_sql(keep_added=doc.added is None), values).fetchone()
                doc_no = row[0]
                conn.execute(f"DELETE FROM {s}.chunks WHERE doc_no = %s", (doc_no,))
                cols = ", ".join((*_records.CHUNK_COLUMNS, "doc_no", "embedding", "terms"))
                with conn.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO {s}.chunks ({cols}) VALUES "
                        "(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s::vector,to_tsvector('simple', %s))",
                        [
                            (*_records.chunk_row(c), doc_no, _vec(v), t)
                            for c, v, t in zip(chunks, vec, terms, strict=True)
                        ],
                    )
        except self._pg.Error as exc:
            raise self._fail(exc, f"indexing {doc.source!r}") from exc

    def _upsert_doc_sql(self, keep_added: bool) -> str:
        added = "documents.added" if keep_added else "EXCLUDED.added"
        return (
            f"INSERT INTO {self._schema}.documents (doc_id, source, content_hash, format, title, size_bytes,"
            " n_chunks, tags, modified, added, modified_ts)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s)"
            " ON CONFLICT (doc_id) DO UPDATE SET source = EXCLUDED.source,"
            " content_hash = EXCLUDED.content_hash, format = EXCLUDED.format, title = EXCLUDED.title,"
            " size_bytes = EXCLUDED.size_bytes, n_chunks = EXCLUDED.n_chunks, tags = EXCLUDED.tags,"
            f" modified = EXCLUDED.modified, added = {added}, modified_ts = EXCLUDED.modified_ts"
            " RETURNING doc_no"
        )

    def delete_document(self, doc_id: str) -> bool:
        try:
            with self._conn().transaction():
                cur = self._conn().execute(
                    f"DELETE FROM {self._schema}.documents WHERE doc_id = %s", (doc_id,)
                )
                return cur.rowcount > 0
        except self._pg.Error as exc:
            raise self._fail(exc, f"deleting {doc_id!r}") from exc

    def drop(self) -> None:
        """Remove the whole knowledge base (its schema) from the database."""
        try:
            self._conn().execute(f"DROP SCHEMA IF EXISTS {self._schema} CASCADE")
        except self._pg.Error as exc:
            raise self._fail(exc, "dropping the knowledge base") from exc

    # -- reads --------------------------------------------------------------------------------

    def _rows(self, what: str, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._conn().execute(sql, args).fetchall()
        except self._pg.Error as exc:
            raise self._fail(exc, what) from exc

    def documents(self) -> list[DocumentRecord]:
        rows = self._rows(
            "listing documents", f"SELECT {_DOCS} FROM {self._schema}.documents d ORDER BY d.source"
        )
        return [_records.doc_from_row(r) for r in rows]

    def get_document(self, doc_id: str) -> DocumentRecord | None:
        sql = f"SELECT {_DOCS} FROM {self._schema}.documents d WHERE d.doc_id = %s"
        rows = self._rows("reading a document", sql, (doc_id,))
        return _records.doc_from_row(rows[0]) if rows else None

    def get_chunks(self, chunk_ids: Sequence[str]) -> list[Chunk]:
        sql = f"SELECT {_CHUNKS} FROM {self._schema}.chunks c WHERE c.chunk_id = ANY(%s)"
        found = {
            r[0]: _records.chunk_from_row(r) for r in self._rows("reading chunks", sql, (list(chunk_ids),))
        }
        return [found[i] for i in chunk_ids if i in found]

    def _filter(self, flt: SearchFilter | None) -> tuple[str, list[Any]]:
        if _records.filter_is_empty(flt):
            return "TRUE", []
        assert flt is not None
        parts: list[str] = []
        args: list[Any] = []
        if flt.sources:
            parts.append("d.source = ANY(%s)")
            args.append(list(flt.sources))
        if flt.tags:
            parts.append("d.tags ?| %s")
            args.append(list(flt.tags))
        if flt.modified_from is not None:
            parts.append("d.modified_ts >= %s")
            args.append(_records.epoch(flt.modified_from))
        if flt.modified_to is not None:
            parts.append("d.modified_ts <= %s")
            args.append(_records.epoch(flt.modified_to))
        return " AND ".join(parts), args

    def lexical_search(self, query: str, k: int, flt: SearchFilter | None = None) -> list[Hit]:
        k = _records.check_k(k)
        words = list(dict.fromkeys(self._analyzer(query)))
        if not words or k == 0:
            return []
        tsq = " | ".join("'" + w.replace("'", "''").replace("\\", "\\\\") + "'" for w in words)
        where, args = self._filter(flt)
        s = self._schema
        sql = (
            f"SELECT ts_rank_cd(c.terms, q) AS score, {_DOCS}, {_CHUNKS} FROM {s}.chunks c"
            f" JOIN {s}.documents d ON d.doc_no = c.doc_no, to_tsquery('simple', %s) q"
            f" WHERE c.terms @@ q AND {where} ORDER BY score DESC, c.id LIMIT %s"
        )
        return self._hits(self._rows("lexical search", sql, (tsq, *args, k)), "lexical")

    def dense_search(self, vector: np.ndarray, k: int, flt: SearchFilter | None = None) -> list[Hit]:
        q = _vec(_records.check_query_vector(vector, self.dim))
        k = _records.check_k(k)
        if k == 0:
            return []
        where, args = self._filter(flt)
        s = self._schema
        sql = (
            f"SELECT 1 - (c.embedding <=> %s::vector) AS score, {_DOCS}, {_CHUNKS} FROM {s}.chunks c"
            f" JOIN {s}.documents d ON d.doc_no = c.doc_no WHERE {where}"
            " ORDER BY c.embedding <=> %s::vector LIMIT %s"
        )
        conn = self._conn()
        try:
            with conn.transaction():
                # Filters apply inside the graph walk (pgvector >= 0.8), which keeps scanning until
                # k rows pass or max_scan_tuples is reached; a very selective filter then falls back
                # to an exact scan below, so k hits come back whenever k exist.
                conn.execute(f"SET LOCAL hnsw.ef_search = {max(40, 2 * k)}")
                conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
                conn.execute(f"SET LOCAL hnsw.max_scan_tuples = {MAX_SCAN_TUPLES}")
                rows = conn.execute(sql, (q, *args, q, k)).fetchall()
                if len(rows) < k:
                    conn.execute("SET LOCAL enable_indexscan = off")
                    exact = conn.execute(sql, (q, *args, q, k)).fetchall()
                    rows = exact if len(exact) > len(rows) else rows
        except self._pg.Error as exc:
            raise self._fail(exc, "dense search") from exc
        return self._hits(rows, "dense")

    @staticmethod
    def _hits(rows: list[Any], via: Any) -> list[Hit]:
        hits = []
        for i, r in enumerate(rows):
            score = float(r[0])
            doc = _records.doc_from_row(r[1 : 1 + _ND])
            chunk = _records.chunk_from_row(r[1 + _ND :])
            hits.append(Hit(chunk=chunk, score=score, rank=i + 1, document=doc, via=via, scores={via: score}))
        return hits

    def stats(self) -> IndexStats:
        s = self._schema
        ((docs, chunks, size),) = self._rows(
            "stats",
            f"SELECT (SELECT count(*) FROM {s}.documents), (SELECT count(*) FROM {s}.chunks),"
            " (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r')",
            (s,),
        )
        return IndexStats(documents=int(docs), chunks=int(chunks), dim=self.dim, bytes_on_disk=int(size))

    def close(self) -> None:
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()

    def __enter__(self) -> PgVectorIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
