"""Hybrid retrieval over a small in-memory index written here (and once over the real embedded one)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from onebox.errors import InvalidInputError
from onebox.rag.retrieval import RRF_K, Retriever, reciprocal_rank_fusion
from onebox.rag.types import Chunk, DocumentRecord, Hit, IndexStats, SearchFilter

DIM = 32


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+|[\u4e00-\u9fff]", text.lower())


class HashEmbedder:
    """Bag of hashed words: texts sharing words point the same way. Counts its calls."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in words(t):
                out[i, sum(map(ord, w)) % DIM] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


class FakeIndex:
    """A ChunkIndex in memory: word-overlap 'BM25', exact cosine, filters by source and tag."""

    dim = DIM

    def __init__(self) -> None:
        self.docs: dict[str, DocumentRecord] = {}
        self.chunks: dict[str, tuple[Chunk, np.ndarray]] = {}
        self.calls: list[tuple[str, int, SearchFilter | None]] = []

    def upsert_document(self, doc: DocumentRecord, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        self.delete_document(doc.doc_id)
        self.docs[doc.doc_id] = doc
        for c, v in zip(chunks, vectors, strict=True):
            self.chunks[c.chunk_id] = (c, v)

    def delete_document(self, doc_id: str) -> bool:
        self.chunks = {k: v for k, v in self.chunks.items() if v[0].doc_id != doc_id}
        return self.docs.pop(doc_id, None) is not None

    def documents(self) -> list[DocumentRecord]:
        return list(self.docs.values())

    def get_document(self, doc_id: str) -> DocumentRecord | None:
        return self.docs.get(doc_id)

    def _allowed(self, doc: DocumentRecord, flt: SearchFilter | None) -> bool:
        if flt is None:
            return True
        return (not flt.sources or doc.source in flt.sources) and (
            not flt.tags or bool(set(flt.tags) & set(doc.tags))
        )

    def _ranked(self, scored: list[tuple[float, Chunk]], k: int, via: str) -> list[Hit]:
        scored.sort(key=lambda x: (-x[0], x[1].chunk_id))
        return [
            Hit(chunk=c, score=s, rank=i, document=self.docs[c.doc_id], via=via, scores={via: s})  # type: ignore[arg-type]
            for i, (s, c) in enumerate(scored[:k], start=1)
        ]

    def lexical_search(self, query: str, k: int, flt: SearchFilter | None = None) -> list[Hit]:
        self.calls.append(("lexical", k, flt))
        q = set(words(query))
        scored = []
        for c, _ in self.chunks.values():
            doc = self.docs[c.doc_id]
            overlap = len(q & set(words(c.embed_text(doc.title))))
            if overlap and self._allowed(doc, flt):
                scored.append((float(overlap), c))
        return self._ranked(scored, k, "lexical")

    def dense_search(self, vector: np.ndarray, k: int, flt: SearchFilter | None = None) -> list[Hit]:
        self.calls.append(("dense", k, flt))
        scored = [
            (float(v @ vector), c) for c, v in self.chunks.values() if self._allowed(self.docs[c.doc_id], flt)
        ]
        return self._ranked(scored, k, "dense")

    def get_chunks(self, chunk_ids: Sequence[str]) -> list[Chunk]:
        return [self.chunks[i][0] for i in chunk_ids if i in self.chunks]

    def stats(self) -> IndexStats:
        return IndexStats(len(self.docs), len(self.chunks), DIM, 0)

    def close(self) -> None:
        pass


CORPUS = {
    "leave.md": (
        "Leave policy",
        ["hr"],
        ["Annual leave is fifteen days per year.", "员工每年享有十五天带薪年假。"],
    ),
    "travel.md": ("Travel", ["finance"], ["Travel claims need invoices.", "差旅报销须附发票原件。"]),
    "security.md": (
        "Security",
        ["it"],
        ["Passwords rotate every ninety days.", "VPN 密码每九十天更换一次。"],
    ),
}


def fill(index: FakeIndex | object, embedder: HashEmbedder) -> None:
    for n, (source, (title, tags, texts)) in enumerate(CORPUS.items()):
        doc = DocumentRecord(
            doc_id=f"d{n}",
            source=source,
            content_hash=f"h{n}",
            format="md",
            title=title,
            size_bytes=100,
            n_chunks=len(texts),
            tags=tuple(tags),
            modified=datetime(2024, 1, 1 + n),
        )
        chunks = [
            Chunk(f"d{n}:{i}", f"d{n}", i, t, page_start=i + 1, page_end=i + 1) for i, t in enumerate(texts)
        ]
        index.upsert_document(doc, chunks, embedder.embed([c.embed_text(title) for c in chunks]))  # type: ignore[attr-defined]
    embedder.calls.clear()


@pytest.fixture
def setup() -> tuple[FakeIndex, HashEmbedder, Retriever]:
    index, emb = FakeIndex(), HashEmbedder()
    fill(index, emb)
    return index, emb, Retriever(index, emb)


def _hit(cid: str, score: float) -> Hit:
    doc = DocumentRecord(cid, cid, "h", "txt", cid, 1)
    return Hit(chunk=Chunk(cid, cid, 0, cid), score=score, rank=0, document=doc)


def test_rrf_sums_reciprocal_ranks_and_keeps_each_score() -> None:
    lexical = [_hit("a", 9.0), _hit("b", 5.0), _hit("c", 1.0)]
    dense = [_hit("d", 0.9), _hit("b", 0.8), _hit("a", 0.1)]
    fused = reciprocal_rank_fusion({"lexical": lexical, "dense": dense})
    # a: ranks 1+3 (1/61 + 1/63) edges out b: ranks 2+2 (2/62); both beat any single list
    assert [h.chunk.chunk_id for h in fused] == ["a", "b", "d", "c"]
    assert [h.rank for h in fused] == [1, 2, 3, 4]
    a, b, d, c = fused
    assert b.score == pytest.approx(2 / (RRF_K + 2))
    assert a.score == pytest.approx(1 / (RRF_K + 1) + 1 / (RRF_K + 3))
    assert b.scores == {"lexical": 5.0, "dense": 0.8, "rrf": b.score}
    assert d.scores == {"dense": 0.9, "rrf": d.score} and c.scores["lexical"] == 1.0
    assert all(h.via == "hybrid" for h in fused)
    tie = reciprocal_rank_fusion(
        {"lexical": [_hit("y", 1), _hit("x", 1)], "dense": [_hit("x", 1), _hit("y", 1)]}
    )
    assert [h.chunk.chunk_id for h in tie] == ["x", "y"]  # equal fused scores: chunk id breaks the tie


def test_hybrid_search_fuses_both_retrievers(setup: tuple[FakeIndex, HashEmbedder, Retriever]) -> None:
    index, emb, retriever = setup
    hits = retriever.search("how many days of annual leave", k=2)
    assert [h.rank for h in hits] == [1, 2]
    assert hits[0].chunk.chunk_id == "d0:0"
    assert set(hits[0].scores) == {"lexical", "dense", "rrf"}
    assert hits[0].document.source == "leave.md"
    assert emb.calls == [["how many days of annual leave"]]
    assert [(kind, k) for kind, k, _ in index.calls] == [("lexical", 20), ("dense", 20)]


def test_single_modes_call_one_retriever(setup: tuple[FakeIndex, HashEmbedder, Retriever]) -> None:
    index, emb, retriever = setup
    lex = retriever.search("差旅 发票", k=3, mode="lexical", candidates=7)
    assert emb.calls == [] and index.calls == [("lexical", 7, None)]
    assert lex[0].chunk.chunk_id == "d1:1" and lex[0].via == "lexical" and set(lex[0].scores) == {"lexical"}
    index.calls.clear()
    dense = retriever.search("passwords rotate", k=1, mode="dense")
    assert [c[0] for c in index.calls] == ["dense"]
    assert dense[0].chunk.chunk_id == "d2:0" and dense[0].via == "dense"
    assert dense[0].scores["dense"] == pytest.approx(dense[0].score)


def test_filters_reach_the_index(setup: tuple[FakeIndex, HashEmbedder, Retriever]) -> None:
    index, _, retriever = setup
    flt = SearchFilter(tags=("finance",))
    hits = retriever.search("annual leave days", k=5, flt=flt)
    assert {h.document.source for h in hits} == {"travel.md"}
    assert all(f is flt for _, _, f in index.calls)
    index.calls.clear()
    retriever.search("annual leave", flt=SearchFilter())
    assert all(f is None for _, _, f in index.calls)  # an empty filter is no filter


def test_bad_requests_are_refused_before_searching(setup: tuple[FakeIndex, HashEmbedder, Retriever]) -> None:
    index, _, retriever = setup
    with pytest.raises(InvalidInputError) as err:
        retriever.search("  ", k=0, mode="fuzzy", candidates=None)  # type: ignore[arg-type]
    assert {p.field for p in err.value.problems} == {"query", "k", "mode"}
    with pytest.raises(InvalidInputError):
        retriever.search("leave", k=5, candidates=2)
    assert index.calls == []


class ReverseReranker:
    """Scores hits by reversed chunk id, to prove the reranker's order wins."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def rerank(self, query: str, hits: Sequence[Hit], k: int | None = None) -> list[Hit]:
        self.seen.append(len(hits))
        order = sorted(hits, key=lambda h: h.chunk.chunk_id, reverse=True)[:k]
        return [
            replace(h, rank=i, via="rerank", score=-i, scores={**h.scores, "rerank": -i})
            for i, h in enumerate(order, 1)
        ]


def test_reranker_sees_the_candidate_pool_and_decides(
    setup: tuple[FakeIndex, HashEmbedder, Retriever],
) -> None:
    index, emb, _ = setup
    rr = ReverseReranker()
    hits = Retriever(index, emb, rr).search("leave travel passwords", k=2, candidates=6)
    assert rr.seen == [6]
    assert [h.chunk.chunk_id for h in hits] == ["d2:1", "d2:0"]
    assert all("rerank" in h.scores and "rrf" in h.scores for h in hits)


def test_on_the_real_embedded_index(tmp_path: Path) -> None:
    """The real index (SQLite FTS + vectors) behind the same Retriever: Chinese lexical recall, filters."""
    from onebox.rag.index import open_index

    emb = HashEmbedder()
    index = open_index(tmp_path / "kb", DIM)
    try:
        fill(index, emb)
        retriever = Retriever(index, emb)
        hits = retriever.search("带薪年假有几天", k=3)
        assert hits[0].chunk.chunk_id == "d0:1"
        assert "lexical" in hits[0].scores
        only = retriever.search("发票", k=5, flt=SearchFilter(sources=("security.md",)))
        assert {h.document.source for h in only} <= {"security.md"}
        assert retriever.search("VPN 密码", k=1, mode="lexical")[0].chunk.chunk_id == "d2:1"
    finally:
        index.close()


def test_dense_weight_follows_the_share_of_non_chinese_letters() -> None:
    from onebox.rag.retrieval import non_han_share

    assert non_han_share("How long must the reset button be held?") == 1.0
    assert non_han_share("固件 3.2.1 版本是哪天发布的？") == 0.0  # digits belong to neither script
    assert 0.0 < non_han_share("VX-900 营养液传感器售价多少？") < 0.5
    assert non_han_share("3.2.1") == 1.0
