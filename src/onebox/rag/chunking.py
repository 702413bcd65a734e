"""Parsed elements → token-budgeted chunks that respect the document's structure.

Retrieval quality and citations both depend on chunks being whole thoughts: a sentence cut in
two matches neither half's question, and a table row without its header is just numbers. So the
chunker cuts only between sentences (or table rows), starts a new chunk at every heading, sheet or
slide, merges small paragraphs of one section up to the budget, repeats table headers, and carries
a few whole sentences of overlap from the previous chunk of the same section.

The budget is in tokens of the embedding model (``count_tokens`` is injected) and covers what is
embedded, ``Chunk.embed_text(title)``: title, heading path and passage together. Token counts of
pieces are summed as an estimate and every chunk is re-counted exactly before it is emitted.
Last resorts, in order, for a sentence longer than the budget: clause punctuation, then word or
character boundaries. Chunk ids are ``<doc_id>:<ordinal>``, so the same input gives the same ids.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from onebox.errors import ConfigError, ErrorList
from onebox.rag.types import Chunk, Element

CountTokens = Callable[[str], int]

DEFAULT_MAX_TOKENS = 250
"""all-MiniLM-L6-v2 takes 256 word pieces with [CLS]/[SEP]: 254 of text, minus a small margin."""
DEFAULT_OVERLAP_TOKENS = 40
DEFAULT_SKIP_KINDS = ("header", "footer")
"""Running page headers and footers repeat on every page and only add noise to retrieval."""

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002ffff"
_CJK_END = set("。！？；…")
_ASCII_END = set(".!?")
_CLOSERS = set("”’」』）)】》〉]\"'")
_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "cf",
        "al",
        "fig",
        "figs",
        "no",
        "nos",
        "vol",
        "pp",
        "ed",
        "eds",
        "approx",
        "dept",
        "est",
        "inc",
        "ltd",
        "co",
        "corp",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "u.s",
        "u.k",
        "a.m",
        "p.m",
    ]
)
_TITLES = frozenset(
    ["mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "cf", "fig", "figs", "vol", "pp", "e.g", "i.e"]
)
"""Abbreviations that are never the end of a sentence, whatever follows."""
_WORD_BEFORE = re.compile(r"(?<![A-Za-z])([A-Za-z](?:[A-Za-z.]*[A-Za-z])?)\.$")
_CLAUSE = re.compile(r"(?<=[，、：；])|(?<=[,;:])(?=\s)")
_ATOM = re.compile(rf"[{_CJK}]\s*|[^\s{_CJK}]+\s*|\s+")


@dataclass(frozen=True)
class ChunkingConfig:
    """Budgets checked once, before any document is touched."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS
    skip_kinds: tuple[str, ...] = DEFAULT_SKIP_KINDS

    def __post_init__(self) -> None:
        errs = ErrorList()
        if self.max_tokens < 16:
            errs.add("max_tokens", f"is {self.max_tokens}; must be at least 16")
        if self.overlap_tokens < 0 or self.overlap_tokens > self.max_tokens // 2:
            errs.add("overlap_tokens", f"is {self.overlap_tokens}; must be in [0, max_tokens / 2]")
        errs.raise_if_any("invalid chunking settings", ConfigError)


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` in order, each with its trailing whitespace, so ``"".join`` restores it.

    Chinese ends (。！？；…) always end a sentence, with any closing quotes after them. English
    ``. ! ?`` end one only before whitespace (so ``3.50``, ``a.php?x=1`` stay whole), and a period
    after a known abbreviation or a single initial does not (``Mr. Smith``, ``e.g. this``, ``J. Doe``),
    nor before a lower-case word. A blank line always ends a sentence.
    """
    out: list[str] = []
    start, i, n = 0, 0, len(text)
    while i < n:
        ch = text[i]
        end = -1
        if ch in _CJK_END or ch in _ASCII_END:
            j = i
            while j < n and (text[j] in _CJK_END or text[j] in _ASCII_END):
                j += 1
            while j < n and text[j] in _CLOSERS:
                j += 1
            run = text[i:j]
            if any(c in _CJK_END for c in run) or _ascii_boundary(text, i, j):
                end = j
            i = j
        elif ch == "\n" and "\n" in text[i + 1 : i + 1 + _blank_run(text, i + 1)]:
            end = i
            i += 1
        else:
            i += 1
        if end >= 0:
            while end < n and text[end].isspace():
                end += 1
            if text[start:end].strip():
                out.append(text[start:end])
                start = end
            i = max(i, end)
    if start < n and text[start:].strip():
        out.append(text[start:])
    elif start < n and out:
        out[-1] += text[start:]
    return out


def _blank_run(text: str, i: int) -> int:
    """Length of the whitespace run starting at ``i`` (to spot a blank line)."""
    j = i
    while j < len(text) and text[j].isspace():
        j += 1
    return j - i


def _ascii_boundary(text: str, i: int, j: int) -> bool:
    """Whether the ASCII punctuation run ``text[i:j]`` ends a sentence (see split_sentences)."""
    if j < len(text) and not text[j].isspace() and not re.match(rf"[{_CJK}]", text[j]):
        return False
    if text[i:j].rstrip("".join(_CLOSERS)) != ".":
        return True  # "!", "?", "...", "?!": the writer meant an end
    nxt = text[j:].lstrip()[:1]
    m = _WORD_BEFORE.search(text[max(0, i - 40) : i + 1])
    if m:
        word = m.group(1)
        low = word.lower()
        if low in _TITLES or (len(word) == 1 and word.isupper()):
            return False  # "Dr. Li", "e.g. this", "J. Doe"
        if low in _ABBREVIATIONS:
            return not nxt or nxt.isupper() or bool(re.match(rf"[{_CJK}]", nxt))
    return not (nxt and nxt.islower())


@dataclass
class _Unit:
    """An indivisible piece of chunk text: a sentence, a clause piece, a table (part) or code lines."""

    text: str
    tokens: int
    page: int | None
    elem: int
    """Index of the element it came from: units of different elements are joined by a newline."""
    whole_sentence: bool = False
    """Only whole sentences are repeated as overlap."""


@dataclass
class _Section:
    key: tuple[tuple[str, ...], str | None, int | None]
    """(heading path, sheet, slide) as the elements gave them: a change starts a new chunk."""
    path: tuple[str, ...]
    """Heading path put on the chunks (outer headings dropped if it would not fit)."""
    avail: int
    """Tokens left for the passage once title and headings are counted."""
    units: list[_Unit] = field(default_factory=list)
    carried: int = 0
    """How many leading units are overlap from the previous chunk."""


class _Chunker:
    def __init__(self, doc_id: str, title: str, count: CountTokens, cfg: ChunkingConfig) -> None:
        self.doc_id, self.title, self.count, self.cfg = doc_id, title, count, cfg
        self.chunks: list[Chunk] = []
        self.sec: _Section | None = None

    # --- sections -------------------------------------------------------------------------
    def enter(self, path: tuple[str, ...], sheet: str | None, slide: int | None) -> _Section:
        key = (path, sheet, slide)
        if self.sec is not None and self.sec.key == key:
            return self.sec
        self.close_section()
        kept = self._fit_head(path)
        head = self._head(kept)
        avail = self.cfg.max_tokens - (self.count(head) if head else 0)
        self.sec = _Section(key, kept, max(avail, 1))
        return self.sec

    def close_section(self) -> None:
        if self.sec is not None:
            self.flush(carry=False)
        self.sec = None

    def _head(self, path: Sequence[str]) -> str:
        return " / ".join(p for p in (self.title, *path) if p)

    def _fit_head(self, path: tuple[str, ...]) -> tuple[str, ...]:
        """Keep title + headings within half the budget: drop outer headings, then cut the inner one."""
        limit = self.cfg.max_tokens // 2
        kept = list(path)
        while kept and self.count(self._head(kept)) > limit:
            if len(kept) > 1:
                kept.pop(0)
                continue
            room = limit - (self.count(self.title + " /") if self.title else 0)
            if room <= 0:
                return ()
            kept[0] = _pack(_atoms(kept[0]), room, self.count)[0].strip()
            break
        return tuple(kept)

    # --- units ----------------------------------------------------------------------------
    def add(self, unit: _Unit) -> None:
        sec = self.sec
        assert sec is not None
        while sec.units and sum(u.tokens for u in sec.units) + unit.tokens > sec.avail:
            if len(sec.units) > sec.carried:
                self.flush(carry=True)
            else:  # overlap must leave room for the new unit: drop carried sentences from the front
                sec.units.pop(0)
                sec.carried -= 1
        sec.units.append(unit)

    def flush(self, *, carry: bool) -> None:
        """Emit the open chunk (unless it is only overlap); start the next with overlap if asked."""
        sec = self.sec
        if sec is None:
            return
        units, carried = list(sec.units), sec.carried
        sec.units, sec.carried = [], 0
        if len(units) <= carried:
            return
        spill: list[_Unit] = []
        while True:  # exact re-count: summed piece counts are an estimate
            chunk = self._make_chunk(units)
            if chunk.n_tokens <= self.cfg.max_tokens or len(units) <= 1:
                break
            if len(units) - carried > 1:
                spill.insert(0, units.pop())
            else:
                units.pop(0)
                carried -= 1
        self.chunks.append(chunk)
        keep: list[_Unit] = []
        if carry and not spill and self.cfg.overlap_tokens:
            budget = self.cfg.overlap_tokens
            for u in reversed(units[carried:]):
                if not u.whole_sentence or u.tokens > budget:
                    break
                keep.insert(0, u)
                budget -= u.tokens
        sec.units, sec.carried = keep, len(keep)
        for u in spill:
            self.add(u)

    def _make_chunk(self, units: list[_Unit]) -> Chunk:
        sec = self.sec
        assert sec is not None
        text = _join(units)
        pages = [u.page for u in units if u.page is not None]
        ordinal = len(self.chunks)
        chunk = Chunk(
            chunk_id=f"{self.doc_id}:{ordinal}",
            doc_id=self.doc_id,
            ordinal=ordinal,
            text=text,
            heading_path=sec.path,
            page_start=min(pages) if pages else None,
            page_end=max(pages) if pages else None,
            sheet=sec.key[1],
            slide=sec.key[2],
        )
        n = self.count(chunk.embed_text(self.title))
        return Chunk(**{**chunk.__dict__, "n_tokens": n})

    # --- elements -------------------------------------------------------------------------
    def text_units(self, text: str, page: int | None, elem: int) -> list[_Unit]:
        sec = self.sec
        assert sec is not None
        out: list[_Unit] = []
        for sentence in split_sentences(text):
            n = self.count(sentence)
            if n <= sec.avail:
                out.append(_Unit(sentence, n, page, elem, whole_sentence=True))
                continue
            for piece in _split_long(sentence, sec.avail, self.count):
                out.append(_Unit(piece, self.count(piece), page, elem))
        return out

    def code_units(self, text: str, page: int | None, elem: int) -> list[_Unit]:
        sec = self.sec
        assert sec is not None
        lines = text.splitlines(keepends=True)
        return [_Unit(p, self.count(p), page, elem) for p in _pack(lines, sec.avail, self.count, _atoms)]

    def table(self, el: Element, elem: int) -> None:
        sec = self.sec
        assert sec is not None
        rows = [_render_row(r) for r in el.rows] if el.rows else el.text.splitlines()
        rows = [r for r in rows if r.strip()]
        if not rows:
            return
        whole = "\n".join(rows)
        n_whole = self.count(whole)
        used = sum(u.tokens for u in sec.units)
        if used + n_whole <= sec.avail or n_whole <= sec.avail:
            if used + n_whole > sec.avail:
                self.flush(carry=False)
            sec.units.append(_Unit(whole, n_whole, el.page, elem))
            return
        self.flush(carry=False)
        n_head = min(el.header_rows, len(rows))
        header = "\n".join(rows[:n_head])
        head_tokens = self.count(header) if header else 0
        body = rows[n_head:]
        if head_tokens > sec.avail // 2:  # a header that big cannot be repeated: treat it as rows
            header, head_tokens, body = "", 0, rows
        room = sec.avail - head_tokens
        pieces: list[str] = []
        for row in body:
            n = self.count(row)
            pieces.extend(
                [row + "\n"] if n <= room else [p + "\n" for p in _split_row(row, room, self.count)]
            )
        for group in _pack(pieces, room, self.count):
            text = f"{header}\n{group}" if header else group
            self.flush(carry=False)
            sec.units.append(_Unit(text.rstrip("\n"), self.count(text), el.page, elem))


def _render_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(" ".join(c.split()) for c in cells) + " |"


def _split_row(row: str, room: int, count: CountTokens) -> list[str]:
    """Last resort for a table row longer than the budget: cut between cells, then inside them."""
    cells = [c + "|" for c in row.split("|")[:-1]] + [row.split("|")[-1]]
    return [p for p in _pack([c for c in cells if c], room, count, _atoms) if p.strip()]


def _atoms(text: str) -> list[str]:
    """Word-with-its-space or single CJK character: the finest cut that keeps tokens whole."""
    return _ATOM.findall(text)


def _split_long(sentence: str, avail: int, count: CountTokens) -> list[str]:
    """A sentence over budget: split at clause punctuation, then at word/character boundaries."""
    clauses = [c for c in _CLAUSE.split(sentence) if c]
    return _pack(clauses, avail, count, _atoms)


def _pack(
    pieces: list[str],
    avail: int,
    count: CountTokens,
    finer: Callable[[str], list[str]] | None = None,
) -> list[str]:
    """Concatenate consecutive pieces greedily into strings of at most ``avail`` tokens.

    A piece over budget is cut with ``finer`` (then into characters); each group's estimated
    count is checked exactly, giving back pieces until it fits.
    """
    flat: list[tuple[str, int]] = []
    for p in pieces:
        n = count(p)
        if n <= avail:
            flat.append((p, n))
        elif finer is not None and len(sub := finer(p)) > 1:
            flat.extend((s, count(s)) for s in _pack(sub, avail, count))
        elif len(p) > 1:
            flat.extend((s, count(s)) for s in _pack(list(p), avail, count))
        else:
            flat.append((p, n))  # one character over budget: nothing smaller exists
    out: list[str] = []
    i = 0
    while i < len(flat):
        j, total = i, 0
        while j < len(flat) and (j == i or total + flat[j][1] <= avail):
            total += flat[j][1]
            j += 1
        while j - i > 1 and count("".join(p for p, _ in flat[i:j])) > avail:
            j -= 1
        out.append("".join(p for p, _ in flat[i:j]))
        i = j
    return out


def _join(units: list[_Unit]) -> str:
    parts: list[str] = []
    prev = None
    for u in units:
        if prev is not None and u.elem != prev:
            parts[-1] = parts[-1].rstrip()
            parts.append("\n")
        parts.append(u.text)
        prev = u.elem
    return "".join(parts).strip()


def chunk_elements(
    doc_id: str,
    elements: Sequence[Element],
    *,
    count_tokens: CountTokens,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    overlap_tokens: int | None = None,
    title: str = "",
    skip_kinds: tuple[str, ...] = DEFAULT_SKIP_KINDS,
) -> list[Chunk]:
    """Chunks of one document in reading order; ``count_tokens(chunk.embed_text(title)) <= max_tokens``.

    ``overlap_tokens`` defaults to ``DEFAULT_OVERLAP_TOKENS`` or a sixth of ``max_tokens`` if less.
    Pass the same ``title`` the index will embed with, so the budget covers it. Heading elements
    are not repeated in the text: they become ``Chunk.heading_path`` of what follows them.
    """
    if overlap_tokens is None:
        overlap_tokens = min(DEFAULT_OVERLAP_TOKENS, max(max_tokens, 0) // 6)
    cfg = ChunkingConfig(max_tokens=max_tokens, overlap_tokens=overlap_tokens, skip_kinds=skip_kinds)
    ck = _Chunker(doc_id, title, count_tokens, cfg)
    stack: tuple[str, ...] = ()
    for idx, el in enumerate(elements):
        if el.kind in cfg.skip_kinds:
            continue
        text = el.text.strip()
        if el.kind in ("heading", "title"):
            ck.close_section()
            stack = (*el.heading_path, text) if el.kind == "heading" and text else tuple(el.heading_path)
            if el.kind == "heading" or not text or text == title:
                continue
        if not text and not el.rows:
            continue
        ck.enter(el.heading_path or stack, el.sheet, el.slide)
        if el.kind == "table":
            ck.table(el, idx)
            continue
        maker = ck.code_units if el.kind == "code" else ck.text_units
        for unit in maker(el.text if el.kind == "code" else text, el.page, idx):
            ck.add(unit)
    ck.close_section()
    return ck.chunks
