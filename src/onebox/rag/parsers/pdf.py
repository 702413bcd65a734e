"""PDF: text layer with 1-based pages, tables as ``table`` elements (kept out of the paragraph text),
headings from font size, repeated page headers/footers reported once, and OCR for pages that have
no text layer (scans)."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pdfplumber

from onebox.errors import CorruptDocumentError, DocumentError, EncryptedDocumentError
from onebox.rag.parsers._common import ParseContext, clean_line, join_fragments, table_elements, text_element
from onebox.rag.types import Element, ParsedDocument

OCR_SCALE = 2.0
"""Render scale for OCR (72 dpi x 2 = 144 dpi): enough for body text, fast on a CPU."""


@dataclass
class _Line:
    top: float
    bottom: float
    text: str
    size: float


def _error(exc: BaseException, source: str) -> DocumentError:
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(chain) < 8:
        chain.append(cur)
        cur = (
            cur.__cause__
            or cur.__context__
            or (cur.args[0] if cur.args and isinstance(cur.args[0], BaseException) else None)
        )
    names = " ".join(type(e).__name__ for e in chain) + " " + " ".join(str(e) for e in chain)
    if re.search(r"password|encrypt", names, re.IGNORECASE):
        return EncryptedDocumentError(
            f"{source}: the PDF is password-protected; save an unprotected copy (print to PDF or remove "
            "the password in your PDF reader) and add that.",
            source=source,
        )
    return CorruptDocumentError(
        f"{source}: the PDF is damaged and cannot be read ({type(chain[-1]).__name__}: {chain[-1]}); "
        "get a fresh copy, or open it in a PDF reader and save it again.",
        source=source,
    )


def parse(ctx: ParseContext) -> ParsedDocument:
    try:
        with pdfplumber.open(ctx.file()) as pdf:
            return _parse(ctx, pdf)
    except DocumentError:
        raise
    except Exception as exc:  # pdfminer raises many unrelated types for one damaged file
        raise _error(exc, ctx.source) from exc


def _page_content(page: Any) -> tuple[list[_Line], list[tuple[float, list[list[Any]]]]]:
    """Lines of text outside tables, and the page's tables with their top coordinate."""
    tables = page.find_tables()
    boxes = [t.bbox for t in tables]

    def outside(obj: dict[str, Any]) -> bool:
        if obj.get("object_type") != "char":
            return True
        cx, cy = (obj["x0"] + obj["x1"]) / 2, (obj["top"] + obj["bottom"]) / 2
        return not any(x0 <= cx <= x1 and top <= cy <= bottom for x0, top, x1, bottom in boxes)

    text_page = page.filter(outside) if boxes else page
    lines = []
    for raw in text_page.extract_text_lines(strip=True, return_chars=True):
        text = clean_line(raw["text"])
        if text:
            sizes = [c.get("size", 0.0) for c in raw["chars"]] or [0.0]
            lines.append(_Line(raw["top"], raw["bottom"], text, statistics.median(sizes)))
    return lines, [(t.bbox[1], t.extract()) for t in tables]


def _margin_texts(pages: list[list[_Line]], index: int) -> set[str]:
    """Lines at the same edge (first or last) of most pages: running headers or footers."""
    if len(pages) < 2:
        return set()
    counts: Counter[str] = Counter()
    for lines in pages:
        if lines:
            counts[re.sub(r"\d+", "#", lines[index].text)] += 1
    need = max(2, (len(pages) + 1) // 2)
    return {key for key, n in counts.items() if n >= need}


def _parse(ctx: ParseContext, pdf: Any) -> ParsedDocument:
    page_lines: list[list[_Line]] = []
    page_tables: list[list[tuple[float, list[list[Any]]]]] = []
    ocr_pages: list[int] = []
    for number, page in enumerate(pdf.pages, start=1):
        lines, tables = _page_content(page)
        if not lines and not tables and not page.chars:
            ocr_pages.append(number)
        page_lines.append(lines)
        page_tables.append(tables)

    header_keys, footer_keys = _margin_texts(page_lines, 0), _margin_texts(page_lines, -1)
    headers: list[str] = []
    footers: list[str] = []
    for lines in page_lines:
        if lines and re.sub(r"\d+", "#", lines[0].text) in header_keys:
            text = lines.pop(0).text
            if not headers:
                headers.append(text)
        if lines and re.sub(r"\d+", "#", lines[-1].text) in footer_keys:
            text = lines.pop().text
            if not footers:
                footers.append(text)

    sizes = Counter(round(line.size * 2) / 2 for lines in page_lines for line in lines for _ in line.text)
    body_size = sizes.most_common(1)[0][0] if sizes else 0.0
    heading_sizes = sorted({s for s in sizes if body_size and s >= body_size * 1.15}, reverse=True)[:3]

    ocr_text = _ocr_pages(ctx, ocr_pages) if ocr_pages else {}
    out = _Builder([e for h in headers if (e := text_element("header", h))], heading_sizes)
    for number, (lines, tables) in enumerate(zip(page_lines, page_tables, strict=True), start=1):
        out.page(number, lines, tables)
        for text in ocr_text.get(number, []):
            out.add(text_element("paragraph", text, heading_path=out.path, page=number, ocr=True))
    elements = out.elements
    elements.extend(e for f in footers if (e := text_element("footer", f)))

    meta = pdf.metadata or {}
    title = meta.get("Title") if isinstance(meta.get("Title"), str) else ""
    title = "" if title.strip().lower() in ("untitled", "(anonymous)") else title
    title = title or next((e.text for e in elements if e.kind == "heading"), ctx.path.stem)
    return ctx.document("pdf", title, elements, len(page_lines))


class _Builder:
    """Turns a page's lines and tables, in vertical order, into paragraphs, headings and tables."""

    def __init__(self, elements: list[Element], heading_sizes: list[float]) -> None:
        self.elements = elements
        self.heading_sizes = heading_sizes
        self.stack: list[tuple[int, str]] = []
        self.para: list[_Line] = []

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(text for _, text in self.stack)

    def add(self, element: Element | None) -> None:
        if element is not None:
            self.elements.append(element)

    def flush(self, number: int) -> None:
        if self.para:
            text = join_fragments(line.text for line in self.para)
            self.add(text_element("paragraph", text, heading_path=self.path, page=number))
        self.para = []

    def page(self, number: int, lines: list[_Line], tables: list[tuple[float, list[list[Any]]]]) -> None:
        items: list[tuple[float, _Line | list[list[Any]]]] = [(line.top, line) for line in lines]
        items += tables
        items.sort(key=lambda item: item[0])
        for _, item in items:
            if not isinstance(item, _Line):
                self.flush(number)
                self.elements.extend(table_elements(item, header_rows=1, heading_path=self.path, page=number))
                continue
            size = round(item.size * 2) / 2
            if size in self.heading_sizes and len(item.text) <= 80:
                self.flush(number)
                level = self.heading_sizes.index(size) + 1
                while self.stack and self.stack[-1][0] >= level:
                    self.stack.pop()
                self.add(Element("heading", item.text, heading_path=self.path, page=number, level=level))
                self.stack.append((level, item.text))
                continue
            if self.para:
                prev = self.para[-1]
                if item.top - prev.bottom > 0.6 * max(1.0, prev.bottom - prev.top):
                    self.flush(number)
            self.para.append(item)
        self.flush(number)


def _ocr_pages(ctx: ParseContext, numbers: list[int]) -> dict[int, list[str]]:
    """Render pages without a text layer and OCR them (pdfplumber bundles pypdfium2)."""
    if not ctx.ocr:
        pages = ", ".join(map(str, numbers))
        ctx.warn(f"{ctx.source}: page(s) {pages} have no text layer (scanned?) and OCR is disabled.")
        return {}
    import pypdfium2

    from onebox.rag.parsers.ocr import ocr_image

    out: dict[int, list[str]] = {}
    doc = pypdfium2.PdfDocument(ctx.data if ctx.data is not None else str(ctx.path))
    try:
        for number in numbers:
            page = doc[number - 1]
            try:
                image = page.render(scale=OCR_SCALE).to_pil()
            finally:
                page.close()
            paragraphs = ocr_image(image)
            if not paragraphs:
                ctx.warn(f"{ctx.source}: page {number} has no text layer and OCR found no text on it.")
            out[number] = paragraphs
    finally:
        doc.close()
    return out
