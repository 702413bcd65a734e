"""Word documents: body in reading order (paragraphs and tables interleaved), heading paths, lists,
and headers/footers once per document."""

from __future__ import annotations

import re
from typing import Any

import docx
from docx.oxml.ns import qn
from docx.table import Table
from docx.text.paragraph import Paragraph

from onebox.rag.parsers._common import HeadingTracker, ParseContext, clean_line, table_elements, text_element
from onebox.rag.types import Element, ParsedDocument

_HEADING_STYLE = re.compile(r"^(?:heading|标题)\s*(\d)$", re.IGNORECASE)


def _heading_level(par: Paragraph) -> int:
    """Heading level from the style name or its outline level; 0 for body text."""
    style = par.style
    while style is not None:
        m = _HEADING_STYLE.match(style.name or "")
        if m:
            return int(m.group(1))
        ppr = style.element.pPr
        outline = ppr.find(qn("w:outlineLvl")) if ppr is not None else None
        if outline is not None:
            level = int(outline.get(qn("w:val"), "9"))
            return level + 1 if level < 9 else 0
        style = style.base_style
    return 0


def _is_list(par: Paragraph) -> bool:
    ppr = par._p.pPr
    if ppr is not None and ppr.numPr is not None:
        return True
    name = (par.style.name if par.style is not None else "") or ""
    return name.lower().startswith(("list", "列表"))


def _table_rows(table: Table) -> list[list[str]]:
    rows = []
    for row in table.rows:
        seen: set[int] = set()
        cells = []
        for cell in row.cells:
            if id(cell._tc) in seen:
                continue  # a horizontally merged cell is returned once per grid column
            seen.add(id(cell._tc))
            cells.append(clean_line(cell.text))
        rows.append(cells)
    return rows


def _part_text(part: Any) -> str:
    """Text of a header or footer part, tables included."""
    lines = [p.text for p in part.paragraphs]
    for table in part.tables:
        lines.extend(" ".join(r) for r in _table_rows(table))
    return "\n".join(line for line in lines if line.strip())


def _margins(document: Any) -> tuple[list[str], list[str]]:
    headers: list[str] = []
    footers: list[str] = []
    for section in document.sections:
        pairs = [(section.header, headers), (section.footer, footers)]
        if section.different_first_page_header_footer:
            pairs += [(section.first_page_header, headers), (section.first_page_footer, footers)]
        if document.settings.odd_and_even_pages_header_footer:
            pairs += [(section.even_page_header, headers), (section.even_page_footer, footers)]
        for part, out in pairs:
            if part.is_linked_to_previous and out:
                continue
            text = _part_text(part)
            if text and text not in out:
                out.append(text)
    return headers, footers


def parse(ctx: ParseContext) -> ParsedDocument:
    document = docx.Document(ctx.file())
    headings = HeadingTracker()
    body: list[Element] = []
    title = clean_line(document.core_properties.title or "")
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            body.extend(table_elements(_table_rows(block), header_rows=1, heading_path=headings.path))
            continue
        text = block.text
        if not text.strip():
            continue
        style_name = (block.style.name if block.style is not None else "") or ""
        if style_name.lower() in ("title", "标题"):
            el = text_element("title", text)
            title = title or (el.text if el else "")
        elif level := _heading_level(block):
            above = headings.enter(level, clean_line(text))
            el = text_element("heading", text, heading_path=above, level=level)
        else:
            kind = "list_item" if _is_list(block) else "paragraph"
            el = text_element(kind, text, heading_path=headings.path)
        if el:
            body.append(el)
    headers, footers = _margins(document)
    elements = [
        *(e for h in headers if (e := text_element("header", h))),
        *body,
        *(e for f in footers if (e := text_element("footer", f))),
    ]
    if not title:
        title = next((e.text for e in body if e.kind == "heading"), ctx.path.stem)
    return ctx.document("docx", title, elements)
