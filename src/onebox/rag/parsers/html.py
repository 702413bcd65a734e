"""HTML pages: boilerplate (script, style, nav...) dropped, headings h1-h6 as the heading path,
paragraphs, lists and tables in document order; the charset comes from BOM, <meta> or sniffing."""

from __future__ import annotations

import re
from typing import Any

from bs4 import BeautifulSoup, Comment, NavigableString, Tag

from onebox.rag.parsers._common import (
    HeadingTracker,
    ParseContext,
    clean_line,
    decode_bytes,
    table_elements,
    text_element,
)
from onebox.rag.types import Element, ElementKind, ParsedDocument

_DROP = ("script", "style", "nav", "noscript", "template", "svg", "iframe", "form", "button", "select")
_HEADINGS = {f"h{i}": i for i in range(1, 7)}
_BLOCKS = {
    "p", "div", "section", "article", "main", "header", "footer", "aside", "blockquote", "figure",
    "figcaption", "dl", "dt", "dd", "address", "body", "ul", "ol", "li", "tr", "td", "th", "hr",
}  # fmt: skip
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""", re.IGNORECASE)
_XML_ENCODING = re.compile(rb"""<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_\-.]+)""", re.IGNORECASE)


class _Walker:
    """Walks the tree once, flushing accumulated inline text at every block boundary."""

    def __init__(self, h1_is_title: bool) -> None:
        self.h1_is_title = h1_is_title
        self.headings = HeadingTracker()
        self.elements: list[Element] = []
        self.inline: list[str] = []
        self.title = ""

    def flush(self, kind: ElementKind = "paragraph") -> None:
        text = "".join(self.inline)
        if kind != "code":
            text = " ".join(text.split())  # HTML whitespace, newlines included, renders as one space
        self.inline = []
        if el := text_element(kind, text, heading_path=self.headings.path):
            self.elements.append(el)

    def walk(self, node: Tag) -> None:
        for child in node.children:
            self.visit(child)

    def visit(self, child: Any) -> None:
        if isinstance(child, Comment):
            return
        if isinstance(child, NavigableString):
            if str(child).strip():
                self.inline.append(str(child))
            return
        if not isinstance(child, Tag):
            return
        name = child.name
        if name in _HEADINGS:
            self.flush()
            self.heading(child, _HEADINGS[name])
        elif name == "table":
            self.flush()
            self.table(child)
        elif name == "pre":
            self.flush()
            self.inline = [child.get_text()]
            self.flush("code")
        elif name == "li":
            self.flush()
            self.list_item(child)
        elif name in _BLOCKS:
            self.flush()
            self.walk(child)
            self.flush()
        else:
            self.walk(child)  # inline: a, span, b, em, code...

    def list_item(self, item: Tag) -> None:
        """The item's own text is one element; nested lists and tables follow as their own."""
        for child in item.children:
            if isinstance(child, Tag) and child.name in ("ul", "ol", "table", "pre"):
                self.flush("list_item")
                self.visit(child)
            elif isinstance(child, Tag) and child.name in ("p", "div"):
                self.walk(child)  # a loose list item's paragraphs are still the item's text
            else:
                self.visit(child)
        self.flush("list_item")

    def heading(self, tag: Tag, level: int) -> None:
        text = clean_line(tag.get_text(" "))
        if not text:
            return
        if level == 1 and self.h1_is_title:
            self.title = self.title or text
            self.elements.append(Element("title", text))
            return
        above = self.headings.enter(level, text)
        self.elements.append(Element("heading", text, heading_path=above, level=level))

    def table(self, table: Tag) -> None:
        rows: list[list[str]] = []
        header_rows = 0
        for tr in table.find_all("tr"):
            if tr.find_parent("table") is not table:
                continue  # rows of a nested table belong to its cell's text
            cells = tr.find_all(["td", "th"], recursive=False)
            if not cells:
                continue
            in_head = tr.find_parent("thead") is not None or all(c.name == "th" for c in cells)
            if in_head and len(rows) == header_rows:
                header_rows += 1
            rows.append([clean_line(c.get_text(" ")) for c in cells])
        self.elements.extend(
            table_elements(rows, header_rows=header_rows or 1, heading_path=self.headings.path)
        )


def _decode(data: bytes, source: str) -> str:
    head = data[:4096]
    m = _META_CHARSET.search(head) or _XML_ENCODING.search(head)
    declared = m.group(1).decode("ascii", "replace") if m else None
    text, _ = decode_bytes(data, source, declared)
    return text


def parse(ctx: ParseContext) -> ParsedDocument:
    soup = BeautifulSoup(_decode(ctx.read_bytes(), ctx.source), "lxml")
    title_tag = soup.find("title")
    meta_title = clean_line(title_tag.get_text()) if title_tag else ""
    for tag in soup.find_all(_DROP):
        tag.decompose()
    root: Any = soup.body or soup
    h1s = root.find_all("h1")
    walker = _Walker(h1_is_title=len(h1s) == 1)  # a lone h1 is the page title, not a section
    walker.walk(root)
    walker.flush()
    title = (
        meta_title
        or walker.title
        or next((e.text for e in walker.elements if e.kind == "heading"), ctx.path.stem)
    )
    return ctx.document("html", title, walker.elements)
