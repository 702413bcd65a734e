"""Hybrid retrieval: lexical (BM25) and dense (cosine) candidates fused by reciprocal rank fusion.

Why both: the built-in encoder is English-only, so Chinese recall and exact terms (part numbers,
names) come from the lexical side, while paraphrases come from the dense side. RRF fuses ranks, not
raw scores, so BM25 and cosine never need to share a scale. Filters go down to the index so it
applies them before its own top-k (k hits still come back when a filter is selective).

The dense list is weighted by how much of the query the encoder can read (:func:`non_han_share`
by default): with an English-only encoder a Chinese query's nearest vectors are noise, and at
equal weight they pushed lexical rank-1 answers down to rank 6-7 on the demo set
(benchmarks/rag.py). A retriever over a multilingual encoder passes ``dense_weight=None``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import numpy as np

from onebox.errors import InvalidInputError, Problem
from onebox.rag.types import ChunkIndex, Hit, SearchFilter

Mode = Literal["hybrid", "lexical", "dense"]
MODES: tuple[Mode, ...] = ("hybrid", "lexical", "dense")
RRF_K = 60
"""The constant of Cormack et al. (2009): damps the weight of the very first ranks."""
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
_LETTER = re.compile(r"[^\W\d_]")


def non_han_share(query: str) -> float:
    """Share of the query's letters that are not Chinese characters (1.0 when it has none; digits
    count for neither script): how much of it an English-only encoder such as MiniLM can read."""
    chars = _LETTER.findall(query)
    if not chars:
        return 1.0
    return 1.0 - sum(1 for ch in chars if _HAN.match(ch)) / len(chars)


class QueryEncoder(Protocol):
    """What retrieval needs of an embedder (``onebox.rag.embedding.Embedder`` is one)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class HitReranker(Protocol):
    """What retrieval needs of a reranker (``onebox.rag.rerank.Reranker`` is one)."""

    def rerank(self, query: str, hits: Sequence[Hit], k: int | None = None) -> list[Hit]: ...


@dataclass(frozen=True)
class SearchRequest:
    """A validated search: every bad field is reported at once, before the index is touched."""

    query: str
    k: int = 5
    mode: Mode = "hybrid"
    candidates: int | None = None
    """How many hits each retriever contributes before fusion (default ``max(4k, 20)``)."""

    def __post_init__(self) -> None:
        problems: list[Problem] = []
        if not self.query.strip():
            problems.append(Problem("query", "must not be empty"))
        if self.k < 1:
            problems.append(Problem("k", f"is {self.k}; must be at least 1"))
        if self.mode not in MODES:
            problems.append(Problem("mode", f"is {self.mode!r}; must be one of {', '.join(MODES)}"))
        if self.candidates is not None and self.candidates < self.k:
            problems.append(Problem("candidates", f"is {self.candidates}; must be at least k={self.k}"))
        if problems:
            raise InvalidInputError("invalid search", problems=problems)

    @property
    def pool(self) -> int:
        return self.candidates if self.candidates is not None else max(4 * self.k, 20)


def reciprocal_rank_fusion(
    lists: Mapping[str, Sequence[Hit]], rrf_k: int = RRF_K, weights: Mapping[str, float] | None = None
) -> list[Hit]:
    """One ranking from several: ``score = Σ w / (rrf_k + rank)`` over the lists a chunk is in
    (``w`` from ``weights`` by list name, default 1).

    Each fused hit keeps every retriever's own score in ``Hit.scores`` (``lexical``, ``dense``)
    and the fused one under ``rrf``. Ties go to the better single rank, then the chunk id, so the
    order is deterministic.
    """
    fused: dict[str, float] = {}
    scores: dict[str, dict[str, float]] = {}
    best_rank: dict[str, int] = {}
    first: dict[str, Hit] = {}
    for name, hits in lists.items():
        for rank, hit in enumerate(hits, start=1):
            cid = hit.chunk.chunk_id
            if name in scores.get(cid, {}):
                continue  # a retriever listing a chunk twice counts once
            w = 1.0 if weights is None else weights.get(name, 1.0)
            fused[cid] = fused.get(cid, 0.0) + w / (rrf_k + rank)
            scores.setdefault(cid, {})[name] = float(hit.score)
            best_rank[cid] = min(best_rank.get(cid, rank), rank)
            first.setdefault(cid, hit)
    order = sorted(fused, key=lambda c: (-fused[c], best_rank[c], c))
    return [
        replace(first[c], score=fused[c], rank=i, via="hybrid", scores={**scores[c], "rrf": fused[c]})
        for i, c in enumerate(order, start=1)
    ]


def _relabel(hits: Sequence[Hit], via: Literal["lexical", "dense"]) -> list[Hit]:
    return [
        replace(h, rank=i, via=via, scores={**h.scores, via: float(h.score)})
        for i, h in enumerate(hits, start=1)
    ]


class Retriever:
    """Search one knowledge base's index; the embedder must be the one its vectors were made with."""

    def __init__(
        self,
        index: ChunkIndex,
        embedder: QueryEncoder,
        reranker: HitReranker | None = None,
        *,
        rrf_k: int = RRF_K,
        dense_weight: Callable[[str], float] | None = non_han_share,
    ) -> None:
        if rrf_k < 1:
            raise InvalidInputError("invalid retriever", problems=[Problem("rrf_k", "must be at least 1")])
        self.index = index
        self.embedder = embedder
        self.reranker = reranker
        self.rrf_k = rrf_k
        self.dense_weight = dense_weight
        """Weight of the dense list in fusion for a query (None: equal weights, plain RRF)."""

    def search(
        self,
        query: str,
        k: int = 5,
        mode: Mode = "hybrid",
        flt: SearchFilter | None = None,
        candidates: int | None = None,
    ) -> list[Hit]:
        """The ``k`` best hits, best first (``rank`` from 1), reranked when a reranker is set.

        Without a reranker the fused list is cut to ``k``; with one, the whole candidate pool is
        reranked and then cut, so the reranker can promote a hit that fusion ranked low.
        """
        req = SearchRequest(query=query, k=k, mode=mode, candidates=candidates)
        flt = None if flt is None or flt.is_empty() else flt
        lists: dict[str, list[Hit]] = {}
        if req.mode in ("hybrid", "lexical"):
            lists["lexical"] = self.index.lexical_search(req.query, req.pool, flt)
        if req.mode in ("hybrid", "dense"):
            vector = np.asarray(self.embedder.embed([req.query])[0], dtype=np.float32)
            lists["dense"] = self.index.dense_search(vector, req.pool, flt)
        if req.mode == "hybrid":
            w = 1.0 if self.dense_weight is None else self.dense_weight(req.query)
            ranked = reciprocal_rank_fusion(lists, self.rrf_k, {"dense": w})
        else:
            ranked = _relabel(lists[req.mode], req.mode)
        if self.reranker is None:
            return ranked[: req.k]
        return self.reranker.rerank(req.query, ranked[: req.pool], req.k)
