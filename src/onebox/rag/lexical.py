"""Text → terms for lexical (BM25) search, the same function for chunks and for queries.

The embedding model is English-only, so Chinese recall rests on this side: Han runs are segmented
with jieba's search mode (it emits both ``知识`` and ``知识库``, so a query for either finds the
other's chunks), other scripts are split on word boundaries. Compounds such as ``VX-200`` are kept
whole (``vx200``) as well as in parts, so ``VX200``, ``vx-200`` and ``VX 200`` all match.

Both index backends store the terms space-joined and let their own engine (SQLite FTS5 or
PostgreSQL ``tsvector``) count and rank them; neither ever sees raw Chinese text.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from typing import Any

from onebox.errors import DependencyMissingError

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
_TOKEN = re.compile(rf"(?P<han>[{_HAN}]+)|(?P<word>[^\W_{_HAN}]+(?:[-_./'][^\W_{_HAN}]+)*)")
_PARTS = re.compile(r"[-_./']")
_MAX_COMPOUND = 32

# Small on purpose: BM25's idf already discounts common words; these only cost index space.
_STOPWORDS_EN = (
    "a an and are as at be but by for from has have in into is it its of on or that the this to was"
    " were will with"
)
_STOPWORDS_ZH = "的 了 和 与 及 或 是 在 也 就 都 而 之 着 被 把 这 那 其 个 等"
STOPWORDS = frozenset(_STOPWORDS_EN.split()) | frozenset(_STOPWORDS_ZH.split())

_lock = threading.Lock()
_tokenizer: Any = None


def _jieba() -> Any:
    """One jieba tokenizer per process, loaded on first use (about 0.6-0.8 s; its marshalled
    dictionary cache in the temp dir saves ~25%), quietly and under a lock so threads share it."""
    global _tokenizer
    if _tokenizer is None:
        with _lock:
            if _tokenizer is None:
                try:
                    import jieba
                except ImportError as exc:
                    raise DependencyMissingError(
                        "Chinese segmentation needs jieba: pip install 'onebox[docs]'"
                    ) from exc
                jieba.setLogLevel(logging.WARNING)
                tok = jieba.Tokenizer()
                tok.initialize()
                _tokenizer = tok
    return _tokenizer


def warm_up() -> None:
    """Load the segmenter now (e.g. on a background thread at start-up) instead of on first query."""
    _jieba()


def terms(text: str) -> list[str]:
    """Index terms of ``text`` in order, duplicates kept (term frequency matters to BM25)."""
    text = unicodedata.normalize("NFKC", text).lower()
    out: list[str] = []
    for m in _TOKEN.finditer(text):
        han = m.group("han")
        if han is not None:
            out.extend(t for t in _jieba().lcut_for_search(han) if t not in STOPWORDS)
            continue
        word = m.group("word")
        parts = [p for p in _PARTS.split(word) if p]
        if len(parts) > 1:
            joined = "".join(parts)
            if len(joined) <= _MAX_COMPOUND:
                out.append(joined)
            out.extend(p for p in parts if p not in STOPWORDS)
        elif word not in STOPWORDS:
            out.append(word)
    return out


def query_terms(text: str) -> list[str]:
    """Distinct terms of a query, first occurrence order (a query is an OR of its terms)."""
    return list(dict.fromkeys(terms(text)))
