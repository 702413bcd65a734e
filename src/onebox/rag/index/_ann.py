"""The HNSW graph of an embedded index: a derived cache of the vectors in SQLite.

hnswlib was chosen over usearch by ``benchmarks/rag_index.py`` (build time and query latency at
equal recall on 2 cores; see the report there). The graph is saved as one folder (graph file +
``ann.json`` naming the SQLite generation it reflects and the graph's blake2b digest), swapped in
atomically. hnswlib does not validate what it loads (a damaged file can crash the process), so a
graph is loaded only after its digest matches; anything else means "rebuild from SQLite".
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

from onebox.fsutil import atomic_dir

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: called while a graph is rebuilt."""

FORMAT = 1
_GRAPH = "graph.hnsw"
_META = "ann.json"
M = 16
EF_CONSTRUCTION = 100
EF_SEARCH = 128
_BATCH = 10_000


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

    def save(self, folder: Path, generation: int, max_key: int, *, force: bool = False) -> bool:
        """Write graph + meta under a temporary name and swap the folder in (one lock per KB);
        a process never replaces a graph saved at a later generation by another one (unless
        ``force``: the saved one was found unusable)."""
        with _locked(folder.parent / f".{folder.name}.lock"):
            try:
                if not force and json.loads((folder / _META).read_text())["generation"] >= generation:
                    return False
            except (OSError, ValueError, KeyError, TypeError):
                pass
            self._write(folder, generation, max_key)
        return True

    def _write(self, folder: Path, generation: int, max_key: int) -> None:
        with atomic_dir(folder) as tmp:
            self._ix.save_index(str(tmp / _GRAPH))
            meta = AnnMeta(generation, self.dim, self.count, max_key, _digest(tmp / _GRAPH))
            (tmp / _META).write_text(json.dumps(meta.__dict__))
            for f in (tmp / _GRAPH, tmp / _META):
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())

    @classmethod
    def load(cls, folder: Path, dim: int) -> tuple[AnnGraph, AnnMeta] | None:
        """The saved graph, or None when it is missing, for another dimension, or damaged."""
        import hnswlib

        try:
            raw = json.loads((folder / _META).read_text())
            meta = AnnMeta(**raw)
            if meta.dim != dim or _digest(folder / _GRAPH) != meta.digest:
                return None
            g = cls.__new__(cls)
            g.dim = dim
            g._ix = hnswlib.Index(space="ip", dim=dim)
            g._ix.load_index(str(folder / _GRAPH), allow_replace_deleted=True)
            g._ix.set_ef(EF_SEARCH)
            g._ix.set_num_threads(max(1, os.cpu_count() or 1))
            g.count = meta.count
        except (OSError, ValueError, TypeError, RuntimeError):
            return None
        return g, meta


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
