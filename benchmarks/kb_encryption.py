"""What encrypting a knowledge base at rest costs: plaintext vs encrypted, side by side (medians).

    .venv/bin/python benchmarks/kb_encryption.py [--docs 1000] [--chunks 10] [--queries 200] [--ingest]

Index rows (random 384-dim vectors, text of mixed English words and Chinese characters):
  upsert      writing every document, one transaction each (SQLite vs SQLCipher pages)
  reopen      opening the index and loading every vector into memory (a cold process)
  lexical     one BM25 query (FTS5 over encrypted pages)
  dense       one exact dense query plus reading its hits
  graph save  writing the HNSW cache (plain file vs sealed through private memory)
  graph load  loading it back (digest-checked, and for the sealed one decrypted first)
With ``--ingest``: the demo document set ingested with the built-in MiniLM (best of 3), sources
read as files vs decrypted in memory (parsing and embedding dominate both).
Plaintext and encrypted calls alternate, so load from other processes falls on both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from onebox.rag.index._ann import AnnGraph
from onebox.rag.index.embedded import EmbeddedIndex
from onebox.rag.types import Chunk, DocumentRecord
from onebox.security.streams import Sealer

DIM = 384
WORDS = [
    "policy",
    "audit",
    "travel",
    "hotel",
    "refund",
    "budget",
    "contract",
    "warranty",
    "invoice",
    "server",
    "backup",
]
HAN = "差旅住宿报销预算合同保修发票服务器备份制度审计"


def _docs(n: int, per: int, rng: np.random.Generator) -> list[tuple[DocumentRecord, list[Chunk], np.ndarray]]:
    out = []
    for i in range(n):
        doc_id = f"d{i}"
        chunks = []
        for j in range(per):
            words = " ".join(rng.choice(WORDS, 40))
            han = "".join(rng.choice(list(HAN), 30))
            chunks.append(Chunk(f"{doc_id}:{j}", doc_id, j, f"{words} {han} doc{i}", n_tokens=80))
        vecs = rng.standard_normal((per, DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        record = DocumentRecord(doc_id, f"{doc_id}.txt", "0" * 64, "txt", doc_id, 1000, per)
        out.append((record, chunks, vecs))
    return out


def _paired(fns: list[Callable[[int], object]], n: int) -> list[float]:
    """Median time of each function, called alternately per query so that noise from a shared
    machine (other processes, thread pools waking up) falls on both sides alike."""
    for i in range(min(n, 20)):  # warm caches and thread pools before timing
        for fn in fns:
            fn(i)
    runs: list[list[float]] = [[] for _ in fns]
    for i in range(n):
        for fn, out in zip(fns, runs, strict=True):
            t = time.perf_counter()
            fn(i)
            out.append(time.perf_counter() - t)
    return [statistics.median(r) for r in runs]


def bench_index(root: Path, docs: list, queries: int, sealer: Sealer) -> dict[str, tuple[float, float]]:
    """(plaintext, encrypted) for each row."""
    rng = np.random.default_rng(1)
    sealers: list[Sealer | None] = [None, sealer]
    folders = [root / "plain", root / "sealed"]
    res: dict[str, list[float]] = {}
    indexes = [EmbeddedIndex(f, DIM, sealer=s) for f, s in zip(folders, sealers, strict=True)]
    spent = [0.0, 0.0]
    for record, chunks, vecs in docs:  # alternately, so that noise falls on both sides alike
        for n, ix in enumerate(indexes):
            t = time.perf_counter()
            ix.upsert_document(record, chunks, vecs)
            spent[n] += time.perf_counter() - t
    res["upsert"] = spent
    for ix in indexes:
        ix.close()

    def reopen(n: int) -> Callable[[int], object]:
        return lambda _i: EmbeddedIndex(folders[n], DIM, sealer=sealers[n]).close()

    res["reopen"] = _paired([reopen(0), reopen(1)], 5)
    indexes = [EmbeddedIndex(f, DIM, sealer=s) for f, s in zip(folders, sealers, strict=True)]
    qs = rng.standard_normal((queries, DIM)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)

    def lexical(ix: EmbeddedIndex) -> Callable[[int], object]:
        return lambda i: ix.lexical_search(f"{WORDS[i % len(WORDS)]} 报销 doc{i}", 10)

    def dense(ix: EmbeddedIndex) -> Callable[[int], object]:
        return lambda i: ix.dense_search(qs[i], 10)

    res["lexical"] = _paired([lexical(ix) for ix in indexes], queries)
    res["dense"] = _paired([dense(ix) for ix in indexes], queries)
    keys, vecs = indexes[0]._table.live_vectors()  # type: ignore[union-attr]
    for ix in indexes:
        ix.close()
    graph = AnnGraph(DIM, len(keys))
    graph.add(keys, vecs)
    saves = [lambda i, f=f, s=s: graph.save(f / "ann", i + 1, int(keys.max()), force=True, sealer=s)
             for f, s in zip(folders, sealers, strict=True)]  # fmt: skip
    res["graph save"] = _paired(saves, 5)  # type: ignore[arg-type]
    loads = [
        lambda i, f=f, s=s: AnnGraph.load(f / "ann", DIM, s) for f, s in zip(folders, sealers, strict=True)
    ]
    res["graph load"] = _paired(loads, 5)  # type: ignore[arg-type]
    res["MiB on disk"] = [sum(p.stat().st_size for p in f.rglob("*") if p.is_file()) / 2**20 for f in folders]
    return {k: (v[0], v[1]) for k, v in res.items()}


def bench_ingest(root: Path, sealer: Sealer | None) -> float:
    from onebox.models.catalog import get_entry
    from onebox.rag.demo.make_docs import write_demo_docs
    from onebox.rag.embedding import Embedder
    from onebox.rag.ingest import ParseOptions, ingest_folder

    root.mkdir(exist_ok=True)
    src = root / "demo"
    if not src.exists():
        write_demo_docs(src)
    sources = root / ("sources-sealed" if sealer else "sources-plain")
    sources.mkdir()
    for p in src.iterdir():
        if sealer:
            sealer.write(sources / p.name, p.read_bytes(), f"sources/{p.name}")
        else:
            (sources / p.name).write_bytes(p.read_bytes())
    emb = Embedder.load(get_entry("all-minilm-l6-v2").locate())
    read = (lambda s, p: sealer.read(p, f"sources/{s}")) if sealer else None
    with EmbeddedIndex(root / ("ix-sealed" if sealer else "ix-plain"), emb.dim, sealer=sealer) as ix:
        t = time.perf_counter()
        report = ingest_folder(ix, emb, sources, parse_options=ParseOptions(ocr=False), read=read)
        took = time.perf_counter() - t
    assert not [r for r in report.failed if r.error_code != "empty_input"], report.failed
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--ingest", action="store_true")
    args = ap.parse_args()
    docs = _docs(args.docs, args.chunks, np.random.default_rng(0))
    sealer = Sealer(os.urandom(32), "kb-bench")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = bench_index(root, docs, args.queries, sealer)
        print(f"{args.docs} documents x {args.chunks} chunks, {DIM}-dim vectors; {os.cpu_count()} CPUs")
        print(f"{'':12} {'plaintext':>12} {'encrypted':>12} {'ratio':>7}")
        for k, (plain, sealed) in rows.items():
            unit = "" if k.startswith("MiB") else (" ms" if plain < 1 else " s")
            scale = 1000 if unit == " ms" else 1
            print(
                f"{k:12} {plain * scale:>9.2f}{unit:3} {sealed * scale:>9.2f}{unit:3} {sealed / plain:>6.2f}x"
            )
        if args.ingest:
            bench_ingest(root / "warm-up", None)  # the first run pays for first-call costs
            runs = [
                (bench_ingest(root / f"p{i}", None), bench_ingest(root / f"s{i}", sealer)) for i in range(3)
            ]
            p, s = min(r[0] for r in runs), min(r[1] for r in runs)
            print(f"{'ingest demo':12} {p:>9.2f} s  {s:>9.2f} s  {s / p:>6.2f}x   (best of 3)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
