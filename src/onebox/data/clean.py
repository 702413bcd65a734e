"""Clean normalised examples: Unicode, PII, length limits, exact and near duplicates, outliers.

Steps run in this order, each on what the previous kept:

1. ``unicode``: Unicode normalisation (NFKC by default), ``\\r\\n``/``\\r`` -> ``\\n``, control
   characters other than ``\\n``/``\\t`` removed; then PII redaction when enabled.
2. ``length``: fewer than ``min_chars`` or more than ``max_chars`` characters of content.
3. ``exact_dedupe``: identical content (after step 1); the first occurrence is kept.
4. ``near_dedupe``: MinHash LSH over character 5-gram shingles (so Chinese needs no word
   segmentation); candidates are confirmed with the exact Jaccard similarity of their shingle
   sets, and the earliest kept row wins. The compared text is case-folded and stripped of
   punctuation, symbols and whitespace, so rows differing only in those always match. System
   prompts are left out, because a long shared system prompt would make every row look alike.
   Note that with 5-grams a one-character insertion only stays above a 0.9 Jaccard in rows of
   roughly 90+ characters; shorter rows need a lower threshold to be caught.
5. ``length_outlier``: rows whose log length has a z-score above the threshold.

Removed rows are returned with a reason code and a detail, never silently dropped. The
result depends only on the input order and the config, so a rerun gives the same dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onebox.data._validate import from_dict, is_int, is_number
from onebox.data.pii import PLACEHOLDERS, redact
from onebox.data.schema import Example
from onebox.errors import ErrorList, Problem
from onebox.progress import ProgressFn, null_progress

REASONS: tuple[str, ...] = (
    "empty",
    "too_short",
    "too_long",
    "exact_duplicate",
    "near_duplicate",
    "length_outlier",
)
"""Reason codes a row can be quarantined with by :func:`clean`."""

UNICODE_FORMS: tuple[str, ...] = ("NFKC_CJK", "NFC", "NFKC", "NFD", "NFKD")
CJK_PUNCTUATION = "，；：？！（）～"
"""Full-width punctuation that Chinese text uses on purpose; plain NFKC would turn it into ASCII."""
_CJK_PUNCT_SPLIT = re.compile(f"([{CJK_PUNCTUATION}])")
MIN_ROWS_FOR_OUTLIERS = 20
"""Below this many rows a z-score says nothing useful, so the outlier step is skipped."""

# Control characters (C0, DEL, C1) except \t and \n, plus a stray BOM inside the text.
_CONTROL = {c: None for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if c not in (0x09, 0x0A)}
_CONTROL[0xFEFF] = None
_NON_WORD = re.compile(r"[\W_]+")


@dataclass
class CleanConfig:
    """How :func:`clean` treats a dataset; defaults suit chat fine-tuning data."""

    unicode_form: str | None = "NFKC_CJK"
    """Unicode normal form applied to all content. ``NFKC_CJK`` (default) is NFKC (folds full-width
    letters and digits such as ``ＬＭ－２００``) except that Chinese full-width punctuation
    (``，？！：（）``) is kept; plain ``NFKC`` folds that too. None leaves characters as they are.
    Line endings and control characters are fixed either way."""

    min_chars: int = 1
    """Rows with fewer content characters (all messages together) are quarantined."""

    max_chars: int = 32000
    """Rows with more content characters (all messages together) are quarantined as too long."""

    dedupe_exact: bool = True
    """Quarantine rows whose content equals an earlier row's."""

    near_duplicate_threshold: float | None = 0.9
    """Jaccard similarity of character shingles at or above which a row is a near duplicate of an
    earlier one; None disables near-duplicate detection."""

    num_perm: int = 128
    """MinHash permutations; more gives fewer missed near duplicates at more CPU cost."""

    shingle_size: int = 5
    """Characters per shingle; 5-grams work for Chinese without word segmentation."""

    zscore_threshold: float | None = 4.0
    """Quarantine rows whose log length lies more than this many standard deviations from the
    mean; None disables it. Skipped for fewer than 20 rows."""

    redact_pii: bool = False
    """Replace emails, phone numbers, Chinese ID numbers and bank cards with placeholders."""

    pii_allow: list[str] = field(default_factory=list)
    """Exact strings never redacted, e.g. the company's own support email or hotline."""

    seed: int = 0
    """Seed of the MinHash permutations; results are deterministic for a given seed."""

    def validate(self) -> None:
        """Raise :class:`ConfigError` listing every invalid field at once."""
        errors = ErrorList()
        for problem in self.problems():
            errors.problems.append(problem)
        errors.raise_if_any("invalid cleaning options")

    def problems(self, prefix: str = "") -> list[Problem]:
        """Every invalid field as a :class:`~onebox.errors.Problem` (for callers that merge lists)."""
        errors = ErrorList()
        p = prefix
        if self.unicode_form is not None and self.unicode_form not in UNICODE_FORMS:
            errors.add(
                f"{p}unicode_form",
                f"{self.unicode_form!r} is not a Unicode normal form",
                f"use one of {', '.join(UNICODE_FORMS)} or null",
            )
        if not is_int(self.min_chars) or self.min_chars < 0:
            errors.add(f"{p}min_chars", f"must be an integer >= 0, got {self.min_chars!r}")
        if not is_int(self.max_chars) or self.max_chars < 1:
            errors.add(f"{p}max_chars", f"must be an integer >= 1, got {self.max_chars!r}")
        elif is_int(self.min_chars) and self.max_chars < self.min_chars:
            errors.add(f"{p}max_chars", f"must be >= min_chars ({self.min_chars}), got {self.max_chars}")
        if not isinstance(self.dedupe_exact, bool):
            errors.add(f"{p}dedupe_exact", f"must be true or false, got {self.dedupe_exact!r}")
        t = self.near_duplicate_threshold
        if t is not None and (not is_number(t) or not 0 < t <= 1):
            errors.add(f"{p}near_duplicate_threshold", f"must be in (0, 1] or null, got {t!r}")
        if not is_int(self.num_perm) or not 16 <= self.num_perm <= 1024:
            errors.add(f"{p}num_perm", f"must be an integer in [16, 1024], got {self.num_perm!r}")
        if not is_int(self.shingle_size) or not 1 <= self.shingle_size <= 32:
            errors.add(f"{p}shingle_size", f"must be an integer in [1, 32], got {self.shingle_size!r}")
        z = self.zscore_threshold
        if z is not None and (not is_number(z) or not z > 0):
            errors.add(f"{p}zscore_threshold", f"must be a number > 0 or null, got {z!r}")
        if not isinstance(self.redact_pii, bool):
            errors.add(f"{p}redact_pii", f"must be true or false, got {self.redact_pii!r}")
        if not isinstance(self.pii_allow, list | tuple) or not all(
            isinstance(a, str) for a in self.pii_allow
        ):
            errors.add(f"{p}pii_allow", f"must be a list of strings, got {self.pii_allow!r}")
        if not is_int(self.seed) or not 0 <= self.seed < 2**32:
            errors.add(f"{p}seed", f"must be an integer in [0, 2**32), got {self.seed!r}")
        return errors.problems

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CleanConfig:
        """Build from plain data (CLI/API), rejecting unknown keys; call :meth:`validate` after."""
        return from_dict(cls, data)


@dataclass(slots=True)
class Quarantined:
    """A row :func:`clean` removed, with a reason code from :data:`REASONS` and a human detail."""

    example: Example
    reason: str
    detail: str


@dataclass
class CleanReport:
    """What cleaning did, for the dataset report and the UI."""

    rows_in: int = 0
    rows_out: int = 0
    unicode_changed: int = 0
    """Rows whose text changed by Unicode normalisation or control-character removal."""
    pii_rows: int = 0
    """Rows in which at least one PII item was redacted."""
    pii: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PLACEHOLDERS, 0))
    """Redactions by kind (email, id_number, bank_card, phone)."""
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    """Quarantined rows by reason code."""
    steps: list[dict[str, Any]] = field(default_factory=list)
    """One entry per step in order: name, rows in, rows out, and whether it ran."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CleanResult:
    """Rows kept (in input order), rows removed (in input order) and the report."""

    kept: list[Example]
    quarantined: list[Quarantined]
    report: CleanReport


def clean(examples: list[Example], config: CleanConfig, progress: ProgressFn = null_progress) -> CleanResult:
    """Run the cleaning steps (see the module docstring) over ``examples``.

    Progress is reported as stage "clean" with rows processed over rows times passes.
    """
    config.validate()
    report = CleanReport(rows_in=len(examples))
    quarantined: list[Quarantined] = []
    near = config.near_duplicate_threshold is not None
    total = len(examples) * (2 if near else 1)
    progress("clean", 0, total)

    # Pass 1: per-row transforms, length limits and exact duplicates.
    survivors: list[Example] = []
    seen: dict[bytes, int] = {}
    removed_len = removed_exact = 0
    position: dict[int, int] = {}  # id(cleaned example) -> input index, to report in input order
    for i, example in enumerate(examples):
        example = _transform(example, config, report)
        position[id(example)] = i
        problem = _length_problem(example, config)
        if problem is not None:
            removed_len += 1
            quarantined.append(Quarantined(example, *problem))
        elif not config.dedupe_exact:
            survivors.append(example)
        else:
            key = _digest(example)
            first = seen.get(key)
            if first is None:
                seen[key] = example.line
                survivors.append(example)
            else:
                removed_exact += 1
                quarantined.append(Quarantined(example, "exact_duplicate", f"duplicate of line {first}"))
        if (i + 1) % 5000 == 0:
            progress("clean", i + 1, total)
    seen.clear()
    n = len(examples)
    report.steps.append({"step": "unicode", "rows_in": n, "rows_out": n, "ran": True})
    report.steps.append({"step": "length", "rows_in": n, "rows_out": n - removed_len, "ran": True})
    report.steps.append(
        {
            "step": "exact_dedupe",
            "rows_in": n - removed_len,
            "rows_out": len(survivors),
            "ran": config.dedupe_exact,
        }
    )
    progress("clean", n, total)

    # Pass 2: near duplicates.
    before = len(survivors)
    if near:
        survivors = _near_dedupe(
            survivors, config, quarantined, lambda done: progress("clean", n + done, total)
        )
    report.steps.append({"step": "near_dedupe", "rows_in": before, "rows_out": len(survivors), "ran": near})

    # Pass 3: length outliers.
    before = len(survivors)
    ran = config.zscore_threshold is not None and len(survivors) >= MIN_ROWS_FOR_OUTLIERS
    if ran:
        survivors = _drop_outliers(survivors, float(config.zscore_threshold or 0), quarantined)
    report.steps.append({"step": "length_outlier", "rows_in": before, "rows_out": len(survivors), "ran": ran})
    progress("clean", total, total)

    quarantined.sort(key=lambda q: position[id(q.example)])
    for q in quarantined:
        report.removed[q.reason] += 1
    report.rows_out = len(survivors)
    return CleanResult(survivors, quarantined, report)


def clean_text(text: str, form: str | None) -> str:
    """Normalise one string: Unicode form, newlines, control characters."""
    if form is not None and not (text.isascii() and form in ("NFC", "NFKC", "NFKC_CJK")):
        if form == "NFKC_CJK":
            parts = _CJK_PUNCT_SPLIT.split(text)
            text = "".join(p if i % 2 else unicodedata.normalize("NFKC", p) for i, p in enumerate(parts))
        else:
            text = unicodedata.normalize(form, text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.translate(_CONTROL)


def _transform(example: Example, config: CleanConfig, report: CleanReport) -> Example:
    pii: Counter[str] = Counter()
    changed = False
    if example.messages is not None:
        messages = []
        for m in example.messages:
            content = clean_text(m["content"], config.unicode_form)
            changed |= content != m["content"]
            if config.redact_pii:
                content, found = redact(content, config.pii_allow)
                pii.update(found)
            messages.append({"role": m["role"], "content": content})
        new = Example(example.line, messages=messages)
    else:
        text = clean_text(example.text or "", config.unicode_form)
        changed = text != example.text
        if config.redact_pii:
            text, found = redact(text, config.pii_allow)
            pii.update(found)
        new = Example(example.line, text=text)
    if changed:
        report.unicode_changed += 1
    if pii:
        report.pii_rows += 1
        for kind, count in pii.items():
            report.pii[kind] = report.pii.get(kind, 0) + count
    return new


def _length_problem(example: Example, config: CleanConfig) -> tuple[str, str] | None:
    """(reason, detail) when the row is empty, too short or too long; None when it fits."""
    chars = example.num_chars()
    if chars == 0 or _empty_turn(example):
        return "empty", "no content left after cleaning"
    if chars < config.min_chars:
        return "too_short", f"{chars} characters, fewer than min_chars {config.min_chars}"
    if chars > config.max_chars:
        return "too_long", f"{chars} characters, more than max_chars {config.max_chars}"
    return None


def _empty_turn(example: Example) -> bool:
    """A user or assistant turn that cleaning emptied makes the conversation unusable."""
    return example.messages is not None and any(
        not m["content"].strip() for m in example.messages if m["role"] != "system"
    )


def _digest(example: Example) -> bytes:
    return hashlib.blake2b(example.content_key().encode("utf-8"), digest_size=16).digest()


def dedupe_text(example: Example) -> str:
    """The text near-duplicate detection compares: content except system prompts, case-folded,
    without punctuation, symbols and whitespace (so "cost?" and "cost" match)."""
    if example.messages is not None:
        raw = "\n".join(m["content"] for m in example.messages if m["role"] != "system")
    else:
        raw = example.text or ""
    return _NON_WORD.sub("", raw.casefold()) or raw


# ---------------------------------------------------------------------------------------------
# MinHash over character shingles, vectorised with numpy. datasketch's own update() hashes one
# shingle at a time in Python (tens of seconds for 100k rows); here a chunk of rows is hashed
# with array operations that compute exactly what MinHash(scheme="affine32").update_batch()
# would for the same 32-bit shingle hashes, and datasketch's MinHashLSH indexes the result.

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_POLY = np.uint64(0x100000001B3)
_CHUNK_SHINGLES = 1 << 16


def shingle_hashes(text: str, size: int) -> np.ndarray:
    """32-bit hashes of the character ``size``-grams of ``text`` (the whole text if shorter)."""
    codes = np.frombuffer(_pad(text, size).encode("utf-32-le"), dtype="<u4").astype(np.uint64)
    return _gram_hashes(codes, size)[: len(codes) - size + 1]


def _pad(text: str, size: int) -> str:
    return text + "\0" * (size - len(text)) if len(text) < size else text


def _gram_hashes(codes: np.ndarray, size: int) -> np.ndarray:
    """Hash every window of ``size`` code points (windows past the end are garbage, sliced off)."""
    acc = np.zeros(len(codes), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(size):
            shifted = np.zeros(len(codes), dtype=np.uint64)
            shifted[: len(codes) - k] = codes[k:]
            acc = acc * _POLY + shifted + np.uint64(1)
        # splitmix64 finaliser: spreads the polynomial hash over all bits.
        acc ^= acc >> np.uint64(30)
        acc *= np.uint64(0xBF58476D1CE4E5B9)
        acc ^= acc >> np.uint64(27)
        acc *= np.uint64(0x94D049BB133111EB)
        acc ^= acc >> np.uint64(31)
    return (acc >> np.uint64(32)).astype(np.uint32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, as datasketch applies before its affine permutations."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        return h ^ (h >> np.uint32(16))


def minhash_signatures(texts: list[str], *, num_perm: int, seed: int, size: int) -> np.ndarray:
    """MinHash signatures (rows x num_perm, uint32) equal to datasketch's affine32 scheme."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    a = a.astype(np.uint32)[:, None]
    b = b.astype(np.uint32)[:, None]
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    start = 0
    while start < len(texts):
        end, budget = start, 0
        while end < len(texts) and (end == start or budget + len(texts[end]) <= _CHUNK_SHINGLES):
            budget += max(len(texts[end]), size)
            end += 1
        out[start:end] = _chunk_signatures(texts[start:end], a, b, size)
        start = end
    return out


def _chunk_signatures(texts: list[str], a: np.ndarray, b: np.ndarray, size: int) -> np.ndarray:
    padded = [_pad(t, size) for t in texts]
    lengths = np.fromiter((len(t) for t in padded), dtype=np.int64, count=len(padded))
    codes = np.frombuffer("".join(padded).encode("utf-32-le"), dtype="<u4").astype(np.uint64)
    hashes = _gram_hashes(codes, size)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    grams = lengths - size + 1
    # Keep the windows that lie inside one row: offsets 0..grams-1 from each row's start.
    row_of = np.repeat(np.arange(len(padded)), grams)
    offsets = np.arange(int(grams.sum())) - np.repeat(np.cumsum(grams) - grams, grams)
    hv = _fmix32(hashes[starts[row_of] + offsets])
    with np.errstate(over="ignore"):
        permuted = a * hv[None, :] + b
    segment = np.concatenate(([0], np.cumsum(grams)[:-1]))
    return np.minimum.reduceat(permuted, segment, axis=1).T


def jaccard(x: np.ndarray, y: np.ndarray) -> float:
    """Exact Jaccard similarity of two shingle-hash sets (arrays of unique values)."""
    inter = len(np.intersect1d(x, y, assume_unique=True))
    union = len(x) + len(y) - inter
    return inter / union if union else 1.0


def _near_dedupe(
    examples: list[Example], config: CleanConfig, quarantined: list[Quarantined], tick: Callable[[int], None]
) -> list[Example]:
    from datasketch import LeanMinHash, MinHashLSH

    threshold = float(config.near_duplicate_threshold or 0)
    size = config.shingle_size
    texts = [dedupe_text(e) for e in examples]
    signatures = minhash_signatures(texts, num_perm=config.num_perm, seed=config.seed, size=size)
    tick(len(examples) // 2)
    lsh = MinHashLSH(threshold=threshold, num_perm=config.num_perm)
    kept: list[Example] = []
    for i, example in enumerate(examples):
        sketch = LeanMinHash(seed=config.seed, hashvalues=signatures[i], scheme="affine32")
        match = None
        candidates = lsh.query(sketch)
        if candidates:
            mine = np.unique(shingle_hashes(texts[i], size))
            for j in sorted(candidates):
                if jaccard(mine, np.unique(shingle_hashes(texts[j], size))) >= threshold:
                    match = j
                    break
        if match is None:
            lsh.insert(i, sketch, check_duplication=False)
            kept.append(example)
        else:
            other = examples[match]
            quarantined.append(
                Quarantined(
                    example, "near_duplicate", f"near duplicate of line {other.line} (Jaccard >= {threshold})"
                )
            )
        if (i + 1) % 5000 == 0:
            tick(len(examples) // 2 + (i + 1) // 2)
    tick(len(examples))
    return kept


def _drop_outliers(
    examples: list[Example], threshold: float, quarantined: list[Quarantined]
) -> list[Example]:
    lengths = np.array([e.num_chars() for e in examples], dtype=np.float64)
    logs = np.log1p(lengths)
    std = float(logs.std())
    if std == 0:
        return examples
    z = (logs - float(logs.mean())) / std
    kept = []
    for example, score, chars in zip(examples, z, lengths, strict=True):
        if abs(score) > threshold:
            side = "longer" if score > 0 else "shorter"
            quarantined.append(
                Quarantined(
                    example,
                    "length_outlier",
                    f"{int(chars)} characters, {side} than usual (z-score {score:.1f} on log length, "
                    f"threshold {threshold})",
                )
            )
        else:
            kept.append(example)
    return kept
