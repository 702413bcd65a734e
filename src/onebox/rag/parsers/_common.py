"""Helpers every parser shares: text normalisation, decoding, tables, headings, the parse context.

Parsers differ in how they walk a file, but they must agree on what clean text is, how a table
is rendered and how heading paths are tracked, or chunks from different formats would not compare.
"""

from __future__ import annotations

import codecs
import io
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onebox.errors import CorruptDocumentError
from onebox.rag.types import Element, ElementKind, ParsedDocument

MAX_TABLE_ROWS = 400
"""Rows per ``table`` element; bigger tables become several elements (whole rows, header repeated)."""

# Control and invisible format characters that only ever get in the way of search and display.
_DROP = {c: None for c in range(0x20) if c not in (0x09, 0x0A)}
_DROP.update({0x7F: None, 0x00AD: None, 0x200B: None, 0x200E: None, 0x200F: None, 0xFEFF: None, 0x2060: None})
_DROP.update({c: None for c in range(0x80, 0xA0)})
_SPACES = re.compile(r"[^\S\n]+")
_BLANKS = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """NFC, no control characters, single spaces inside lines, at most one blank line in a row.

    Chinese punctuation and full-width characters are kept as typed (NFC, not NFKC): users search
    with the same characters they wrote.
    """
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = text.replace("\u2028", "\n").replace("\u2029", "\n").replace("\x0b", "\n").replace("\x0c", "\n")
    text = text.translate(_DROP)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def clean_line(text: str) -> str:
    """Like :func:`clean_text` but on one line (table cells, headings, titles)."""
    return _SPACES.sub(" ", clean_text(text).replace("\n", " ")).strip()


def cell_text(value: Any) -> str:
    """A spreadsheet or table value as the text a reader would see."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return ""
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if hasattr(value, "isoformat"):
        iso = value.isoformat()
        return iso.removesuffix("T00:00:00")
    return clean_line(str(value))


# --- decoding ---------------------------------------------------------------------------------------

_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_ALIASES = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "cp936": "gb18030",
    "x-gbk": "gb18030",
    "gb_2312-80": "gb18030",
}


def canonical_encoding(name: str) -> str | None:
    """Python codec for a declared charset; GB2312/GBK widen to GB18030 (a strict superset)."""
    name = name.strip().strip("\"'").lower()
    name = _ALIASES.get(name, name)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_bytes(data: bytes, source: str, declared: str | None = None) -> tuple[str, str]:
    """Decode text of unknown encoding: BOM, then a declared charset, then UTF-8, then GB18030.

    GB18030 decodes almost any byte string, so it comes after UTF-8; a file that is neither is
    refused rather than turned into mojibake.
    """
    for bom, enc in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(enc), enc
            except UnicodeDecodeError as exc:
                raise CorruptDocumentError(
                    f"{source}: starts with a {enc} byte-order mark but is not valid {enc}; "
                    "re-save it as UTF-8.",
                    source=source,
                ) from exc
    candidates = [canonical_encoding(declared)] if declared else []
    candidates += ["utf-8", "gb18030"]
    for enc in candidates:
        if not enc:
            continue
        try:
            return data.decode(enc), enc
        except UnicodeDecodeError:
            continue
    raise CorruptDocumentError(
        f"{source}: text is neither UTF-8 nor GB18030/GBK; re-save it as UTF-8.", source=source
    )


# --- tables -------------------------------------------------------------------------------------------


def normalise_rows(rows: Iterable[Sequence[Any]]) -> list[tuple[str, ...]]:
    """Clean cells, drop empty rows and empty trailing/all-empty columns, pad rows to one width."""
    cleaned = [[cell_text(c) if not isinstance(c, str) else clean_line(c) for c in row] for row in rows]
    cleaned = [row for row in cleaned if any(row)]
    if not cleaned:
        return []
    width = max(len(r) for r in cleaned)
    cleaned = [r + [""] * (width - len(r)) for r in cleaned]
    keep = [j for j in range(width) if any(r[j] for r in cleaned)]
    return [tuple(r[j] for j in keep) for r in cleaned]


def render_rows(rows: Sequence[Sequence[str]]) -> str:
    """Rows one per line as ``| a | b |`` (pipes inside cells escaped)."""
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows)


def table_elements(
    rows: Sequence[Sequence[Any]], *, header_rows: int = 1, max_rows: int = MAX_TABLE_ROWS, **where: Any
) -> list[Element]:
    """One ``table`` element, or several for a huge table: split between rows, header repeated."""
    clean = normalise_rows(rows)
    if not clean:
        return []
    header_rows = min(header_rows, len(clean)) if len(clean) > 1 else 0
    head, body = clean[:header_rows], clean[header_rows:]
    step = max(1, max_rows - header_rows)
    out = []
    for i in range(0, max(len(body), 1), step):
        part = tuple(head + body[i : i + step])
        out.append(Element("table", render_rows(part), rows=part, header_rows=header_rows, **where))
    return out


# --- headings and context -----------------------------------------------------------------------------


class HeadingTracker:
    """Keeps the stack of open headings so every element knows the section it sits in."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(text for _, text in self._stack)

    def enter(self, level: int, text: str) -> tuple[str, ...]:
        """Open a heading; returns the path *above* it (what the heading element itself carries)."""
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        above = self.path
        self._stack.append((level, text))
        return above


@dataclass
class ParseContext:
    """What one parse needs besides the file: the user's name for it, options, and warnings.

    ``data``, when given, is the document's content and ``path`` only names it: a sealed source
    is decrypted in memory and handed to the parsers as bytes, never written out in plaintext."""

    path: Path
    source: str
    ocr: bool = True
    warnings: list[str] = field(default_factory=list)
    data: bytes | None = field(default=None, repr=False)

    def read_bytes(self) -> bytes:
        return self.data if self.data is not None else self.path.read_bytes()

    def file(self) -> io.BytesIO | str:
        """What a parser library opens: an in-memory file for ``data``, else the path."""
        return io.BytesIO(self.data) if self.data is not None else str(self.path)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def document(self, fmt: str, title: str, elements: Iterable[Element], pages: int = 0) -> ParsedDocument:
        kept = tuple(e for e in elements if e.text.strip())
        title = clean_line(title) or self.path.stem
        return ParsedDocument(self.source, fmt, title, kept, pages, tuple(self.warnings))


def text_element(kind: ElementKind, text: str, **where: Any) -> Element | None:
    """An element with cleaned text, or None when nothing is left after cleaning."""
    text = clean_line(text) if kind in ("heading", "title") else clean_text(text)
    return Element(kind, text, **where) if text else None


def is_cjk(ch: str) -> bool:
    """True for Han ideographs, kana, hangul and full-width punctuation (no spaces between these)."""
    o = ord(ch)
    return (
        0x2E80 <= o <= 0x9FFF
        or 0xAC00 <= o <= 0xD7AF
        or 0xF900 <= o <= 0xFAFF
        or 0xFF00 <= o <= 0xFFEF
        or 0x20000 <= o <= 0x3FFFF
    )


def join_fragments(parts: Iterable[str]) -> str:
    """Join wrapped pieces of text: no space between two CJK characters, one space otherwise."""
    out = ""
    for part in parts:
        part = part.strip()
        if not part:
            continue
        if out and not (is_cjk(out[-1]) and is_cjk(part[0])):
            out += " "
        out += part
    return out
