"""The embedded index of an encrypted knowledge base: SQLCipher database, sealed graph cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from onebox.errors import IndexCorruptedError, KeyUnavailableError, TamperedError
from onebox.rag.index import _sqlite as sq
from onebox.rag.index.embedded import ANN_DIR, DB_FILE, EmbeddedIndex
from onebox.security.sealed import private_dir
from onebox.security.streams import Sealer
from tests.rag.index.conftest import DIM, make_doc, unit

pytest.importorskip("hnswlib")
pytest.importorskip("sqlcipher3")

ZH = "保密柜钥匙存放在三楼前台的蓝色抽屉里"
EN = "quarterly penguin audit in Reykjavik"


def _sealer(seed: int = 1) -> Sealer:
    return Sealer(bytes([seed]) * 32, "kb-test")


def _fill(ix: EmbeddedIndex, rng: np.random.Generator, docs: int = 30, per_doc: int = 10) -> np.ndarray:
    vecs = []
    for i in range(docs):
        v = unit(rng, per_doc)
        texts = [f"{ZH} {EN} d{i} chunk {j}" for j in range(per_doc)]
        ix.upsert_document(*make_doc(f"d{i}", texts), v)
        vecs.append(v)
    return np.concatenate(vecs)


def _leaks(root: Path, vecs: np.ndarray) -> list[str]:
    """Files under ``root`` holding the text, a SQLite header or a stored vector in plaintext."""
    needles = {
        "zh": ZH.encode(),
        "en": EN.encode(),
        "sqlite": sq.SQLITE_MAGIC,
        "vector": vecs[7].tobytes()[:32],
    }
    found = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            found += [f"{p.relative_to(root)}: {what}" for what, b in needles.items() if b in data]
    return found


def test_nothing_plaintext_on_disk_and_everything_works(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    plain = tmp_path / "plain"
    with EmbeddedIndex(plain, DIM, ann_threshold=100) as ix:
        vecs = _fill(ix, rng)
    assert {"zh", "en", "sqlite", "vector"} <= {f.split(": ")[1] for f in _leaks(plain, vecs)}  # not vacuous

    sealed = tmp_path / "sealed"
    with EmbeddedIndex(sealed, DIM, ann_threshold=100, sealer=_sealer()) as ix:
        vecs = _fill(ix, np.random.default_rng(0))
        assert ix._ann is not None  # 300 chunks: the graph is built, and saved sealed on close
        assert ix.lexical_search("蓝色抽屉", 1)[0].chunk.doc_id == "d0"
    assert (sealed / ANN_DIR / "graph.hnsw").is_file()
    assert _leaks(sealed, vecs) == []
    assert not list(private_dir().glob("ann-*"))  # the graph's plaintext passed through and left

    phases: list[str] = []
    with EmbeddedIndex(
        sealed, DIM, ann_threshold=100, sealer=_sealer(), progress=lambda p, *_: phases.append(p)
    ) as ix:
        assert "ann" not in phases  # the sealed graph was opened, not rebuilt
        hits = ix.dense_search(vecs[42], 3)
        assert hits[0].chunk.chunk_id == "d4:2" and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert [h.chunk.doc_id for h in ix.lexical_search("penguin d7", 1)] == ["d7"]


def test_wrong_or_missing_key_is_refused_clearly(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with EmbeddedIndex(tmp_path / "kb", DIM, sealer=_sealer()) as ix:
        ix.upsert_document(*make_doc("d0", ["hello"]), unit(np.random.default_rng(0), 1))
    with pytest.raises(KeyUnavailableError, match="cannot be decrypted"):
        EmbeddedIndex(tmp_path / "kb", DIM, sealer=_sealer(2))
    with pytest.raises(IndexCorruptedError, match="without its key"):
        EmbeddedIndex(tmp_path / "kb", DIM)
    assert "hmac" not in capfd.readouterr().err.lower()  # SQLCipher's own log stays quiet

    with EmbeddedIndex(tmp_path / "plain", DIM) as ix:
        ix.upsert_document(*make_doc("d0", ["hello"]), unit(np.random.default_rng(0), 1))
    with pytest.raises(TamperedError, match="plaintext"):  # an encrypted KB never falls back
        EmbeddedIndex(tmp_path / "plain", DIM, sealer=_sealer())


@pytest.mark.parametrize("damage", ["bit_flip", "plaintext_graph"])
def test_damaged_sealed_graph_is_rebuilt(tmp_path: Path, damage: str) -> None:
    with EmbeddedIndex(tmp_path, DIM, ann_threshold=100, sealer=_sealer()) as ix:
        vecs = _fill(ix, np.random.default_rng(1))
    graph = tmp_path / ANN_DIR / "graph.hnsw"
    if damage == "bit_flip":
        data = bytearray(graph.read_bytes())
        data[len(data) // 2] ^= 0x01
        graph.write_bytes(bytes(data))
    else:  # a plaintext graph of the same shape put in its place
        with EmbeddedIndex(tmp_path / "other", DIM, ann_threshold=100) as other:
            _fill(other, np.random.default_rng(1))
        graph.write_bytes((tmp_path / "other" / ANN_DIR / "graph.hnsw").read_bytes())
    phases: list[str] = []
    with EmbeddedIndex(
        tmp_path, DIM, ann_threshold=100, sealer=_sealer(), progress=lambda p, *_: phases.append(p)
    ) as ix:
        assert "ann" in phases
        assert ix.dense_search(vecs[5], 1)[0].chunk.chunk_id == "d0:5"


def test_plaintext_index_converts_with_sqlcipher_export(tmp_path: Path) -> None:
    with EmbeddedIndex(tmp_path, DIM) as ix:
        vecs = _fill(ix, np.random.default_rng(2), docs=5)
    db = tmp_path / DB_FILE
    assert sq.is_plaintext(db)
    key = _sealer()
    sq.encrypt_copy(db, tmp_path / "sealed.sqlite", sq.index_key(key.key))
    os.replace(tmp_path / "sealed.sqlite", db)
    assert not sq.is_plaintext(db)
    with EmbeddedIndex(tmp_path, DIM, sealer=key) as ix:
        assert ix.stats().chunks == 50
        assert [h.chunk.doc_id for h in ix.lexical_search("penguin d3", 1)] == ["d3"]  # FTS5 came along
        assert ix.dense_search(vecs[12], 1)[0].chunk.chunk_id == "d1:2"
