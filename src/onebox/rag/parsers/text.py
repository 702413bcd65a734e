"""Plain text: paragraphs split on blank lines, encoding detected (UTF-8, UTF-16 BOM, GB18030)."""

from __future__ import annotations

import re

from onebox.rag.parsers._common import ParseContext, clean_text, decode_bytes, text_element
from onebox.rag.types import ParsedDocument

_BLANK_LINE = re.compile(r"\n[ \t\u3000]*\n")


def parse(ctx: ParseContext) -> ParsedDocument:
    text, _ = decode_bytes(ctx.read_bytes(), ctx.source)
    text = clean_text(text)
    elements = [el for block in _BLANK_LINE.split(text) if (el := text_element("paragraph", block))]
    return ctx.document("txt", ctx.path.stem, elements)
