"""All vectors of an embedded index in memory, in chunk-id order: exact search and filtering.

Exact search is the ground truth the ANN graph approximates; it also serves small knowledge bases
and selective filters, where scanning a few thousand rows beats walking a graph and is never wrong.
Rows are only appended (chunk ids grow) and removed by tombstone, so a delete never copies the
matrix; dead rows are compacted away once they are a quarter of it.
"""

from __future__ import annotations

import numpy as np


class VectorTable:
    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._keys = np.zeros(0, dtype=np.int64)
        self._docs = np.zeros(0, dtype=np.int64)
        self._mat = np.zeros((0, dim), dtype=np.float32)
        self._alive = np.zeros(0, dtype=bool)
        self._n = 0
        self.dead = 0

    def __len__(self) -> int:
        return self._n - self.dead

    @property
    def max_key(self) -> int:
        return int(self._keys[self._n - 1]) if self._n else 0

    def append(self, keys: np.ndarray, docs: np.ndarray, vectors: np.ndarray) -> None:
        """Add rows whose keys are all larger than :attr:`max_key` (sorted order is kept)."""
        m = len(keys)
        if m == 0:
            return
        if self._n + m > len(self._keys):
            cap = max(self._n + m, 2 * len(self._keys), 1024)
            self._keys = _grow(self._keys, cap)
            self._docs = _grow(self._docs, cap)
            self._alive = _grow(self._alive, cap)
            self._mat = _grow(self._mat, cap)
        sl = slice(self._n, self._n + m)
        self._keys[sl], self._docs[sl], self._mat[sl], self._alive[sl] = keys, docs, vectors, True
        self._n += m

    def positions(self, keys: np.ndarray) -> np.ndarray:
        """Row positions of the live rows among ``keys`` (unknown or dead keys dropped)."""
        keys = np.asarray(keys, dtype=np.int64)
        pos = np.searchsorted(self._keys[: self._n], keys)
        inside = pos < self._n
        pos, keys = pos[inside], keys[inside]
        pos = pos[self._keys[pos] == keys]
        return pos[self._alive[pos]]

    def remove(self, keys: np.ndarray) -> int:
        pos = self.positions(keys)
        self._alive[pos] = False
        self.dead += len(pos)
        if self.dead > 1024 and self.dead * 4 > self._n:
            self._compact()
        return len(pos)

    def _compact(self) -> None:
        live = self._alive[: self._n]
        self._keys = self._keys[: self._n][live].copy()
        self._docs = self._docs[: self._n][live].copy()
        self._mat = self._mat[: self._n][live].copy()
        self._n = len(self._keys)
        self._alive = np.ones(self._n, dtype=bool)
        self.dead = 0

    def live_keys(self) -> np.ndarray:
        return self._keys[: self._n][self._alive[: self._n]]

    def live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        live = self._alive[: self._n]
        return self._keys[: self._n][live], self._mat[: self._n][live]

    def vectors(self, pos: np.ndarray) -> np.ndarray:
        return self._mat[pos]

    def keys_at(self, pos: np.ndarray) -> np.ndarray:
        return self._keys[pos]

    def mask_for_docs(self, doc_nos: np.ndarray) -> np.ndarray:
        """Positions of the live rows that belong to any of ``doc_nos``."""
        sel = np.isin(self._docs[: self._n], doc_nos) & self._alive[: self._n]
        return np.flatnonzero(sel)

    def in_docs(self, pos: np.ndarray, doc_nos: np.ndarray) -> np.ndarray:
        return np.isin(self._docs[pos], doc_nos)

    def search(
        self, query: np.ndarray, k: int, pos: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` (keys, cosine scores) over live rows, or over the rows at ``pos``."""
        if pos is None:
            scores = self._mat[: self._n] @ query
            scores[~self._alive[: self._n]] = -np.inf
            cand = np.arange(self._n)
            k = min(k, len(self))
        else:
            scores = self._mat[pos] @ query
            cand = pos
            k = min(k, len(pos))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return self._keys[cand[top]], scores[top]

    def rescore(self, pos: np.ndarray, query: np.ndarray) -> np.ndarray:
        return self._mat[pos] @ query


def _grow(a: np.ndarray, cap: int) -> np.ndarray:
    out = np.zeros((cap, *a.shape[1:]), dtype=a.dtype)
    out[: len(a)] = a
    return out
