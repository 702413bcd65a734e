"""Reranker plumbing with a tiny randomly initialised BERT cross-encoder (quality is not tested)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onebox.errors import ConfigError, ModelLoadError
from onebox.models.catalog import get_entry
from onebox.rag.rerank import Reranker, RerankerConfig
from onebox.rag.types import Chunk, DocumentRecord, Hit


def _tiny_model(path: Path, num_labels: int) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(get_entry("all-minilm-l6-v2").locate()), local_files_only=True)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_model(tmp_path_factory.mktemp("reranker"), 1)


def hits() -> list[Hit]:
    texts = [
        "Annual leave is fifteen days.",
        "员工每年享有十五天带薪年假。",
        "Travel claims need invoices.",
        "x " * 300,
    ]
    doc = DocumentRecord("d", "hr.md", "h", "md", "HR", 10)
    return [
        Hit(Chunk(f"d:{i}", "d", i, t), score=1.0 / (i + 1), rank=i + 1, document=doc, scores={"rrf": 0.5})
        for i, t in enumerate(texts)
    ]


def test_rerank_orders_by_score_and_keeps_earlier_scores(model_dir: Path) -> None:
    rr = Reranker.load(model_dir, RerankerConfig(batch_size=2))
    assert rr.max_tokens == 128  # the model's positions cap the configured 512
    given = hits()
    scores = rr.score("how long is annual leave", [h.chunk.embed_text("HR") for h in given])
    assert scores.shape == (4,) and ((scores > 0) & (scores < 1)).all()  # sigmoid
    out = rr.rerank("how long is annual leave", given)
    assert [h.score for h in out] == sorted(scores.tolist(), reverse=True)
    assert [h.rank for h in out] == [1, 2, 3, 4] and all(h.via == "rerank" for h in out)
    assert all(h.scores["rerank"] == h.score and h.scores["rrf"] == 0.5 for h in out)
    assert len(rr.rerank("q", given, k=2)) == 2
    assert rr.rerank("q", []) == []


def test_batching_does_not_change_scores(model_dir: Path) -> None:
    passages = [h.chunk.text for h in hits()]
    one = Reranker.load(model_dir, RerankerConfig(batch_size=1)).score("leave", passages)
    many = Reranker.load(model_dir, RerankerConfig(batch_size=16, score="logit")).score("leave", passages)
    np.testing.assert_allclose(one, 1 / (1 + np.exp(-many)), atol=1e-5)


def test_two_label_models_give_probabilities_and_bad_ones_fail(tmp_path: Path) -> None:
    two = Reranker.load(_tiny_model(tmp_path / "two", 2)).score("q", ["a", "b"])
    assert ((two > 0) & (two < 1)).all()
    with pytest.raises(ModelLoadError):
        Reranker.load(_tiny_model(tmp_path / "three", 3))
    with pytest.raises(ModelLoadError):
        Reranker.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError):
        Reranker.load(tmp_path / "empty")
    with pytest.raises(ConfigError):
        RerankerConfig(batch_size=0, score="softmax")  # type: ignore[arg-type]
