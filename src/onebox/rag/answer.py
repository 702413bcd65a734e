"""Grounded answers: numbered sources in the prompt, citations parsed back, "not found" decided first.

The model is injected as ``generate(messages) -> text`` so this module knows nothing of engines,
HTTP or services. When retrieval found nothing relevant (:func:`below_threshold`) the fixed
bilingual :data:`NOT_FOUND_MESSAGE` is returned without calling the model at all: a small model
handed unrelated passages tends to answer from them anyway, and skipping it is also faster.

The relevance rule (see :class:`RelevanceRule` for the numbers and how they were picked):

1. no hits → not found;
2. if the hits carry reranker scores and ``min_rerank`` is set → found iff the best one reaches it
   (a cross-encoder reads query and passage together: the best judge when it is calibrated);
3. otherwise found if **either**
   - the dense signal: the best cosine among the hits reaches ``min_dense``, counted only for
     questions that are mostly not CJK (the built-in all-MiniLM-L6-v2 maps most Chinese characters
     to ``[UNK]``: unrelated Chinese pairs score 0.45-0.6, as high as related ones), **or**
   - the term signal: one hit holds at least ``min_term_coverage`` of the question's content
     terms (lower-case words; bigrams of Chinese runs once question and function words such as
     什么/多少/的 are cut out). Whether a lexical hit exists is no signal on its own: BM25 matches
     any chunk sharing one common term (公司, "policy").

Without the question, the term signal falls back to "some hit was found lexically".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from onebox.errors import ConfigError, ErrorList
from onebox.rag.types import Hit

Message = dict[str, str]
Generate = Callable[[list[Message]], str]
CountTokens = Callable[[str], int]

NOT_FOUND_ZH = "知识库中没有找到与该问题相关的内容。"
NOT_FOUND_EN = "This is not in the knowledge base."
NOT_FOUND_MESSAGE = f"{NOT_FOUND_ZH}\n{NOT_FOUND_EN}"

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK = re.compile(rf"[{_HAN}\u3040-\u30ff\uac00-\ud7af]")
_HAN_RUN = re.compile(rf"[{_HAN}]+")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# Function words and question words: they are in every question and say nothing about the topic.
_ZH_FILLER = re.compile(
    "请问|是否|什么|怎么|怎样|如何|哪些|哪个|哪里|多少|多久|多长|几个|为什么|为何|能否|可以|有没有|需要|"
    "我们|你们|他们|这个|那个|一下|[的了吗呢吧啊是在有和与及或把被对从向给请问谁几]"
)
_EN_STOP = frozenset(
    [
        "a", "an", "and", "are", "as", "at", "be", "by", "can", "could", "do", "does", "did",
        "for", "from", "has", "have", "how", "i", "in", "is", "it", "its", "many", "much", "my",
        "of", "on", "or", "our", "should", "so", "tell", "that", "the", "their", "there", "this",
        "to", "was", "we", "what", "when", "where", "which", "who", "whom", "why", "will", "with",
        "would", "you", "your", "me", "about", "any", "get", "if", "not", "no", "per",
    ]
)  # fmt: skip
_CITE = re.compile(r"[\[【]\s*(\d{1,4}(?:\s*[,，、;；\-–~]\s*\d{1,4})*)\s*[\]】]")


@dataclass(frozen=True)
class RelevanceRule:
    """Thresholds of the "not found" decision (the module docstring has the rule).

    Measured with all-MiniLM-L6-v2 (tests/rag/test_embedding.py has the sample): English questions
    score 0.52-0.79 against the passage that answers them, 0.35 at most against other passages of
    the same knowledge base, below 0.06 against unrelated ones. Chinese questions keep 0.33-0.6 of
    their bigrams in the passage that answers them, 0-0.2 in passages about something else.
    """

    min_dense: float = 0.4
    min_term_coverage: float = 0.3
    min_rerank: float | None = None
    """Set it only for a reranker whose scores are calibrated probabilities (e.g. 0.1 for bge)."""
    max_cjk_share_for_dense: float = 0.3
    """Above this share of CJK characters in the question the dense cosine is not consulted."""

    def __post_init__(self) -> None:
        errs = ErrorList()
        if not -1.0 <= self.min_dense <= 1.0:
            errs.add("min_dense", f"is {self.min_dense}; must be a cosine in [-1, 1]")
        if not 0.0 <= self.min_term_coverage <= 1.0:
            errs.add("min_term_coverage", f"is {self.min_term_coverage}; must be in [0, 1]")
        if not 0.0 <= self.max_cjk_share_for_dense <= 1.0:
            errs.add("max_cjk_share_for_dense", "must be in [0, 1]")
        errs.raise_if_any("invalid relevance rule", ConfigError)


DEFAULT_RULE = RelevanceRule()


@dataclass(frozen=True)
class Relevance:
    """The signals the rule looks at, kept so callers can log or show why."""

    best_dense: float | None
    lexical_hits: int
    term_coverage: float | None
    best_rerank: float | None
    cjk_share: float


@dataclass(frozen=True)
class Citation:
    number: int
    """The ``[n]`` the answer used, 1-based, as numbered in the prompt."""
    chunk_id: str
    doc_id: str
    source: str
    title: str
    locator: str
    page_start: int | None
    page_end: int | None
    inferred: bool = False
    """True when the model wrote no ``[n]`` and the source was matched to the answer's content
    (small models often answer correctly but forget the marks)."""


@dataclass(frozen=True)
class Answer:
    text: str
    citations: tuple[Citation, ...]
    hits: tuple[Hit, ...]
    """The sources given to the model, ``hits[n - 1]`` being source ``[n]``."""
    not_found: bool


def query_terms(text: str) -> set[str]:
    """Content terms of a question: lower-case words and bigrams of Chinese runs, fillers dropped."""
    terms: set[str] = set()
    for run in _HAN_RUN.findall(text):
        for part in _ZH_FILLER.split(run):
            terms.update(part[i : i + 2] for i in range(len(part) - 1))
    rest = _HAN_RUN.sub(" ", text).lower()
    terms.update(w for w in _WORD.findall(rest) if w not in _EN_STOP and (len(w) > 1 or w.isdigit()))
    return terms


def _cjk_share(text: str) -> float:
    letters = [c for c in text if c.isalnum()]
    return sum(1 for c in letters if _CJK.match(c)) / len(letters) if letters else 0.0


def relevance(hits: Sequence[Hit], question: str | None = None) -> Relevance:
    """The signals :func:`below_threshold` decides on."""
    dense = [h.scores["dense"] for h in hits if "dense" in h.scores]
    rerank = [h.scores["rerank"] for h in hits if "rerank" in h.scores]
    coverage: float | None = None
    if question is not None:
        terms = query_terms(question)
        coverage = 0.0
        for h in hits if terms else ():
            text = h.chunk.embed_text(h.document.title).lower()
            coverage = max(coverage, sum(1 for t in terms if t in text) / len(terms))
    return Relevance(
        best_dense=max(dense) if dense else None,
        lexical_hits=sum(1 for h in hits if "lexical" in h.scores),
        term_coverage=coverage,
        best_rerank=max(rerank) if rerank else None,
        cjk_share=_cjk_share(question or ""),
    )


def below_threshold(
    hits: Sequence[Hit], question: str | None = None, rule: RelevanceRule = DEFAULT_RULE
) -> bool:
    """True when the hits are not relevant enough to answer from (rule in the module docstring)."""
    if not hits:
        return True
    sig = relevance(hits, question)
    if sig.best_rerank is not None and rule.min_rerank is not None:
        return sig.best_rerank < rule.min_rerank
    dense_ok = (
        sig.best_dense is not None
        and sig.cjk_share <= rule.max_cjk_share_for_dense
        and sig.best_dense >= rule.min_dense
    )
    if sig.term_coverage is None:
        terms_ok = sig.lexical_hits > 0
    else:
        terms_ok = sig.term_coverage >= rule.min_term_coverage
    return not (dense_ok or terms_ok)


def estimate_tokens(text: str) -> int:
    """A tokenizer-free upper-ish estimate for LLM tokens: one per CJK character, one per 3.5 others."""
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 3.5)


SYSTEM_PROMPT = (
    "You answer questions from a company knowledge base using only the numbered sources given.\n"
    "- Answer in the same language as the question (a question in Chinese gets an answer in Chinese).\n"
    "- After each statement, cite the sources that support it by number, like [1] or [1][2].\n"
    "- Do not use knowledge from outside the sources.\n"
    "- If the sources do not contain the answer, reply exactly with these two lines and nothing else:\n"
    f"{NOT_FOUND_MESSAGE}"
)


def format_source(number: int, hit: Hit, passage: str | None = None) -> str:
    """``[n] <title> (<locator>)`` then the passage (the locator part is left out when there is none)."""
    title = hit.document.title or hit.document.source
    loc = hit.chunk.locator()
    head = f"[{number}] {title} ({loc})" if loc else f"[{number}] {title}"
    return f"{head}\n{hit.chunk.text if passage is None else passage}"


def _cut_to(text: str, budget: int, count: CountTokens) -> str:
    """The longest prefix of ``text`` within ``budget`` tokens (binary search on characters)."""
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def build_messages(
    question: str,
    hits: Sequence[Hit],
    *,
    max_source_tokens: int = 2048,
    count_tokens: CountTokens = estimate_tokens,
    system_prompt: str = SYSTEM_PROMPT,
) -> tuple[list[Message], list[Hit]]:
    """Chat messages for a grounded answer, and the hits that fit (``[n]`` is ``used[n - 1]``).

    Sources go in rank order until ``max_source_tokens`` is spent; the lower-ranked ones that do
    not fit are dropped (the best one is cut to fit rather than dropped).
    """
    blocks: list[str] = []
    used: list[Hit] = []
    spent = 0
    for hit in hits:
        block = format_source(len(used) + 1, hit)
        n = count_tokens(block)
        if spent + n > max_source_tokens:
            if used:
                break
            head = count_tokens(format_source(1, hit, ""))
            passage = _cut_to(hit.chunk.text, max(max_source_tokens - head, 0), count_tokens)
            if not passage:
                break
            block, n = format_source(1, hit, passage), count_tokens(format_source(1, hit, passage))
        blocks.append(block)
        used.append(hit)
        spent += n
    sources = "\n\n".join(blocks)
    user = f"Sources:\n\n{sources}\n\nQuestion: {question.strip()}"
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}], used


def parse_citations(answer_text: str, hits: Sequence[Hit]) -> list[Citation]:
    """Citations in order of first mention: ``[1]``, ``[1][2]``, ``[1,2]``, ``[1-3]``, ``【1】``, ``【1，2】``

    Numbers that name no source (``[0]``, ``[7]`` of 5, a year like ``[2024]``) are dropped.
    """
    seen: list[int] = []
    for m in _CITE.finditer(answer_text):
        for part in re.split(r"\s*[,，、;；]\s*", m.group(1)):
            bounds = [int(x) for x in re.split(r"\s*[\-–~]\s*", part) if x]
            if len(bounds) == 2 and 0 < bounds[1] - bounds[0] < 50:
                numbers = list(range(bounds[0], bounds[1] + 1))
            else:
                numbers = bounds[:1]
            seen.extend(n for n in numbers if 1 <= n <= len(hits) and n not in seen)
    out: list[Citation] = []
    for n in seen:
        h = hits[n - 1]
        out.append(
            Citation(
                number=n,
                chunk_id=h.chunk.chunk_id,
                doc_id=h.chunk.doc_id,
                source=h.document.source,
                title=h.document.title,
                locator=h.chunk.locator(),
                page_start=h.chunk.page_start,
                page_end=h.chunk.page_end,
            )
        )
    return out


def attribute(answer_text: str, question: str, hits: Sequence[Hit]) -> list[Citation]:
    """Sources an answer without ``[n]`` marks rests on: those holding most of the terms the answer
    adds to its question (words, Chinese bigrams). An answer that only echoes the question, or
    whose new terms no source holds, gets no citation rather than a guess."""
    new = query_terms(answer_text) - query_terms(question)
    if not new:
        return []
    scored = []
    for n, h in enumerate(hits, start=1):
        shared = new & query_terms(h.chunk.text)
        if len(shared) >= min(2, len(new)) and len(shared) / len(new) >= 0.3:
            scored.append((len(shared), n))
    if not scored:
        return []
    best = max(s for s, _ in scored)
    keep = sorted(n for s, n in scored if s >= 0.8 * best)
    return [replace(c, inferred=True) for c in parse_citations("".join(f"[{n}]" for n in keep), hits)]


def _says_not_found(text: str) -> bool:
    flat = " ".join(text.split())
    return not flat or NOT_FOUND_ZH in flat or NOT_FOUND_EN.lower() in flat.lower()


def answer(
    question: str,
    hits: Sequence[Hit],
    generate: Generate,
    *,
    rule: RelevanceRule = DEFAULT_RULE,
    max_source_tokens: int = 2048,
    count_tokens: CountTokens = estimate_tokens,
) -> Answer:
    """Answer ``question`` from ``hits`` with citations, or the fixed not-found message.

    The model is not called when the hits are below the relevance threshold. When the model itself
    replies that the sources do not contain the answer, ``not_found`` is set and no citation kept.
    """
    if below_threshold(hits, question, rule):
        return Answer(NOT_FOUND_MESSAGE, (), (), True)
    messages, used = build_messages(
        question, hits, max_source_tokens=max_source_tokens, count_tokens=count_tokens
    )
    text = generate(messages).strip()
    if _says_not_found(text):
        return Answer(text or NOT_FOUND_MESSAGE, (), tuple(used), True)
    cites = parse_citations(text, used) or attribute(text, question, used)
    return Answer(text, tuple(cites), tuple(used), False)
