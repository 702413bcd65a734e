"""Text metrics for generated answers, Chinese-aware and dependency-free.

Chinese has no spaces, so whitespace tokenisation would make a whole Chinese sentence one
"word" and ROUGE/BLEU meaningless. :func:`tokenize_for_metrics` makes every CJK character a
token (the usual character-level convention for Chinese BLEU/ROUGE) and keeps Latin words and
numbers whole, so mixed text such as ``VX-200 的售价是 1299 元`` scores sensibly.

All scores are in [0, 1]. Every metric compares one prediction with one reference.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

_CJK = (
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3400-\u4dbf"  # CJK Extension A
    "\u4e00-\u9fff"  # CJK Unified Ideographs
    "\uf900-\ufaff"  # CJK Compatibility Ideographs
    "\U00020000-\U0003134f"  # Extensions B-G
)
_TOKEN = re.compile(
    rf"(?P<cjk>[{_CJK}])"  # one token per CJK character
    r"|(?P<num>\d+(?:[.,]\d+)+)"  # 3.5, 1,299: a decimal point does not split a number
    rf"|(?P<word>[^\W_{_CJK}]+)"  # runs of letters/digits: vx, 200, café, 2017
)


_WORD_CHAR = rf"[^\W_{_CJK}]"
"""A Latin (or other non-CJK) letter or digit: what a keyword must not run into."""
_WORD_RE = re.compile(_WORD_CHAR)


def normalize_text(text: str) -> str:
    """NFKC then lower-case: full-width ``ＶＸ－２００`` and ``vx-200`` compare equal."""
    return unicodedata.normalize("NFKC", text).lower()


def tokenize_for_metrics(text: str) -> list[str]:
    """Tokens for matching: each CJK character, each Latin word or number; punctuation dropped.

    >>> tokenize_for_metrics("VX-200 的售价是 1,299 元。")
    ['vx', '200', '的', '售', '价', '是', '1,299', '元']
    """
    return [m.group(0) for m in _TOKEN.finditer(normalize_text(text))]


def exact_match(pred: str, ref: str) -> bool:
    """Same tokens in the same order: case, width, punctuation and spacing do not matter."""
    return tokenize_for_metrics(pred) == tokenize_for_metrics(ref)


def contains(pred: str, ref: str) -> bool:
    """The reference's tokens appear contiguously in the prediction's.

    Token-level, so ``cat`` is not found in ``concatenate`` but ``1299 元`` is found in
    ``售价是1299元``. An empty reference is contained only in an empty prediction.
    """
    needle, hay = tokenize_for_metrics(ref), tokenize_for_metrics(pred)
    if not needle:
        return not hay
    n = len(needle)
    return any(hay[i : i + n] == needle for i in range(len(hay) - n + 1))


def _squash(text: str) -> str:
    return "".join(normalize_text(text).split())


def keywords_hit(pred: str, keywords: Sequence[str], *, word_boundaries: bool = False) -> bool:
    """Every keyword occurs in the prediction, after NFKC, lower-casing and removing whitespace on
    both sides (so ``2 年`` matches ``2年`` and ``2 years`` matches ``2 Years``).

    This is the demo held-out set's definition of a correct answer. Substring matching (not
    token matching) is deliberate: keywords such as ``400-600-5817`` keep their punctuation.
    An empty keyword list is never a hit: it would mark every answer correct.

    ``word_boundaries=True`` also requires that a keyword starting (ending) with a Latin letter or
    digit is not preceded (followed) by one, so ``2 years`` is not found in ``12 years`` nor
    ``120`` in ``1200``; CJK characters need no boundary.
    """
    wanted = [_squash(k) for k in keywords]
    if not wanted or not all(wanted):
        return False
    if not word_boundaries:
        hay = _squash(pred)
        return all(k in hay for k in wanted)
    text = normalize_text(pred)
    return all(_keyword_pattern(k).search(text) for k in wanted)


def _keyword_pattern(squashed: str) -> re.Pattern[str]:
    """Regex for a squashed keyword that allows whitespace between its characters, with boundaries."""
    body = r"\s*".join(re.escape(c) for c in squashed)
    before = rf"(?<!{_WORD_CHAR})" if _WORD_RE.match(squashed[0]) else ""
    after = rf"(?!{_WORD_CHAR})" if _WORD_RE.match(squashed[-1]) else ""
    return re.compile(before + body + after)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a)·len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1: harmonic mean of LCS/len(pred) and LCS/len(ref) over metric tokens.

    F1 (beta = 1) as in Google's ``rouge-score``. Two empty texts score 1, one empty text 0.
    """
    p, r = tokenize_for_metrics(pred), tokenize_for_metrics(ref)
    if not p and not r:
        return 1.0
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _bleu_stats(pred: Sequence[str], ref: Sequence[str], max_n: int) -> tuple[list[int], list[int]]:
    """Clipped n-gram matches and n-gram totals of the prediction, for n = 1..max_n."""
    matches, totals = [], []
    for n in range(1, max_n + 1):
        p_counts, r_counts = _ngrams(pred, n), _ngrams(ref, n)
        matches.append(sum(min(c, r_counts[g]) for g, c in p_counts.items()))
        totals.append(max(len(pred) - n + 1, 0))
    return matches, totals


def _bleu_from_stats(matches: list[int], totals: list[int], pred_len: int, ref_len: int) -> float:
    """BLEU with "exp" smoothing (Chen & Cherry 2014, method 3; sacreBLEU's default) and effective order.

    An order with zero matches gets precision ``1 / (2^k · total)``, k counting such orders so
    far, instead of zeroing the whole score. Orders longer than the prediction are left out of
    the geometric mean (effective order), so a 2-token answer is not punished for lacking 4-grams.
    """
    if pred_len == 0:
        return 1.0 if ref_len == 0 else 0.0
    log_sum, order, k = 0.0, 0, 1
    for m, t in zip(matches, totals, strict=True):
        if t == 0:
            break
        if m == 0:
            k *= 2
            precision = 1.0 / (k * t)
        else:
            precision = m / t
        log_sum += math.log(precision)
        order += 1
    brevity = 1.0 if pred_len >= ref_len else math.exp(1.0 - ref_len / pred_len)
    return brevity * math.exp(log_sum / order)


def bleu(pred: str, ref: str, max_n: int = 4) -> float:
    """Sentence BLEU (up to ``max_n``-grams, one reference) on metric tokens, with exp smoothing.

    Character-level for Chinese (see module doc), so it is comparable to sacreBLEU's ``zh``
    tokenizer rather than to word-segmented Chinese BLEU.
    """
    if max_n < 1:
        raise ValueError("max_n must be at least 1")
    p, r = tokenize_for_metrics(pred), tokenize_for_metrics(ref)
    matches, totals = _bleu_stats(p, r, max_n)
    return _bleu_from_stats(matches, totals, len(p), len(r))


def corpus_bleu(preds: Sequence[str], refs: Sequence[str], max_n: int = 4) -> float:
    """Corpus BLEU: n-gram matches, totals and lengths summed over all pairs before combining.

    Not the mean of sentence BLEUs: corpus BLEU weighs each n-gram once, which is what BLEU
    was defined as and what papers report. Same smoothing as :func:`bleu`.
    """
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if max_n < 1:
        raise ValueError("max_n must be at least 1")
    matches, totals = [0] * max_n, [0] * max_n
    pred_len = ref_len = 0
    for pred, ref in zip(preds, refs, strict=True):
        p, r = tokenize_for_metrics(pred), tokenize_for_metrics(ref)
        m, t = _bleu_stats(p, r, max_n)
        matches = [a + b for a, b in zip(matches, m, strict=True)]
        totals = [a + b for a, b in zip(totals, t, strict=True)]
        pred_len += len(p)
        ref_len += len(r)
    return _bleu_from_stats(matches, totals, pred_len, ref_len)
