"""The search index in the metadata store: writing documents and ranking a query's phrases.

The tables (``search_docs``, ``search_terms``, ``search_marks``) are the same on both backends;
the native index over the scoped terms differs:

- SQLite: an FTS5 external-content table (``search_fts``) over ``search_docs``; FTS5's ``bm25()``
  ranks in C, with a postings budget (see :mod:`.search_rank`).
- PostgreSQL: ``search_docs.tsv``, the document's distinct scoped terms as a ``tsvector`` (built
  with ``array_to_tsvector``: the terms are already segmented, no text-search parser touches
  them) behind a GIN index, which finds candidates; BM25 ranks them here with the same formula
  and the document frequencies of ``search_terms``.

Writers hold one lock (SQLite ``BEGIN IMMEDIATE``; a PostgreSQL advisory lock), so document ids,
frequencies and totals stay consistent when several processes catch up at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, text

from onebox.monitor import search_rank
from onebox.monitor.search_docs import Doc
from onebox.rag.lexical import terms
from onebox.store.tables import UTCDateTime

SQLITE_BUDGET = 8000
"""Postings FTS5 may rank per query (about 6 ms on 2 cores)."""
PG_BUDGET = 1500
"""Candidates re-ranked in Python per query on PostgreSQL (about 10 ms)."""
LOCK_KEY = 0x0B0C5EA2C4
CHUNK = 500
_DOC_COLUMNS = "id, key, kind, resource_id, owner, project_id, scope, title, detail, status, line, created_at"
_OLD_COLUMNS = (
    "id, key, kind, owner, name_terms, body_terms, length, scope, project_id, title, detail, status, line, "
    "stamp"
)
_FTS_DELETE = (
    "INSERT INTO search_fts(search_fts, rowid, kind, name_terms, body_terms) "
    "VALUES ('delete', :id, :kind, :n, :b)"
)
_INSERT = {  # column -> parameter
    "id": "id", "key": "key", "kind": "kind", "resource_id": "rid", "owner": "owner", "project_id": "pid",
    "scope": "scope", "title": "title", "detail": "detail", "status": "status", "line": "line",
    "name_terms": "n", "body_terms": "b", "length": "length", "stamp": "stamp", "created_at": "created",
}  # fmt: skip


@dataclass(frozen=True)
class Row:
    """A document with its scoped terms, ready to store."""

    doc: Doc
    name_terms: str
    body_terms: str
    length: int

    @property
    def same_as(self) -> tuple[Any, ...]:
        d = self.doc
        return (self.name_terms, self.body_terms, d.scope, d.project_id, d.title, d.detail, d.status, d.line)


def segment(doc: Doc) -> Row:
    name = search_rank.scoped_terms(doc.scope, terms(doc.name_text)) if doc.name_text else ""
    body = search_rank.scoped_terms(doc.scope, terms(doc.body_text)) if doc.body_text else ""
    return Row(doc, name, body, 1 + len(name.split()) + len(body.split()))


def _chunks(seq: Sequence[Any], n: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _in(name: str, values: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    params = {f"{name}{i}": v for i, v in enumerate(values)}
    return ", ".join(f":{k}" for k in params), params


class SearchStore:
    """The index tables of one database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pg = engine.dialect.name == "postgresql"

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A write transaction holding the indexer's lock; commits when the block ends cleanly."""
        with self.engine.connect() as conn:
            if self.pg:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn
            conn.commit()

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    # -- marks and totals ----------------------------------------------------------------------

    @staticmethod
    def marks(conn: Connection, prefix: str = "") -> dict[str, str]:
        q = "SELECT source, mark FROM search_marks"
        if prefix:
            rows = conn.execute(text(q + " WHERE source LIKE :p"), {"p": prefix + "%"})
        else:
            rows = conn.execute(text(q))
        return {s: m for s, m in rows}

    @staticmethod
    def marks_of(conn: Connection, sources: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for chunk in _chunks(list(sources)):
            marks, params = _in("s", chunk)
            rows = conn.execute(
                text(f"SELECT source, mark FROM search_marks WHERE source IN ({marks})"), params
            )
            out.update({s: m for s, m in rows})
        return out

    @staticmethod
    def set_marks(conn: Connection, marks: dict[str, str]) -> None:
        if not marks:
            return
        conn.execute(
            text(
                "INSERT INTO search_marks(source, mark) VALUES (:s, :m) "
                "ON CONFLICT(source) DO UPDATE SET mark = excluded.mark"
            ),
            [{"s": s, "m": m} for s, m in marks.items()],
        )

    @staticmethod
    def drop_marks(conn: Connection, sources: Sequence[str]) -> None:
        for chunk in _chunks(list(sources)):
            marks, params = _in("s", chunk)
            conn.execute(text(f"DELETE FROM search_marks WHERE source IN ({marks})"), params)

    def totals(self, conn: Connection) -> tuple[int, int]:
        m = self.marks(conn, "stats:")
        return int(m.get("stats:docs", 0)), int(m.get("stats:tokens", 0))

    def _add_totals(self, conn: Connection, docs: int, tokens: int) -> None:
        if docs or tokens:
            n, t = self.totals(conn)
            self.set_marks(conn, {"stats:docs": str(n + docs), "stats:tokens": str(t + tokens)})

    # -- writes ----------------------------------------------------------------------------------

    def apply(
        self,
        conn: Connection,
        rows: Sequence[Row] = (),
        *,
        delete_keys: Sequence[str] = (),
        delete_owners: Sequence[tuple[str, str | None]] = (),
    ) -> int:
        """Upsert ``rows`` by key and delete documents by key or by (owner, kind or None for all);
        returns how many documents were written or removed (a replaced one counts once).
        Inside :meth:`writing`."""
        by_key = {r.doc.key: r for r in rows}
        old = self._existing(conn, [*by_key, *delete_keys], delete_owners)
        stale = []
        stamp_only = []
        for o in old:
            new = by_key.get(o["key"])
            if new is not None and o["owner"] == new.doc.owner and o["same"] == new.same_as:
                if o["stamp"] != new.doc.stamp:
                    stamp_only.append({"id": o["id"], "stamp": new.doc.stamp})
                del by_key[o["key"]]
            else:
                stale.append(o)
        if stamp_only:
            conn.execute(text("UPDATE search_docs SET stamp = :stamp WHERE id = :id"), stamp_only)
        self._remove(conn, stale)
        self._insert(conn, list(by_key.values()))
        return len(by_key) + sum(1 for o in stale if o["key"] not in by_key)

    def _existing(
        self, conn: Connection, keys: Sequence[str], owners: Sequence[tuple[str, str | None]]
    ) -> list[dict[str, Any]]:
        cols = _OLD_COLUMNS
        found: dict[int, Any] = {}
        for chunk in _chunks(list(dict.fromkeys(keys))):
            marks, params = _in("k", chunk)
            for r in conn.execute(text(f"SELECT {cols} FROM search_docs WHERE key IN ({marks})"), params):
                found[r.id] = r
        kinds: dict[str, set[str | None]] = {}
        for owner, kind in owners:
            kinds.setdefault(owner, set()).add(kind)
        for chunk in _chunks(list(kinds)):
            marks, params = _in("o", chunk)
            for r in conn.execute(text(f"SELECT {cols} FROM search_docs WHERE owner IN ({marks})"), params):
                if None in kinds[r.owner] or r.kind in kinds[r.owner]:
                    found[r.id] = r
        return [
            {
                "id": r.id,
                "key": r.key,
                "kind": r.kind,
                "owner": r.owner,
                "name_terms": r.name_terms,
                "body_terms": r.body_terms,
                "length": r.length,
                "stamp": r.stamp,
                "same": (
                    r.name_terms,
                    r.body_terms,
                    r.scope,
                    r.project_id,
                    r.title,
                    r.detail,
                    r.status,
                    r.line,
                ),
            }
            for r in found.values()
        ]

    def _remove(self, conn: Connection, old: list[dict[str, Any]]) -> None:
        if not old:
            return
        if not self.pg:
            conn.execute(
                text(_FTS_DELETE),
                [{"id": o["id"], "kind": o["kind"], "n": o["name_terms"], "b": o["body_terms"]} for o in old],
            )
        for chunk in _chunks([o["id"] for o in old]):
            marks, params = _in("i", chunk)
            conn.execute(text(f"DELETE FROM search_docs WHERE id IN ({marks})"), params)
        df: Counter[str] = Counter()
        for o in old:
            df.update(set((o["name_terms"] + " " + o["body_terms"]).split()))
        self._add_df(conn, df, -1)
        self._add_totals(conn, -len(old), -sum(o["length"] for o in old))

    def _insert(self, conn: Connection, rows: list[Row]) -> None:
        if not rows:
            return
        start = int(conn.execute(text("SELECT coalesce(max(id), 0) FROM search_docs")).scalar_one()) + 1
        params = []
        df: Counter[str] = Counter()
        for i, r in enumerate(rows):
            d = r.doc
            lexemes = sorted(set((r.name_terms + " " + r.body_terms).split()))
            df.update(lexemes)
            params.append(
                {
                    "id": start + i,
                    "key": d.key,
                    "kind": d.kind,
                    "rid": d.resource_id,
                    "owner": d.owner,
                    "pid": d.project_id,
                    "scope": d.scope,
                    "title": d.title,
                    "detail": d.detail,
                    "status": d.status,
                    "line": d.line,
                    "n": r.name_terms,
                    "b": r.body_terms,
                    "length": r.length,
                    "stamp": d.stamp,
                    "created": d.created_at,
                    "lex": lexemes,
                }
            )
        cols = ", ".join(_INSERT)
        values = ", ".join(f":{p}" for p in _INSERT.values())
        created = bindparam("created", type_=UTCDateTime())
        if self.pg:
            tsv = "array_to_tsvector(CAST(:lex AS text[]))"
            sql = f"INSERT INTO search_docs ({cols}, tsv) VALUES ({values}, {tsv})"
            conn.execute(text(sql).bindparams(created), params)
        else:
            sql = f"INSERT INTO search_docs ({cols}) VALUES ({values})"
            conn.execute(text(sql).bindparams(created), params)
            conn.execute(
                text(
                    "INSERT INTO search_fts(rowid, kind, name_terms, body_terms) VALUES (:id, :kind, :n, :b)"
                ),
                params,
            )
        self._add_df(conn, df, 1)
        self._add_totals(conn, len(rows), sum(r.length for r in rows))

    @staticmethod
    def _add_df(conn: Connection, df: Counter[str], sign: int) -> None:
        if not df:
            return
        conn.execute(
            text(
                "INSERT INTO search_terms(term, df) VALUES (:t, :d) "
                "ON CONFLICT(term) DO UPDATE SET df = search_terms.df + excluded.df"
            ),
            [{"t": t, "d": sign * n} for t, n in df.items()],
        )
        if sign < 0:
            for chunk in _chunks(list(df)):
                marks, params = _in("t", chunk)
                conn.execute(text(f"DELETE FROM search_terms WHERE df <= 0 AND term IN ({marks})"), params)

    def clear(self, conn: Connection) -> None:
        """Empty the index (rebuild); inside :meth:`writing`."""
        if not self.pg:
            conn.execute(text("INSERT INTO search_fts(search_fts) VALUES ('delete-all')"))
        for table in ("search_docs", "search_terms", "search_marks"):
            conn.execute(text(f"DELETE FROM {table}"))

    # -- queries ---------------------------------------------------------------------------------

    def df(self, conn: Connection, phrases: Sequence[str]) -> dict[str, int]:
        marks, params = _in("t", list(phrases))
        rows = conn.execute(text(f"SELECT term, df FROM search_terms WHERE term IN ({marks})"), params)
        return {t: int(n) for t, n in rows}

    def rank(
        self, conn: Connection, phrases: Sequence[str], kinds: Sequence[str] | None, k: int
    ) -> tuple[list[tuple[int, float]], bool]:
        """The best ``k`` (document id, score) for an OR of ``phrases``, and whether the postings
        budget made the ranking approximate."""
        budget = PG_BUDGET if self.pg else SQLITE_BUDGET
        p = search_rank.plan(self.df(conn, phrases), budget)
        if not p.df:
            return [], False
        n_docs, tokens = self.totals(conn)
        avgdl = tokens / max(n_docs, 1)
        if self.pg:
            limit = budget
            rows = self._pg_candidates(conn, p.match if p.mode == "pool" else list(p.df), kinds, limit)
            scored = [
                (r.id, search_rank.bm25(r.name_terms, r.body_terms, r.length, p.df, n_docs, avgdl))
                for r in rows
            ]
            scored.sort(key=lambda x: (-x[1], -x[0]))
            return scored[:k], p.mode != "exact"
        if p.mode == "exact":
            return self._fts(conn, p.match, kinds, k), False
        if p.mode == "recent":
            return self._fts(conn, list(p.df), kinds, k, newest=budget), True
        pool = [i for i, _ in self._fts(conn, p.match, kinds, max(100, 5 * k))]
        scored = [
            (r.id, search_rank.bm25(r.name_terms, r.body_terms, r.length, p.df, n_docs, avgdl))
            for r in self._terms_of(conn, pool)
        ]
        scored.sort(key=lambda x: (-x[1], -x[0]))
        return scored[:k], True

    def _fts(
        self, conn: Connection, phrases: Sequence[str], kinds: Sequence[str] | None, k: int, newest: int = 0
    ) -> list[tuple[int, float]]:
        expr = " OR ".join(_quote(p) for p in phrases)
        if kinds:
            expr = f"kind : ({' OR '.join(_quote(x) for x in kinds)}) AND ({expr})"
        where = "search_fts MATCH :m"
        params: dict[str, Any] = {"m": expr, "k": k}
        if newest:
            floor = conn.execute(
                text(f"SELECT rowid FROM search_fts WHERE {where} ORDER BY rowid DESC LIMIT 1 OFFSET :o"),
                {"m": expr, "o": newest - 1},
            ).scalar()
            if floor is not None:
                where += " AND rowid >= :floor"
                params["floor"] = floor
        w = f"bm25(search_fts, 0.0, {search_rank.W_NAME}, {search_rank.W_BODY})"
        rows = conn.execute(
            text(f"SELECT rowid, {w} AS s FROM search_fts WHERE {where} ORDER BY s LIMIT :k"), params
        )
        return [(int(i), -float(s)) for i, s in rows]

    @staticmethod
    def _terms_of(conn: Connection, ids: Sequence[int]) -> list[Any]:
        if not ids:
            return []
        marks, params = _in("i", list(ids))
        return list(
            conn.execute(
                text(f"SELECT id, name_terms, body_terms, length FROM search_docs WHERE id IN ({marks})"),
                params,
            )
        )

    @staticmethod
    def _pg_candidates(
        conn: Connection, phrases: Sequence[str], kinds: Sequence[str] | None, limit: int
    ) -> list[Any]:
        query = " | ".join("'" + p.replace("\\", "\\\\").replace("'", "''") + "'" for p in phrases)
        sql = "SELECT id, name_terms, body_terms, length FROM search_docs WHERE tsv @@ CAST(:q AS tsquery)"
        params: dict[str, Any] = {"q": query, "n": limit}
        if kinds:
            sql += " AND kind = ANY(:kinds)"
            params["kinds"] = list(kinds)
        return list(conn.execute(text(sql + " ORDER BY id DESC LIMIT :n"), params))

    @staticmethod
    def docs(conn: Connection, ids: Sequence[int]) -> dict[int, Any]:
        if not ids:
            return {}
        marks, params = _in("i", list(ids))
        sql = text(f"SELECT {_DOC_COLUMNS} FROM search_docs WHERE id IN ({marks})").columns(
            created_at=UTCDateTime()
        )
        return {r.id: r for r in conn.execute(sql, params)}


def _quote(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'
