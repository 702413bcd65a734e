"""What only the embedded index has: the HNSW cache, crash safety, and readers beside a writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from onebox.errors import IndexCorruptedError
from onebox.rag.index.embedded import ANN_DIR, EmbeddedIndex
from tests.rag.index.conftest import DIM, make_doc, unit

pytest.importorskip("hnswlib")
ROOT = Path(__file__).resolve().parents[3]


def _fill(
    ix: EmbeddedIndex, rng: np.random.Generator, docs: int, per_doc: int, prefix: str = "d"
) -> np.ndarray:
    vecs = []
    for i in range(docs):
        v = unit(rng, per_doc)
        ix.upsert_document(*make_doc(f"{prefix}{i}", [f"{prefix}{i} chunk {j}" for j in range(per_doc)]), v)
        vecs.append(v)
    return np.concatenate(vecs)


def _recall(ix: EmbeddedIndex, vecs: np.ndarray, rng: np.random.Generator) -> float:
    got = 0
    for q in unit(rng, 20):
        truth = {f"d{i // 10}:{i % 10}" for i in np.argsort(-(vecs @ q))[:10]}
        got += len(truth & {h.chunk.chunk_id for h in ix.dense_search(q, 10)})
    return got / 200


def test_graph_above_threshold_matches_exact_and_is_saved(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with EmbeddedIndex(tmp_path, DIM, ann_threshold=300) as ix:
        vecs = _fill(ix, rng, 60, 10)
        assert ix._ann is not None  # 600 chunks > 300: the graph serves unfiltered queries
        assert _recall(ix, vecs, rng) >= 0.9
    assert (tmp_path / ANN_DIR / "ann.json").is_file()
    phases: list[str] = []
    with EmbeddedIndex(tmp_path, DIM, ann_threshold=300, progress=lambda p, d, t: phases.append(p)) as ix:
        assert "ann" not in phases  # loaded, not rebuilt
        assert _recall(ix, vecs, rng) >= 0.9


@pytest.mark.parametrize("damage", ["corrupt", "missing", "from_the_future"])
def test_damaged_or_stale_graph_is_rebuilt(tmp_path: Path, damage: str) -> None:
    rng = np.random.default_rng(1)
    with EmbeddedIndex(tmp_path, DIM, ann_threshold=300) as ix:
        vecs = _fill(ix, rng, 40, 10)
    graph = tmp_path / ANN_DIR / "graph.hnsw"
    if damage == "corrupt":
        data = bytearray(graph.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = os.urandom(64)
        graph.write_bytes(bytes(data))
    elif damage == "missing":
        graph.unlink()
    else:  # a graph saved at a later generation than the database (e.g. a restored backup)
        meta = tmp_path / ANN_DIR / "ann.json"
        meta.write_text(meta.read_text().replace('"generation": ', '"generation": 9'))
    phases: list[str] = []
    with EmbeddedIndex(tmp_path, DIM, ann_threshold=300, progress=lambda p, d, t: phases.append(p)) as ix:
        assert "ann" in phases
        assert _recall(ix, vecs, rng) >= 0.9
    phases.clear()
    with EmbeddedIndex(tmp_path, DIM, ann_threshold=300, progress=lambda p, d, t: phases.append(p)) as ix:
        assert "ann" not in phases  # the rebuilt graph replaced the bad one


def test_graph_catches_up_with_writes_it_missed(tmp_path: Path) -> None:
    """A graph saved before later upserts and deletes is caught up, not rebuilt."""
    rng = np.random.default_rng(2)
    with EmbeddedIndex(tmp_path, DIM, ann_threshold=300) as ix:
        _fill(ix, rng, 40, 10)
    other = EmbeddedIndex(tmp_path, DIM, ann_threshold=10**9)  # exact: never saves a graph
    new = _fill(other, rng, 5, 10, prefix="n")
    assert other.delete_document("d0")
    other.close()
    phases: list[str] = []
    with EmbeddedIndex(tmp_path, DIM, ann_threshold=300, progress=lambda p, d, t: phases.append(p)) as ix:
        assert "ann" not in phases and ix._ann.count == 440
        assert ix.dense_search(new[7], 1)[0].chunk.chunk_id == "n0:7"
        assert all(h.chunk.doc_id != "d0" for h in ix.dense_search(new[7], 50))


def test_selective_filter_on_the_graph_still_returns_k(tmp_path: Path) -> None:
    from onebox.rag.types import SearchFilter

    rng = np.random.default_rng(3)
    with EmbeddedIndex(tmp_path, DIM, ann_threshold=300, exact_filter_limit=50) as ix:
        _fill(ix, rng, 60, 10)
        q = unit(rng, 1)[0]
        few = SearchFilter(sources=("d1.txt", "d2.txt"))  # exact over 20 rows
        assert len(ix.dense_search(q, 15, few)) == 15
        broad = SearchFilter(sources=tuple(f"d{i}.txt" for i in range(0, 60, 3)))  # graph, oversampled
        hits = ix.dense_search(q, 30, broad)
        assert len(hits) == 30 and all(int(h.chunk.doc_id[1:]) % 3 == 0 for h in hits)


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from onebox.rag.index import _records, embedded
    from tests.rag.index.conftest import DIM, make_doc, unit

    path, marker = Path(sys.argv[1]), Path(sys.argv[2])
    ix = embedded.EmbeddedIndex(path, DIM, ann_threshold=300)
    rng = np.random.default_rng(7)
    # Committed but never saved to the graph (the child dies before close):
    ix.upsert_document(*make_doc("late", ["late chunk"]), unit(rng, 1))
    row = _records.chunk_row
    def slow_row(c):
        if c.ordinal == 3000:  # deep inside the big upsert's transaction
            marker.write_text("in transaction")
            time.sleep(60)
        return row(c)
    embedded._records.chunk_row = slow_row
    texts = [f"big chunk {i}" for i in range(5000)]
    ix.upsert_document(*make_doc("d0", texts), unit(rng, 5000))  # replaces d0
    """
)


def test_sigkill_mid_upsert_keeps_previous_state(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    kb = tmp_path / "kb"
    with EmbeddedIndex(kb, DIM, ann_threshold=300) as ix:
        vecs = _fill(ix, rng, 40, 10)
        before = ix.documents()
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(kb), str(marker)], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "child exited before reaching the upsert"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    with EmbeddedIndex(kb, DIM, ann_threshold=300) as ix:
        docs = ix.documents()
        assert [d for d in docs if d.doc_id != "late"] == before  # d0 is its old self
        assert ix.get_document("d0").n_chunks == 10 and ix.stats().chunks == 401
        assert [h.chunk.chunk_id for h in ix.lexical_search("big", 5)] == []
        assert ix.dense_search(vecs[3], 1)[0].chunk.chunk_id == "d0:3"
        assert ix._ann is not None and ix._ann.count == 401  # graph caught up with "late"
        late = ix.get_chunks(["late:0"])
        assert late and ix.lexical_search("late", 1)[0].chunk == late[0]


def test_readers_see_whole_documents_while_a_writer_ingests(tmp_path: Path) -> None:
    """Thread readers in this process and a writer in another: every document is all or nothing."""
    rng = np.random.default_rng(5)
    kb = tmp_path / "kb"
    with EmbeddedIndex(kb, DIM, ann_threshold=200) as ix:
        _fill(ix, rng, 10, 10)
    writer = textwrap.dedent(
        """
        import sys
        import numpy as np
        from onebox.rag.index.embedded import EmbeddedIndex
        from tests.rag.index.conftest import DIM, make_doc, unit
        rng = np.random.default_rng(9)
        with EmbeddedIndex(sys.argv[1], DIM, ann_threshold=200) as ix:
            for round in range(30):
                for i in range(10):
                    texts = [f"w{i} round{round} 第{round}轮" for _ in range(8 + round % 3)]
                    ix.upsert_document(*make_doc(f"w{i}", texts), unit(rng, len(texts)))
                ix.delete_document(f"w{round % 10}")
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    child = subprocess.Popen([sys.executable, "-c", writer, str(kb)], env=env, cwd=ROOT)
    errors: list[BaseException] = []
    ix = EmbeddedIndex(kb, DIM, ann_threshold=200)

    def read() -> None:
        r = np.random.default_rng(threading.get_ident() % 1000)
        try:
            while child.poll() is None:
                for h in ix.dense_search(unit(r, 1)[0], 20):
                    assert h.chunk.doc_id == h.document.doc_id
                hits = ix.lexical_search("w3", 50)
                docs = {h.document.doc_id for h in hits}
                assert docs <= {"w3"}
                if hits:  # all chunks of one version, never a mix of two
                    assert len({h.chunk.text for h in hits}) == 1
                    assert len(hits) == hits[0].document.n_chunks
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    assert child.wait(timeout=120) == 0
    for t in threads:
        t.join()
    assert not errors, errors[0]
    final = {d.doc_id for d in ix.documents()}
    assert len(ix.dense_search(unit(rng, 1)[0], 1000)) == ix.stats().chunks
    assert final == {f"d{i}" for i in range(10)} | {f"w{i}" for i in range(10)} - {"w9"}
    ix.close()


def test_not_an_index_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "index.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(IndexCorruptedError):
        EmbeddedIndex(tmp_path, DIM)


def test_other_dimension_is_refused(tmp_path: Path) -> None:
    EmbeddedIndex(tmp_path, DIM).close()
    with pytest.raises(IndexCorruptedError, match="dimensional"):
        EmbeddedIndex(tmp_path, DIM * 2)
