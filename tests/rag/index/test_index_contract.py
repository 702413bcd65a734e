"""The ChunkIndex contract, run against the embedded index and PostgreSQL + pgvector alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from onebox.errors import ConflictError, InvalidInputError
from onebox.rag.types import SearchFilter
from tests.rag.index.conftest import DIM, OpenIndex, make_doc, unit

ZH = [
    "锂电池储能系统的额定容量为二百千瓦时，支持并网运行。",
    "本公司的报销制度规定，差旅费用须在出差结束后十五日内提交。",
    "知识库检索结合了关键词匹配与向量相似度。",
]
EN = [
    "The VX-200 inverter supports grid-tied operation up to 200 kW.",
    "Employees must submit travel expenses within fifteen days.",
    "Quarterly revenue grew by twelve percent in 2024.",
]


def _chunk_ids(hits: list) -> list[str]:
    return [h.chunk.chunk_id for h in hits]


def test_upsert_search_replace_delete_stay_consistent(open_kb: OpenIndex) -> None:
    rng = np.random.default_rng(0)
    ix = open_kb()
    doc, chunks = make_doc("zh", ZH, title="储能手册")
    vec = unit(rng, len(chunks))
    ix.upsert_document(doc, chunks, vec)
    ix.upsert_document(*make_doc("en", EN), unit(rng, 3))

    hits = ix.dense_search(vec[1], 2)
    assert hits[0].chunk.chunk_id == "zh:1" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].rank == 1 and hits[0].via == "dense" and hits[0].document.title == "储能手册"
    assert ix.get_document("zh").n_chunks == 3

    # Replace with fewer chunks: old chunks leave both sides at once.
    doc2, chunks2 = make_doc("zh", ["新版本：储能系统改为液冷散热。"], title="储能手册 v2")
    new_vec = unit(rng, 1)
    ix.upsert_document(doc2, chunks2, new_vec)
    assert ix.get_chunks(["zh:0", "zh:1", "zh:2"]) == chunks2[:1]
    assert "zh:1" not in _chunk_ids(ix.dense_search(vec[1], 10))
    assert _chunk_ids(ix.lexical_search("报销制度", 10)) == []
    assert _chunk_ids(ix.lexical_search("液冷", 10)) == ["zh:0"]
    assert ix.dense_search(new_vec[0], 1)[0].document.title == "储能手册 v2"

    assert ix.delete_document("zh") is True
    assert ix.delete_document("zh") is False
    assert ix.get_document("zh") is None
    assert _chunk_ids(ix.lexical_search("液冷", 10)) == []
    assert all(h.chunk.doc_id == "en" for h in ix.dense_search(new_vec[0], 10))
    st = ix.stats()
    assert (st.documents, st.chunks, st.dim) == (1, 3, DIM) and st.bytes_on_disk > 0


def test_lexical_finds_chinese_english_and_model_numbers(open_kb: OpenIndex) -> None:
    rng = np.random.default_rng(1)
    ix = open_kb()
    ix.upsert_document(*make_doc("zh", ZH), unit(rng, 3))
    ix.upsert_document(*make_doc("en", EN), unit(rng, 3))

    assert _chunk_ids(ix.lexical_search("差旅报销的期限", 1)) == ["zh:1"]
    assert _chunk_ids(ix.lexical_search("知识库", 1)) == ["zh:2"]
    assert _chunk_ids(ix.lexical_search("travel expenses", 1)) == ["en:1"]
    for q in ("vx200", "VX-200 inverter", "ＶＸ－２００"):
        assert _chunk_ids(ix.lexical_search(q, 1)) == ["en:0"], q
    hits = ix.lexical_search("储能 revenue", 5)
    assert {"zh:0", "en:2"} <= set(_chunk_ids(hits))
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert all(h.via == "lexical" and h.score > 0 for h in hits)
    assert hits == sorted(hits, key=lambda h: -h.score)
    assert ix.lexical_search("的 了 the", 5) == []  # only stopwords: nothing to match
    assert ix.lexical_search("", 5) == []


def test_filters_apply_before_top_k(open_kb: OpenIndex) -> None:
    rng = np.random.default_rng(2)
    ix = open_kb()
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(40):
        tags = ("finance",) if i % 10 == 0 else ("misc",)
        texts = [f"report {i} part {j} 季度报告" for j in range(5)]
        ix.upsert_document(
            *make_doc(f"d{i}", texts, tags=tags, modified=t0 + timedelta(days=i)), unit(rng, 5)
        )
    q = unit(rng, 1)[0]
    only = SearchFilter(tags=("finance",))  # 4 of 40 documents, 20 of 200 chunks
    for hits in (ix.dense_search(q, 15, only), ix.lexical_search("季度报告", 15, only)):
        assert len(hits) == 15
        assert all(h.document.tags == ("finance",) for h in hits)
    srcs = SearchFilter(sources=("d3.txt", "d7.txt"))
    assert {h.chunk.doc_id for h in ix.dense_search(q, 100, srcs)} == {"d3", "d7"}
    assert len(ix.lexical_search("report", 100, srcs)) == 10
    window = SearchFilter(modified_from=t0 + timedelta(days=5), modified_to=t0 + timedelta(days=6))
    assert {h.chunk.doc_id for h in ix.dense_search(q, 50, window)} == {"d5", "d6"}
    naive = SearchFilter(modified_to=datetime(2024, 1, 2))  # naive = UTC on both sides
    assert {h.chunk.doc_id for h in ix.lexical_search("report", 50, naive)} == {"d0", "d1"}
    assert ix.dense_search(q, 5, SearchFilter(tags=("nope",))) == []
    both = SearchFilter(tags=("finance",), sources=("d10.txt", "d11.txt"))
    assert {h.chunk.doc_id for h in ix.dense_search(q, 50, both)} == {"d10"}


def test_reopen_keeps_documents_exactly(open_kb: OpenIndex) -> None:
    rng = np.random.default_rng(3)
    ix = open_kb()
    modified = datetime(2024, 5, 6, 7, 8, 9)
    doc, chunks = make_doc("zh", ZH, tags=("合同", "2024"), modified=modified, title="标题")
    vec = unit(rng, 3)
    ix.upsert_document(doc, chunks, vec)
    first = ix.get_document("zh")
    ix.close()
    ix = open_kb()
    got = ix.get_document("zh")
    assert got == first and got.modified == modified and got.tags == ("合同", "2024") and got.added
    assert ix.documents() == [got]
    assert ix.get_chunks(["zh:2", "missing", "zh:0"]) == [chunks[2], chunks[0]]
    assert ix.dense_search(vec[2], 1)[0].chunk == chunks[2]
    # Re-upserting keeps when the document was first added.
    ix.upsert_document(doc, chunks, vec)
    assert ix.get_document("zh").added == got.added


def test_bad_input_changes_nothing(open_kb: OpenIndex) -> None:
    rng = np.random.default_rng(4)
    ix = open_kb()
    doc, chunks = make_doc("a", EN)
    ix.upsert_document(doc, chunks, unit(rng, 3))
    with pytest.raises(InvalidInputError, match="shape"):
        ix.upsert_document(*make_doc("b", ZH), unit(rng, 2))
    with pytest.raises(InvalidInputError, match="zero"):
        ix.upsert_document(*make_doc("b", ZH), np.zeros((3, DIM)))
    with pytest.raises(ConflictError):  # another document already has this source
        ix.upsert_document(*make_doc("c", ZH, source="a.txt"), unit(rng, 3))
    with pytest.raises(InvalidInputError):
        ix.dense_search(np.ones(DIM + 1), 3)
    assert [d.doc_id for d in ix.documents()] == ["a"]
    assert ix.stats().chunks == 3
    ix.upsert_document(*make_doc("empty", []), np.zeros((0, DIM)))
    assert ix.get_document("empty").n_chunks == 0
