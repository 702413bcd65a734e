"""BM25 for the global search: the phrases of a query, the plan that bounds its cost, and the
score computed outside the database when candidates are re-ranked.

A query term ``t`` becomes one phrase per scope the caller may see (``p<project>_t``, ``pub_t``...),
so its document frequency is that scope's own. Ranking every document that holds a common phrase
costs in proportion to its postings (FTS5: ~20 ms per 30k on these CPUs), so:

1. when the query's postings add up to at most the budget, the engine ranks them all (exact);
2. else the rarest phrases that fit the budget pick a candidate pool, re-scored here with full
   BM25 over every phrase (the common phrases left out have low idf: they reorder, rarely add);
3. when even the rarest phrase alone exceeds the budget (a query of only very common words),
   the most recent ``budget`` matching documents are ranked: for an operations search the newest
   matches of ``error`` are the ones wanted.

The score is FTS5's ``bm25()`` with column weights (kind 0, name :data:`W_NAME`, body 1), so
re-scored and engine-ranked scores share one scale.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

K1 = 1.2
B = 0.75
W_NAME = 4.0
W_BODY = 1.0


def phrases(scopes: Sequence[str], words: Sequence[str]) -> list[str]:
    return [f"{s}_{w}" for w in words for s in scopes]


def scoped_terms(scope: str, words: Iterable[str]) -> str:
    return " ".join(f"{scope}_{w}" for w in words)


@dataclass(frozen=True)
class Plan:
    mode: str
    """exact, pool or recent (see the module docstring)."""
    df: dict[str, int]
    """Document frequency of every phrase that occurs at all."""
    match: list[str]
    """The phrases the engine matches."""


def plan(df: dict[str, int], budget: int) -> Plan:
    present = {p: n for p, n in df.items() if n > 0}
    ordered = sorted(present, key=lambda p: (present[p], p))
    if sum(present.values()) <= budget:
        return Plan("exact", present, ordered)
    chosen: list[str] = []
    used = 0
    for p in ordered:
        if used + present[p] > budget:
            break
        chosen.append(p)
        used += present[p]
    if not chosen:
        return Plan("recent", present, ordered)
    return Plan("pool", present, chosen)


def idf(n_docs: int, df: int) -> float:
    value = math.log((n_docs - df + 0.5) / (df + 0.5))
    return value if value > 0 else 1e-6


def bm25(
    name_terms: str, body_terms: str, length: int, df: dict[str, int], n_docs: int, avgdl: float
) -> float:
    """FTS5's bm25() of one document (positive: higher is better)."""
    wanted = df.keys()
    freq: Counter[str] = Counter()
    for t in name_terms.split():
        if t in wanted:
            freq[t] += W_NAME
    for t in body_terms.split():
        if t in wanted:
            freq[t] += W_BODY
    if not freq:
        return 0.0
    norm = K1 * (1 - B + B * length / max(avgdl, 1e-9))
    return sum(idf(n_docs, df[t]) * f * (K1 + 1) / (f + norm) for t, f in freq.items())
