"""Embedded lexical search at scale: term statistics kept transactionally, pruned BM25 ranking."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from onebox.rag.index.embedded import DB_FILE, EmbeddedIndex
from tests.rag.index.conftest import DIM, make_doc, unit

_RARE = [f"rare{i}" for i in range(40)]


def _corpus(rng: np.random.Generator, n_docs: int = 30, per_doc: int = 20) -> list[list[str]]:
    """Every chunk has the common words; a few carry rare ones, some several times."""
    docs = []
    for _ in range(n_docs):
        texts = []
        for _ in range(per_doc):
            words = ["common", "shared"] * int(rng.integers(1, 4)) + ["filler"] * int(rng.integers(0, 20))
            words += list(rng.choice(_RARE, size=int(rng.integers(0, 3))))
            rng.shuffle(words)
            texts.append(" ".join(words))
        docs.append(texts)
    return docs


def _vocab(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    with sqlite3.connect(path / DB_FILE) as db:
        ours = dict(db.execute("SELECT term, df FROM term_df").fetchall())
        fts = dict(db.execute("SELECT term, doc FROM chunks_vocab").fetchall())
    return ours, fts


def test_term_statistics_follow_upserts_replaces_and_deletes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with EmbeddedIndex(tmp_path, DIM) as ix:
        for d, texts in enumerate(_corpus(rng, 6, 5)):
            ix.upsert_document(*make_doc(f"d{d}", texts), unit(rng, len(texts)))
        ix.upsert_document(*make_doc("d1", ["only rare7 now"]), unit(rng, 1))
        ix.delete_document("d2")
        ours, fts = _vocab(tmp_path)
    assert ours == fts and "now" in ours


def test_an_index_without_statistics_is_backfilled_on_open(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    with EmbeddedIndex(tmp_path, DIM) as ix:
        ix.upsert_document(*make_doc("a", ["alpha beta", "beta gamma"]), unit(rng, 2))
    with sqlite3.connect(tmp_path / DB_FILE) as db:  # what an index written by the first version holds
        db.execute("DELETE FROM term_df")
        db.execute("DELETE FROM meta WHERE key IN ('lex_rows', 'lex_tokens')")
    with EmbeddedIndex(tmp_path, DIM) as ix:
        assert [h.chunk.chunk_id for h in ix.lexical_search("gamma", 5)] == ["a:1"]
    ours, fts = _vocab(tmp_path)
    assert ours == fts and (ours["alpha"], ours["beta"], ours["gamma"]) == (1, 2, 1)


def test_pruned_ranking_matches_exhaustive_bm25(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    with EmbeddedIndex(tmp_path, DIM) as ix:
        for d, texts in enumerate(_corpus(rng)):
            ix.upsert_document(*make_doc(f"d{d}", texts), unit(rng, len(texts)))
    exhaustive = EmbeddedIndex(tmp_path, DIM, postings_budget=0)
    pruned = EmbeddedIndex(tmp_path, DIM, postings_budget=50)  # "common" (600 postings) is left out
    try:
        for query in ("common rare3", "rare1 rare2 shared common", "filler rare9", "common shared"):
            want = exhaustive.lexical_search(query, 10)
            got = pruned.lexical_search(query, 10)
            assert [h.chunk.chunk_id for h in got][:3] == [h.chunk.chunk_id for h in want][:3], query
            np.testing.assert_allclose([h.score for h in got], [h.score for h in want], rtol=1e-6)
            assert [h.rank for h in got] == list(range(1, len(got) + 1))
    finally:
        exhaustive.close()
        pruned.close()
