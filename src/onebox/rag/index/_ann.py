"""The HNSW graph of an embedded index: a derived cache of the vectors in SQLite.

hnswlib was chosen over usearch by ``benchmarks/rag_index.py`` (build time and query latency at
equal recall on 2 cores; see the report there). The graph is saved as one folder (graph file +
``ann.json`` naming the SQLite generation it reflects and the graph's blake2b digest), swapped in
atomically. hnswlib does not validate what it loads (a damaged file can crash the process), so a
graph is loaded only after its digest matches; anything else means "rebuild from SQLite".

With a :class:`~onebox.security.streams.Sealer` the graph (it holds every vector) is sealed with
AES-GCM; hnswlib only reads and writes paths, so the plaintext passes through a temporary file in
the process's private memory-backed folder, removed at once. ``ann.json`` stays plaintext: it
holds counts, a generation and a digest, no document content. A sealed graph that fails its tag
is treated like a damaged one: rebuilt from SQLite.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onebox.errors import TamperedError
from onebox.fsutil import atomic_dir
from onebox.security.streams import Sealer

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: called while a graph is rebuilt."""

FORMAT = 1
_GRAPH = "graph.hnsw"
_META = "ann.json"
M = 16
EF_CONSTRUCTION = 100
EF_SEARCH = 128
_BATCH = 10_000
SEALED_NAME = "index/ann/graph.hnsw"
"""What a sealed graph is bound to (its path in the KB folder): a graph file moved elsewhere fails."""


@dataclass(frozen=True)
class AnnMeta:
    generation: int
    dim: int
    count: int
    max_key: int
    digest: str


def available() -> bool:
    try:
        import hnswlib  # noqa: F401
    except ImportError:
        return False
    return True


class AnnGraph:
    """hnswlib over inner product (the vectors are unit, so it is cosine), labels = chunk row ids."""

    def __init__(self, dim: int, capacity: int) -> None:
        import hnswlib

        self.dim = dim
        self._ix = hnswlib.Index(space="ip", dim=dim)
        self._ix.init_index(
            max_elements=max(capacity, 1024), M=M, ef_construction=EF_CONSTRUCTION, allow_replace_deleted=True
        )
        self._ix.set_ef(EF_SEARCH)
        self._ix.set_num_threads(max(1, os.cpu_count() or 1))
        self.count = 0

    def add(self, keys: np.ndarray, vectors: np.ndarray, progress: Progress | None = None) -> None:
        total = len(keys)
        need = self._ix.element_count + total
        if need > self._ix.get_max_elements():
            self._ix.resize_index(max(need, int(self._ix.get_max_elements() * 1.5)))
        for start in range(0, total, _BATCH):
            end = min(start + _BATCH, total)
            self._ix.add_items(vectors[start:end], keys[start:end].astype(np.uint64), replace_deleted=True)
            if progress is not None:
                progress("ann", end, total)
        self.count += total

    def remove(self, keys: np.ndarray) -> None:
        for key in keys.tolist():
            with contextlib.suppress(RuntimeError):  # not in the graph, or already deleted
                self._ix.mark_deleted(int(key))
                self.count -= 1

    def search(self, query: np.ndarray, count: int) -> np.ndarray:
        """Up to ``count`` nearest labels; asks for no more than the graph holds (hnswlib raises)."""
        count = min(count, self.count)
        if count <= 0:
            return np.zeros(0, dtype=np.int64)
        self._ix.set_ef(max(EF_SEARCH, count))
        try:
            labels, _ = self._ix.knn_query(query, k=count)
        except RuntimeError:  # fewer reachable than asked (many tombstones): retry smaller
            labels, _ = self._ix.knn_query(query, k=max(1, count // 2))
        return labels[0].astype(np.int64)

    def get(self, keys: np.ndarray) -> np.ndarray:
        return np.asarray(self._ix.get_items(keys.astype(np.uint64).tolist()), dtype=np.float32)

    def save(
        self,
        folder: Path,
        generation: int,
        max_key: int,
        *,
        force: bool = False,
        sealer: Sealer | None = None,
    ) -> bool:
        """Write graph + meta under a temporary name and swap the folder in (one lock per KB);
        a process never replaces a graph saved at a later generation by another one (unless
        ``force``: the saved one was found unusable)."""
        with _locked(folder.parent / f".{folder.name}.lock"):
            try:
                if not force and json.loads((folder / _META).read_text())["generation"] >= generation:
                    return False
            except (OSError, ValueError, KeyError, TypeError):
                pass
            self._write(folder, generation, max_key, sealer)
        return True

    def _write(self, folder: Path, generation: int, max_key: int, sealer: Sealer | None) -> None:
        with atomic_dir(folder) as tmp:
            if sealer is None:
                self._ix.save_index(str(tmp / _GRAPH))
                digest = _digest(tmp / _GRAPH)
            else:
                with _private_file() as plain:
                    self._ix.save_index(str(plain))
                    digest = _digest(plain)
                    sealer.write(tmp / _GRAPH, _blocks(plain), SEALED_NAME)
            meta = AnnMeta(generation, self.dim, self.count, max_key, digest)
            (tmp / _META).write_text(json.dumps(meta.__dict__))
            for f in (tmp / _GRAPH, tmp / _META):
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())

    @classmethod
    def load(cls, folder: Path, dim: int, sealer: Sealer | None = None) -> tuple[AnnGraph, AnnMeta] | None:
        """The saved graph, or None when it is missing, for another dimension, or damaged (for a
        sealed one: fails authentication, or was written in plaintext)."""
        try:
            raw = json.loads((folder / _META).read_text())
            meta = AnnMeta(**raw)
            if meta.dim != dim:
                return None
            if sealer is None:
                return cls._load_file(folder / _GRAPH, meta), meta
            with _private_file() as plain:
                with open(folder / _GRAPH, "rb") as src, open(plain, "wb") as dst:
                    for block in sealer.open(src, SEALED_NAME):
                        dst.write(block)
                return cls._load_file(plain, meta), meta
        except (OSError, ValueError, TypeError, RuntimeError, TamperedError):
            return None

    @classmethod
    def _load_file(cls, path: Path, meta: AnnMeta) -> AnnGraph:
        import hnswlib

        if _digest(path) != meta.digest:
            raise ValueError("graph digest mismatch")
        g = cls.__new__(cls)
        g.dim = meta.dim
        g._ix = hnswlib.Index(space="ip", dim=meta.dim)
        g._ix.load_index(str(path), allow_replace_deleted=True)
        g._ix.set_ef(EF_SEARCH)
        g._ix.set_num_threads(max(1, os.cpu_count() or 1))
        g.count = meta.count
        return g


@contextlib.contextmanager
def _private_file() -> Iterator[Path]:
    """A fresh path in the private memory-backed folder, removed on exit whatever happens."""
    import tempfile

    from onebox.security.sealed import private_dir

    fd, name = tempfile.mkstemp(prefix="ann-", suffix=".hnsw", dir=private_dir())
    os.close(fd)
    try:
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            yield block


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
