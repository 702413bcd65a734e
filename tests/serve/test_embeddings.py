"""EmbeddingEngine with the built-in all-MiniLM-L6-v2: matches sentence-transformers' pooling,
unit vectors, sensible similarities in English and Chinese, over-long input refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from onebox.engine.embeddings import EmbeddingEngine
from onebox.errors import InvalidInputError, ModelLoadError
from onebox.models.catalog import get_entry


@pytest.fixture(scope="module")
def minilm() -> EmbeddingEngine:
    return EmbeddingEngine.from_model_dir(get_entry("all-minilm-l6-v2").locate(), threads=1)


def test_unit_vectors_and_similarity(minilm: EmbeddingEngine) -> None:
    texts = [
        "The cat sits on the mat.",
        "A kitten is resting on a rug.",
        "Stock markets fell sharply today.",
        "我喜欢吃苹果。",
        "我爱吃苹果。",
        "今天股市大幅下跌。",
    ]
    vecs, tokens = asyncio.run(minilm.embed(texts))
    assert vecs.shape == (6, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sim = vecs @ vecs.T
    assert sim[0, 1] > sim[0, 2] + 0.3  # cat/kitten closer than cat/stocks
    assert sim[3, 4] > sim[3, 5]  # apples closer to apples than to stocks
    assert tokens == sum(len(minilm.tokenizer(t)["input_ids"]) for t in texts)


def test_order_batching_and_token_inputs_agree(minilm: EmbeddingEngine) -> None:
    texts = ["short", "a much longer sentence about embeddings and batching " * 3, "中等长度的句子"]
    small = EmbeddingEngine(minilm.model, minilm.tokenizer, minilm.layout, batch_size=1)
    a, _ = minilm.embed_sync(texts)
    b, _ = small.embed_sync(texts)
    assert np.allclose(a, b, atol=1e-5)
    ids = [minilm.tokenizer(t)["input_ids"] for t in texts]
    c, n = minilm.embed_sync(ids)
    assert np.allclose(a, c, atol=1e-6) and n == sum(map(len, ids))


def test_too_long_and_bad_inputs_are_refused(minilm: EmbeddingEngine) -> None:
    with pytest.raises(InvalidInputError) as err:
        minilm.embed_sync(["ok", "word " * 400])
    assert err.value.problems[0].field == "input.1" and "256" in err.value.problems[0].reason
    with pytest.raises(InvalidInputError):
        minilm.embed_sync([[101, 10**7]])
    with pytest.raises(InvalidInputError):
        minilm.embed_sync([])


def test_plain_hf_encoder_dir_and_bad_dirs(minilm: EmbeddingEngine, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    minilm.model.save_pretrained(plain)
    minilm.tokenizer.save_pretrained(plain)
    enc = EmbeddingEngine.from_model_dir(plain)
    assert enc.layout.pooling == "mean" and enc.layout.normalize
    v, _ = enc.embed_sync(["The cat sits on the mat."])
    w, _ = minilm.embed_sync(["The cat sits on the mat."])
    assert np.allclose(v, w, atol=1e-5)
    with pytest.raises(ModelLoadError):
        EmbeddingEngine.from_model_dir(tmp_path / "missing")
