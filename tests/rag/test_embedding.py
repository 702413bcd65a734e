"""The Embedder on the real built-in all-MiniLM-L6-v2 (loaded once per session in conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

from onebox.errors import ConfigError, InvalidInputError, ModelLoadError
from onebox.rag.answer import DEFAULT_RULE
from onebox.rag.chunking import DEFAULT_MAX_TOKENS, chunk_elements
from onebox.rag.embedding import Embedder, EmbedderConfig
from onebox.rag.types import Element

DOCS = [
    "Employees get fifteen days of paid annual leave and must apply two weeks in advance.",
    "The server room must be kept between 18 and 27 degrees Celsius.",
    "Travel expense claims require original invoices and an itinerary.",
    "New hires complete security training during their first week.",
]
RELATED = [
    "How many vacation days do staff have per year?",
    "What temperature should the data center be?",
    "What do I need to submit to get reimbursed for a business trip?",
    "When do new employees take the security course?",
]
UNRELATED = [
    "What is the capital of France?",
    "How do I bake sourdough bread?",
    "Who won the 2018 World Cup?",
]


def test_shape_limits_and_token_counts(minilm_embedder: Embedder) -> None:
    emb = minilm_embedder
    assert emb.dim == 384
    assert emb.max_tokens == 254  # 256 word pieces less [CLS] and [SEP]
    assert emb.count_tokens("Hello world") == 2
    assert emb.count_tokens("知识库") == 3  # one piece (or [UNK]) per Chinese character
    assert emb.embed([]).shape == (0, 384)


def test_unit_vectors_in_input_order_whatever_the_batching(minilm_embedder: Embedder) -> None:
    texts = [
        "短",
        "A much longer English sentence about annual leave policies. " * 3,
        "中等长度的中文句子。",
        "mid",
    ]
    calls: list[tuple[int, int]] = []
    vecs = minilm_embedder.embed(texts, 2, progress=lambda d, t: calls.append((d, t)))
    assert vecs.dtype == np.float32 and vecs.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert calls == [(2, 4), (4, 4)]
    one_by_one = np.stack([minilm_embedder.embed([t])[0] for t in texts])
    np.testing.assert_allclose(vecs, one_by_one, atol=1e-5)


def test_paraphrases_beat_unrelated_texts(minilm_embedder: Embedder) -> None:
    """Also the sample behind RelevanceRule.min_dense (answer.py): related above it, unrelated below."""
    d, r, u = (minilm_embedder.embed(x) for x in (DOCS, RELATED, UNRELATED))
    sim = r @ d.T
    assert (sim.argmax(axis=1) == np.arange(len(DOCS))).all()
    assert np.diag(sim).min() >= DEFAULT_RULE.min_dense
    assert (u @ d.T).max() < DEFAULT_RULE.min_dense
    zh = minilm_embedder.embed(
        ["公司 VPN 的密码每 90 天必须更换一次。", "VPN 密码每 90 天更换。", "食堂中午十二点开饭。"]
    )
    assert zh[0] @ zh[1] > zh[0] @ zh[2]  # shared digits and Latin words still carry Chinese text


def test_long_texts_are_truncated_or_refused(minilm_embedder: Embedder) -> None:
    long = "word " * 1000
    vec = minilm_embedder.embed([long])
    assert vec.shape == (1, 384)
    with pytest.raises(InvalidInputError):
        minilm_embedder.embed([long], truncate=False)
    with pytest.raises(InvalidInputError):
        minilm_embedder.embed("not a list")  # type: ignore[arg-type]


def test_bf16_autocast_keeps_the_vectors(minilm_embedder: Embedder) -> None:
    texts = [
        *DOCS,
        "员工每年享有十五天带薪年假，需提前两周申请。",
        "服务器机房温度应保持在十八至二十七摄氏度之间。",
    ]
    bf16 = Embedder(minilm_embedder.engine, EmbedderConfig(dtype="bfloat16"))
    assert bf16.bf16
    cos = (minilm_embedder.embed(texts) * bf16.embed(texts)).sum(axis=1)
    assert cos.min() > 0.99


def test_default_chunks_fit_the_encoder(minilm_embedder: Embedder) -> None:
    """Chunks budgeted with the real tokenizer are accepted whole (no truncation) by the encoder."""
    zh = "".join(f"第{i}条：员工应当遵守公司的信息安全制度，不得泄露客户数据。" for i in range(60))
    en = " ".join(
        f"Rule {i}: employees must follow the information security policy at all times." for i in range(60)
    )
    rows = (("项目", "Owner", "Budget"), *((f"项目{i}", f"Team {i}", f"{i * 1000}") for i in range(80)))
    els = [
        Element("paragraph", zh, heading_path=("信息安全", "数据保护"), page=1),
        Element("paragraph", en, heading_path=("Security",), page=2),
        Element("table", "", heading_path=("Budget",), rows=rows, header_rows=1, page=3),
    ]
    title = "员工手册 Employee Handbook 2024"
    chunks = chunk_elements("d", els, count_tokens=minilm_embedder.count_tokens, title=title)
    assert minilm_embedder.max_tokens >= DEFAULT_MAX_TOKENS
    assert len(chunks) > 5
    texts = [c.embed_text(title) for c in chunks]
    assert all(
        minilm_embedder.count_tokens(t) == c.n_tokens <= DEFAULT_MAX_TOKENS
        for t, c in zip(texts, chunks, strict=True)
    )
    assert minilm_embedder.embed(texts, truncate=False).shape == (len(chunks), 384)


def test_bad_settings_and_directories(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as err:
        EmbedderConfig(batch_size=0, dtype="fp8", threads=0)  # type: ignore[arg-type]
    assert {p.field for p in err.value.problems} == {"batch_size", "dtype", "threads"}
    with pytest.raises(ModelLoadError):
        Embedder.load(tmp_path / "missing")
