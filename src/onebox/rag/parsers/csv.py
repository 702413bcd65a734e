"""CSV/TSV: one table (split into whole-row parts when huge), delimiter sniffed, header row kept."""

from __future__ import annotations

import csv
import io

from onebox.rag.parsers._common import ParseContext, decode_bytes, table_elements
from onebox.rag.types import ParsedDocument

_DELIMITERS = ",;\t|"


def _dialect(sample: str, is_tsv: bool) -> type[csv.Dialect] | csv.Dialect:
    if is_tsv:
        return csv.excel_tab
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS)
    except csv.Error:
        return csv.excel  # one column, or too irregular to guess: comma is the common case


def parse(ctx: ParseContext) -> ParsedDocument:
    text, _ = decode_bytes(ctx.read_bytes(), ctx.source)
    csv.field_size_limit(16 * 1024 * 1024)
    dialect = _dialect(text[: 64 * 1024], ctx.path.suffix.lower() == ".tsv")
    rows = list(csv.reader(io.StringIO(text, newline=""), dialect))
    elements = table_elements(rows, header_rows=1)
    return ctx.document("csv", ctx.path.stem, elements)
