"""The embedded knowledge-base index: one folder, no server.

``index.sqlite`` (WAL) is the source of truth: documents, chunks, float32 vectors and an FTS5
table of pre-segmented terms, so an upsert or delete is one transaction across the lexical and the
dense side, and concurrent readers (threads or processes) see either the old or the new document.
Dense search runs over an in-memory copy of the vectors: exact below ``ann_threshold`` chunks,
through an HNSW graph (``ann/``) above it. The graph is a cache: it records the SQLite generation
it reflects and is caught up from the ``removed`` log and the new rows, or rebuilt from the blobs
when it is missing, damaged or too old, so a crash at any point never damages the knowledge base.

Given a :class:`~onebox.security.streams.Sealer` (an encrypted knowledge base), the index holds no
plaintext on disk: ``index.sqlite`` is a SQLCipher database keyed from the sealer's data key,
and the graph file is sealed with AES-GCM (hnswlib reads and writes only paths, so the graph
passes through a temporary file in the process's private memory folder). Without one, both are
plaintext, as before; the caller decides which (a KB remembers whether it was created encrypted).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from onebox.errors import ConflictError
from onebox.rag import lexical
from onebox.rag.index import _ann, _lexical, _records
from onebox.rag.index import _sqlite as sq
from onebox.rag.index._ann import AnnGraph, Progress
from onebox.rag.index._vectors import VectorTable
from onebox.rag.types import Chunk, DocumentRecord, Hit, IndexStats, SearchFilter
from onebox.security.streams import Sealer

DB_FILE = "index.sqlite"
ANN_DIR = "ann"
ANN_THRESHOLD = 20_000
"""Chunks from which dense search goes through the graph (below, exact search is as fast; see the
crossover printed by benchmarks/rag_index.py)."""
EXACT_FILTER_LIMIT = 20_000
"""A filter that leaves at most this many chunks is answered exactly over those chunks."""
_SAVE_EVERY = 0.2
"""Save the graph once this share of it changed since the last save (and always on close)."""
_LOG_KEEP = 100_000

_C = ", ".join(f"c.{c}" for c in _records.CHUNK_COLUMNS)
_D = ", ".join(f"d.{c}" for c in _records.DOC_COLUMNS)
_ND = len(_records.DOC_COLUMNS)


class EmbeddedIndex:
    """:class:`~onebox.rag.types.ChunkIndex` in a local folder (created on first open)."""

    def __init__(
        self,
        path: str | Path,
        dim: int,
        *,
        analyzer: Callable[[str], list[str]] = lexical.terms,
        ann_threshold: int = ANN_THRESHOLD,
        exact_filter_limit: int = EXACT_FILTER_LIMIT,
        postings_budget: int = _lexical.POSTINGS_BUDGET,
        progress: Progress | None = None,
        sealer: Sealer | None = None,
    ) -> None:
        self.path = Path(path)
        self.sealer = sealer
        """Encrypts the database and seals the graph file; None keeps them plaintext."""
        self._key = sq.index_key(sealer.key) if sealer is not None else None
        self.path.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self._db = self.path / DB_FILE
        self._analyzer = analyzer
        self._ann_threshold = ann_threshold
        self._exact_limit = exact_filter_limit
        self.postings_budget = postings_budget
        """Postings FTS5 may rank per lexical query (0 = no limit: exhaustive BM25, slow at 1M)."""
        self._progress = progress
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._dense_lock = threading.RLock()
        self._table: VectorTable | None = None
        self._ann: AnnGraph | None = None
        self._gen = -1
        self._saved_gen = -1
        self._unsaved = 0
        self._closed = False
        sq.init_schema(self._conn(), dim, self._db)
        self._sync()

    # -- connections and transactions ------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sq.connect(self._db, self._key)
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _read(self, what: str, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._conn().execute(sql, args).fetchall()
        except sq.Error as exc:
            raise sq.wrap(exc, self._db, what) from exc

    # -- writes -------------------------------------------------------------------------------

    def upsert_document(self, doc: DocumentRecord, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        vec = _records.check_upsert(doc, chunks, vectors, self.dim)
        terms = [" ".join(self._analyzer(c.embed_text(doc.title))) for c in chunks]
        conn = self._conn()
        with sq.write(conn, self._db, f"indexing {doc.source!r}", conflict=f"cannot index {doc.source!r}"):
            gen = sq.meta_int(conn, "generation") + 1
            clash = conn.execute(
                "SELECT doc_id FROM documents WHERE source = ? AND doc_id != ?", (doc.source, doc.doc_id)
            ).fetchone()
            if clash:
                raise ConflictError(
                    f"source {doc.source!r} already belongs to document {clash[0]!r}", source=doc.source
                )
            row = conn.execute(
                "SELECT doc_no, added FROM documents WHERE doc_id = ?", (doc.doc_id,)
            ).fetchone()
            added = datetime.now(UTC)
            values = _records.doc_row(doc, len(chunks), added)
            if row is not None:
                doc_no = row[0]
                if doc.added is None and row[1]:
                    values = (*values[:9], row[1], values[10])  # keep when it was first added
                self._drop_chunks(conn, doc_no, gen)
                conn.execute(
                    "UPDATE documents SET source=?, content_hash=?, format=?, title=?, size_bytes=?, "
                    "n_chunks=?, tags=?, modified=?, added=?, modified_ts=? WHERE doc_no=?",
                    (*values[1:], doc_no),
                )
            else:
                cols = ", ".join((*_records.DOC_COLUMNS, "modified_ts"))
                cur = conn.execute(f"INSERT INTO documents({cols}) VALUES ({', '.join('?' * 11)})", values)
                doc_no = cur.lastrowid
            ccols = ", ".join((*_records.CHUNK_COLUMNS, "doc_no", "vector"))
            sql = f"INSERT INTO chunks({ccols}) VALUES ({', '.join('?' * 12)})"
            for c, v, t in zip(chunks, vec, terms, strict=True):
                cid = conn.execute(sql, (*_records.chunk_row(c), doc_no, v.tobytes())).lastrowid
                conn.execute("INSERT INTO chunks_fts(rowid, terms) VALUES (?, ?)", (cid, t))
            _lexical.apply_counts(conn, *_lexical.count_terms(terms), sign=1)
            sq.set_meta(conn, "generation", gen)
        self._sync(writer=True)

    def delete_document(self, doc_id: str) -> bool:
        conn = self._conn()
        with sq.write(conn, self._db, f"deleting {doc_id!r}"):
            row = conn.execute("SELECT doc_no FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
            if row is None:
                return False
            gen = sq.meta_int(conn, "generation") + 1
            self._drop_chunks(conn, row[0], gen)
            conn.execute("DELETE FROM documents WHERE doc_no = ?", (row[0],))
            sq.set_meta(conn, "generation", gen)
        self._sync(writer=True)
        return True

    @staticmethod
    def _drop_chunks(conn: sqlite3.Connection, doc_no: int, gen: int) -> None:
        conn.execute("INSERT INTO removed(id, gen) SELECT id, ? FROM chunks WHERE doc_no = ?", (gen, doc_no))
        old = conn.execute(
            "SELECT terms FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE doc_no = ?)", (doc_no,)
        )
        _lexical.apply_counts(conn, *_lexical.count_terms(r[0] for r in old), sign=-1)
        conn.execute(
            "DELETE FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE doc_no = ?)", (doc_no,)
        )
        conn.execute("DELETE FROM chunks WHERE doc_no = ?", (doc_no,))

    # -- the dense side: catch up with SQLite -------------------------------------------------

    def _sync(self, writer: bool = False) -> None:
        """Bring the in-memory vectors (and graph) to the committed generation."""
        with self._dense_lock:
            conn = self._conn()
            try:
                conn.execute("BEGIN")
                gen = sq.meta_int(conn, "generation")
                if gen == self._gen:
                    conn.execute("COMMIT")
                    return
                floor = sq.meta_int(conn, "floor")
                if self._table is None or floor > self._gen:
                    table = self._load_all(conn)
                    conn.execute("COMMIT")
                    self._table, self._gen = table, gen
                    self._attach_ann(gen, floor)
                    return
                gone = np.array(
                    [r[0] for r in conn.execute("SELECT id FROM removed WHERE gen > ?", (self._gen,))],
                    dtype=np.int64,
                )
                keys, docs, vecs = self._rows(conn, "WHERE id > ?", (self._table.max_key,))
                conn.execute("COMMIT")
            except sq.Error as exc:
                sq._rollback(conn)
                raise sq.wrap(exc, self._db, "reading vectors") from exc
            self._table.remove(gone)
            self._table.append(keys, docs, vecs)
            if self._ann is not None:
                self._ann.remove(gone)
                self._ann.add(keys, vecs)
                self._unsaved += len(gone) + len(keys)
            self._gen = gen
            self._resize_ann()
            if writer and self._ann is not None and self._unsaved > _SAVE_EVERY * max(len(self._table), 1):
                self.flush()

    def _rows(self, conn: sqlite3.Connection, where: str, args: Sequence[Any]) -> tuple[np.ndarray, ...]:
        keys: list[int] = []
        docs: list[int] = []
        blobs: list[bytes] = []
        total = None
        cur = conn.execute(f"SELECT id, doc_no, vector FROM chunks {where} ORDER BY id", args)
        while batch := cur.fetchmany(20_000):
            for k, d, b in batch:
                keys.append(k)
                docs.append(d)
                blobs.append(b)
            if self._progress is not None and where == "":
                total = total or conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
                self._progress("load", len(keys), total)
        vecs = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(keys), self.dim)
        return np.array(keys, dtype=np.int64), np.array(docs, dtype=np.int64), vecs

    def _load_all(self, conn: sqlite3.Connection) -> VectorTable:
        table = VectorTable(self.dim)
        keys, docs, vecs = self._rows(conn, "", ())
        table.append(keys, docs, vecs)
        return table

    def _attach_ann(self, gen: int, floor: int) -> None:
        """After a full load: use the saved graph if it is sound, else rebuild (or stay exact)."""
        assert self._table is not None
        self._ann = None
        if len(self._table) < self._ann_threshold or not _ann.available():
            return
        loaded = AnnGraph.load(self.path / ANN_DIR, self.dim, self.sealer)
        if loaded is not None:
            graph, meta = loaded
            if floor <= meta.generation <= gen and self._catch_up(graph, meta):
                self._ann, self._saved_gen = graph, meta.generation
                self._unsaved = 0 if meta.generation == gen else 1
                return
        self._build_ann()

    def _catch_up(self, graph: AnnGraph, meta: _ann.AnnMeta) -> bool:
        """Apply what happened since the graph was saved; False when it does not add up."""
        assert self._table is not None
        rows = self._read(
            "reading the removed log", "SELECT id FROM removed WHERE gen > ?", (meta.generation,)
        )
        graph.remove(np.array([r[0] for r in rows], dtype=np.int64))
        keys, vecs = self._table.live_vectors()
        new = keys > meta.max_key
        graph.add(keys[new], vecs[new])
        if graph.count != len(self._table):
            return False
        old = keys[~new]
        if len(old):  # spot-check that the graph holds the vectors SQLite holds
            sample = old[np.random.default_rng().integers(0, len(old), min(16, len(old)))]
            pos = self._table.positions(sample)
            if not np.allclose(graph.get(sample), self._table.vectors(pos), atol=1e-5):
                return False
        return True

    def _build_ann(self) -> None:
        assert self._table is not None
        keys, vecs = self._table.live_vectors()
        graph = AnnGraph(self.dim, capacity=int(len(keys) * 1.25))
        graph.add(keys, vecs, self._progress)
        self._ann, self._saved_gen, self._unsaved = graph, -1, len(keys)
        self.flush(force=True)

    def _resize_ann(self) -> None:
        assert self._table is not None
        if self._ann is None and len(self._table) >= self._ann_threshold and _ann.available():
            self._build_ann()
        elif self._ann is not None and len(self._table) < self._ann_threshold // 2:
            self._ann = None

    def flush(self, *, force: bool = False) -> None:
        """Save the graph now if it has changes (also done on close and as ingestion goes);
        ``force`` replaces a saved graph even when it claims a later generation."""
        with self._dense_lock:
            if self._ann is None or self._table is None or self._saved_gen == self._gen:
                return
            self._ann.save(
                self.path / ANN_DIR, self._gen, self._table.max_key, force=force, sealer=self.sealer
            )
            self._saved_gen, self._unsaved = self._gen, 0
            self._prune_log(self._gen)

    def _prune_log(self, saved_gen: int) -> None:
        """Forget removals the saved graph already reflects, once the log is worth trimming."""
        conn = self._conn()
        try:
            if conn.execute("SELECT count(*) FROM removed").fetchone()[0] <= _LOG_KEEP:
                return
        except sq.Error as exc:
            raise sq.wrap(exc, self._db, "trimming the removed log") from exc
        with sq.write(conn, self._db, "trimming the removed log"):
            conn.execute("DELETE FROM removed WHERE gen <= ?", (saved_gen,))
            sq.set_meta(conn, "floor", max(saved_gen, sq.meta_int(conn, "floor")))

    # -- reads --------------------------------------------------------------------------------

    def documents(self) -> list[DocumentRecord]:
        rows = self._read("listing documents", f"SELECT {_D} FROM documents d ORDER BY d.source")
        return [_records.doc_from_row(r) for r in rows]

    def get_document(self, doc_id: str) -> DocumentRecord | None:
        rows = self._read("reading a document", f"SELECT {_D} FROM documents d WHERE d.doc_id = ?", (doc_id,))
        return _records.doc_from_row(rows[0]) if rows else None

    def get_chunks(self, chunk_ids: Sequence[str]) -> list[Chunk]:
        found: dict[str, Chunk] = {}
        ids = list(dict.fromkeys(chunk_ids))
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            sql = f"SELECT {_C} FROM chunks c WHERE c.chunk_id IN ({','.join('?' * len(part))})"
            for r in self._read("reading chunks", sql, part):
                found[r[0]] = _records.chunk_from_row(r)
        return [found[i] for i in chunk_ids if i in found]

    def lexical_search(self, query: str, k: int, flt: SearchFilter | None = None) -> list[Hit]:
        """BM25 over FTS5; a query whose postings exceed ``postings_budget`` is answered from the
        candidates of its rarer terms, re-scored with all of them (see ``_lexical``)."""
        k = _records.check_k(k)
        words = list(dict.fromkeys(self._analyzer(query)))
        if not words or k == 0:
            return []
        conn = self._conn()
        try:
            conn.execute("BEGIN")  # one snapshot for the statistics, the match and the re-scoring
            df, chosen = _lexical.plan(conn, words, self.postings_budget)
            pruned = len(chosen) < len(df)
            limit = max(4 * k, _lexical.MIN_POOL) if pruned else k
            rows = self._match(conn, _lexical.match_expr(chosen), limit, flt) if chosen else []
            if pruned:
                ids, scores = _lexical.rescore(conn, [r[0] for r in rows], df, k)
            else:
                ids, scores = [r[0] for r in rows], [-float(r[1]) for r in rows]
            conn.execute("COMMIT")
        except sq.Error as exc:
            sq._rollback(conn)
            raise sq.wrap(exc, self._db, "lexical search") from exc
        return self._hits(ids, scores, "lexical")

    @staticmethod
    def _match(conn: sqlite3.Connection, match: str, limit: int, flt: SearchFilter | None) -> list[Any]:
        if _records.filter_is_empty(flt):
            sql = "SELECT rowid, rank FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY rank LIMIT ?"
            return conn.execute(sql, (match, limit)).fetchall()
        where, args = sq.doc_filter(flt)
        sql = (
            "SELECT f.rowid, bm25(chunks_fts) AS s FROM chunks_fts f JOIN chunks c ON c.id = f.rowid "
            "JOIN documents d ON d.doc_no = c.doc_no "
            f"WHERE chunks_fts MATCH ? AND {where} ORDER BY s LIMIT ?"
        )
        return conn.execute(sql, (match, *args, limit)).fetchall()

    def dense_search(self, vector: np.ndarray, k: int, flt: SearchFilter | None = None) -> list[Hit]:
        q = _records.check_query_vector(vector, self.dim)
        k = _records.check_k(k)
        if k == 0:
            return []
        self._sync()
        doc_nos = None
        if not _records.filter_is_empty(flt):
            where, args = sq.doc_filter(flt)
            rows = self._read("filtering", f"SELECT d.doc_no FROM documents d WHERE {where}", args)
            doc_nos = np.array([r[0] for r in rows], dtype=np.int64)
        with self._dense_lock:
            keys, scores = self._dense(q, k + 4, doc_nos)
        hits = self._hits(keys.tolist(), scores.tolist(), "dense")
        return hits[:k]

    def _dense(self, q: np.ndarray, k: int, doc_nos: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        table = self._table
        assert table is not None
        if doc_nos is None:
            if self._ann is None:
                return table.search(q, k)
            pos = table.positions(self._ann.search(q, max(2 * k, k + 10)))  # re-ranked exactly
            if len(pos) < min(k, len(table)):
                return table.search(q, k)
            return _top(table, pos, q, k)
        pos = table.mask_for_docs(doc_nos)
        if self._ann is None or len(pos) <= self._exact_limit:
            return table.search(q, k, pos)
        # A broad filter: ask the graph for enough neighbours that k of them pass, else go exact.
        want = int(k * len(table) / len(pos) * 2) + k
        found = table.positions(self._ann.search(q, want))
        found = found[table.in_docs(found, doc_nos)]
        if len(found) < min(k, len(pos)):
            return table.search(q, k, pos)
        return _top(table, found, q, k)

    def _hits(self, ids: list[int], scores: list[float], via: Any) -> list[Hit]:
        if not ids:
            return []
        sql = (
            f"SELECT c.id, {_D}, {_C} FROM chunks c JOIN documents d ON d.doc_no = c.doc_no "
            f"WHERE c.id IN ({','.join('?' * len(ids))})"
        )
        rows = {r[0]: r for r in self._read("reading hits", sql, ids)}
        hits: list[Hit] = []
        for i, s in zip(ids, scores, strict=True):
            r = rows.get(i)
            if r is None:  # deleted since the search
                continue
            doc = _records.doc_from_row(r[1 : 1 + _ND])
            chunk = _records.chunk_from_row(r[1 + _ND :])
            hits.append(Hit(chunk=chunk, score=s, rank=len(hits) + 1, document=doc, via=via, scores={via: s}))
        return hits

    def stats(self) -> IndexStats:
        ((docs,),) = self._read("stats", "SELECT count(*) FROM documents")
        ((chunks,),) = self._read("stats", "SELECT count(*) FROM chunks")
        size = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return IndexStats(documents=docs, chunks=chunks, dim=self.dim, bytes_on_disk=size)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self.flush()
        with self._conns_lock:
            for conn in self._conns:
                with contextlib.suppress(*sq.Error):
                    conn.close()
            self._conns.clear()

    def __enter__(self) -> EmbeddedIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _top(table: VectorTable, pos: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine re-ranking of graph candidates (the graph only proposes)."""
    scores = table.rescore(pos, q)
    order = np.argsort(-scores, kind="stable")[:k]
    return table.keys_at(pos[order]), scores[order]
