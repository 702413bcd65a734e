"""Markdown (CommonMark + pipe tables) through markdown-it-py's token stream: headings, paragraphs,
list items, code blocks and tables, with inline markup reduced to its text."""

from __future__ import annotations

from markdown_it import MarkdownIt
from markdown_it.token import Token

from onebox.rag.parsers._common import (
    HeadingTracker,
    ParseContext,
    decode_bytes,
    table_elements,
    text_element,
)
from onebox.rag.types import Element, ParsedDocument


def _inline_text(token: Token) -> str:
    """Plain text of an inline token: emphasis and link markup dropped, image alt text kept."""
    parts: list[str] = []
    for child in token.children or ():
        if child.type in ("text", "code_inline", "html_inline"):
            parts.append(child.content if child.type != "html_inline" else "")
        elif child.type in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif child.type == "image":
            parts.append(child.content)
    return "".join(parts)


def parse(ctx: ParseContext) -> ParsedDocument:
    text, _ = decode_bytes(ctx.read_bytes(), ctx.source)
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    h1_is_title = sum(1 for t in tokens if t.type == "heading_open" and t.tag == "h1") == 1
    headings = HeadingTracker()
    elements: list[Element] = []
    title = ""
    list_depth = 0
    table: list[list[str]] | None = None
    row: list[str] = []
    head_rows = 0
    for i, tok in enumerate(tokens):
        if tok.type in ("bullet_list_open", "ordered_list_open"):
            list_depth += 1
        elif tok.type in ("bullet_list_close", "ordered_list_close"):
            list_depth -= 1
        elif tok.type == "heading_open":
            level = int(tok.tag[1])
            content = _inline_text(tokens[i + 1])
            if level == 1 and h1_is_title:
                title = title or content
                el = text_element("title", content)
            else:
                above = headings.enter(level, " ".join(content.split()))
                el = text_element("heading", content, heading_path=above, level=level)
            if el:
                elements.append(el)
        elif tok.type == "paragraph_open" and tokens[i + 1].type == "inline":
            kind = "list_item" if list_depth else "paragraph"
            if el := text_element(kind, _inline_text(tokens[i + 1]), heading_path=headings.path):
                elements.append(el)
        elif tok.type in ("fence", "code_block"):
            if el := text_element("code", tok.content, heading_path=headings.path):
                elements.append(el)
        elif tok.type == "html_block":
            if el := text_element("paragraph", _strip_tags(tok.content), heading_path=headings.path):
                elements.append(el)
        elif tok.type == "table_open":
            table, head_rows = [], 0
        elif tok.type == "tr_open":
            row = []
        elif tok.type in ("th_open", "td_open") and table is not None:
            row.append(_inline_text(tokens[i + 1]) if tokens[i + 1].type == "inline" else "")
        elif tok.type == "tr_close" and table is not None:
            table.append(row)
        elif tok.type == "thead_close" and table is not None:
            head_rows = len(table)
        elif tok.type == "table_close" and table is not None:
            elements.extend(table_elements(table, header_rows=head_rows, heading_path=headings.path))
            table = None
    title = title or next((e.text for e in elements if e.kind == "heading"), ctx.path.stem)
    return ctx.document("md", title, elements)


def _strip_tags(html: str) -> str:
    from bs4 import BeautifulSoup

    return BeautifulSoup(html, "lxml").get_text("\n")
