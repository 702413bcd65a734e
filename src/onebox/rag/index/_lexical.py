"""Lexical (BM25) search of the embedded index that stays fast at a million chunks.

FTS5's ``bm25()`` scores every row that matches any query term, so an OR query holding one common
term (df in the hundreds of thousands) costs hundreds of milliseconds at 1M chunks. Instead:

1. Document frequencies come from ``term_df``, a side table kept in the same transaction as the
   FTS rows (a B-tree lookup; FTS5's own ``fts5vocab`` counts by walking the posting list).
2. When the query's postings add up to at most :data:`POSTINGS_BUDGET`, FTS5 ranks the full OR
   query exactly as before.
3. Otherwise the rarest terms whose postings fit the budget (at least one) pick ``pool``
   candidates with FTS5's ``bm25()``, and those are re-scored with full BM25 over all query terms
   (same formula and constants as FTS5). The common terms left out of the MATCH have low idf, so
   they reorder candidates but rarely bring in new ones: on the benchmark query set at 1M chunks
   the top-10 agrees with exhaustive ranking (figures in benchmarks/results/rag.txt).
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

K1 = 1.2
B = 0.75
"""FTS5's bm25() defaults, so re-scored and FTS5-ranked scores share one scale."""
POSTINGS_BUDGET = 10_000
"""Posting entries FTS5 may rank per query: on 2 cores at 1M chunks 10k gave lexical p50 20 ms /
p95 87 ms (machine shared), 20k p50 36 / p95 97 ms, exhaustive p50 200-400 ms / p95 0.7-1.6 s."""
MIN_POOL = 100


def match_expr(words: Iterable[str]) -> str:
    """An FTS5 OR of quoted terms (quotes make every term a literal, whatever it contains)."""
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


def count_terms(term_strings: Iterable[str]) -> tuple[Counter[str], int, int]:
    """Per-term chunk counts (df deltas), chunks and tokens of space-joined term strings."""
    df: Counter[str] = Counter()
    rows = tokens = 0
    for s in term_strings:
        toks = s.split()
        df.update(set(toks))
        rows += 1
        tokens += len(toks)
    return df, rows, tokens


def apply_counts(conn: sqlite3.Connection, df: Counter[str], rows: int, tokens: int, sign: int) -> None:
    """Add (``sign=1``) or remove (``-1``) chunks' terms from ``term_df`` and the totals in ``meta``;
    called inside the transaction that writes the FTS rows."""
    if df:
        conn.executemany(
            "INSERT INTO term_df(term, df) VALUES (?, ?) "
            "ON CONFLICT(term) DO UPDATE SET df = df + excluded.df",
            [(t, sign * n) for t, n in df.items()],
        )
        if sign < 0:
            conn.executemany("DELETE FROM term_df WHERE term = ? AND df <= 0", [(t,) for t in df])
    for key, delta in (("lex_rows", rows), ("lex_tokens", tokens)):
        conn.execute(
            "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + ? AS TEXT) WHERE key = ?",
            (sign * delta, key),
        )


def backfill(conn: sqlite3.Connection) -> None:
    """Fill ``term_df`` and the totals from the FTS table (an index written before they existed)."""
    conn.execute("DELETE FROM term_df")
    conn.execute("INSERT INTO term_df(term, df) SELECT term, doc FROM chunks_vocab")
    rows = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
    tokens = conn.execute("SELECT coalesce(sum(cnt), 0) FROM chunks_vocab").fetchone()[0]
    conn.executemany(
        "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
        [("lex_rows", str(rows)), ("lex_tokens", str(tokens))],
    )


def plan(conn: sqlite3.Connection, words: Sequence[str], budget: int) -> tuple[dict[str, int], list[str]]:
    """Document frequencies of the query's terms (absent ones dropped) and the terms to MATCH:
    all of them when their postings fit ``budget``, else the rarest that fit (at least one)."""
    marks = ",".join("?" * len(words))
    df = dict(conn.execute(f"SELECT term, df FROM term_df WHERE term IN ({marks})", list(words)).fetchall())
    present = [w for w in words if df.get(w, 0) > 0]
    df = {w: df[w] for w in present}
    if budget <= 0 or sum(df.values()) <= budget:
        return df, present
    chosen: list[str] = []
    used = 0
    for w in sorted(present, key=lambda t: (df[t], t)):
        if chosen and used + df[w] > budget:
            break
        chosen.append(w)
        used += df[w]
    return df, chosen


def rescore(
    conn: sqlite3.Connection, ids: Sequence[int], df: dict[str, int], k: int
) -> tuple[list[int], list[float]]:
    """Full BM25 over every query term for candidate rows ``ids``: the best ``k`` (ids, scores)."""
    if not ids:
        return [], []
    meta: dict[str, Any] = dict(
        conn.execute("SELECT key, value FROM meta WHERE key IN ('lex_rows', 'lex_tokens')").fetchall()
    )
    n = max(int(meta.get("lex_rows", 0)), 1)
    avgdl = max(int(meta.get("lex_tokens", 0)) / n, 1e-9)
    idf = {w: max(math.log((n - d + 0.5) / (d + 0.5)), 1e-6) for w, d in df.items()}
    rows = conn.execute(
        f"SELECT rowid, terms FROM chunks_fts WHERE rowid IN ({','.join('?' * len(ids))})", list(ids)
    ).fetchall()
    scored: list[tuple[float, int]] = []
    for rowid, text in rows:
        toks = text.split()
        norm = K1 * (1 - B + B * len(toks) / avgdl)
        tf = Counter(t for t in toks if t in idf)
        s = sum(idf[w] * f * (K1 + 1) / (f + norm) for w, f in tf.items())
        scored.append((-s, rowid))
    scored.sort()
    top = scored[:k]
    return [r for _, r in top], [-s for s, _ in top]
