"""XLSX workbooks: every non-empty sheet becomes table elements with ``sheet`` set."""

from __future__ import annotations

import openpyxl

from onebox.rag.parsers._common import ParseContext, table_elements
from onebox.rag.types import Element, ParsedDocument


def parse(ctx: ParseContext) -> ParsedDocument:
    # read_only streams rows (large sheets fit in memory); data_only gives cached formula results.
    wb = openpyxl.load_workbook(ctx.file(), read_only=True, data_only=True)
    try:
        elements: list[Element] = []
        sheets = wb.worksheets
        for ws in sheets:
            if not hasattr(ws, "iter_rows"):
                continue  # chart sheets hold no cells
            tables = table_elements(ws.iter_rows(values_only=True), header_rows=1, sheet=ws.title)
            if not tables:
                ctx.warn(f"{ctx.source}: sheet {ws.title!r} is empty and was skipped.")
            elements.extend(tables)
        title = wb.properties.title or ctx.path.stem
    finally:
        wb.close()
    return ctx.document("xlsx", title, elements, len(sheets))
