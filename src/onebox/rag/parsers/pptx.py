"""PowerPoint: per slide its title (as heading), text frames and tables in reading order, then the
speaker notes (``kind='note'``), all with the slide number."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pptx
from pptx.enum.shapes import MSO_SHAPE_TYPE, PP_PLACEHOLDER

from onebox.rag.parsers._common import ParseContext, clean_line, table_elements, text_element
from onebox.rag.types import Element, ParsedDocument

_TITLE_TYPES = {PP_PLACEHOLDER.TITLE, PP_PLACEHOLDER.CENTER_TITLE, PP_PLACEHOLDER.VERTICAL_TITLE}


def _shapes(shapes: Any) -> Iterator[Any]:
    """Shapes top-to-bottom, left-to-right, groups flattened in place."""
    ordered = sorted(shapes, key=lambda s: ((s.top or 0) // 100_000, s.left or 0))
    for shape in ordered:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from _shapes(shape.shapes)
        else:
            yield shape


def _is_title(shape: Any) -> bool:
    return bool(shape.is_placeholder and shape.placeholder_format.type in _TITLE_TYPES)


def _frame_elements(shape: Any, slide: int, path: tuple[str, ...]) -> list[Element]:
    out: list[Element] = []
    paragraph_lines: list[str] = []
    for para in shape.text_frame.paragraphs:
        text = "".join(run.text for run in para.runs) or para.text
        if not text.strip():
            continue
        if para.level > 0:
            if el := text_element("list_item", text, heading_path=path, slide=slide):
                out.append(el)
        else:
            paragraph_lines.append(text)
    if paragraph_lines and (
        el := text_element("paragraph", "\n".join(paragraph_lines), heading_path=path, slide=slide)
    ):
        out.insert(0, el)
    return out


def parse(ctx: ParseContext) -> ParsedDocument:
    prs = pptx.Presentation(ctx.file())
    elements: list[Element] = []
    first_title = ""
    n_slides = 0
    for number, slide in enumerate(prs.slides, start=1):
        n_slides = number
        title_shape = next((s for s in slide.shapes if _is_title(s)), None)
        title = clean_line(title_shape.text_frame.text) if title_shape is not None else ""
        path: tuple[str, ...] = (title,) if title else ()
        if title:
            elements.append(Element("heading", title, slide=number, level=1))
            first_title = first_title or title
        for shape in _shapes(slide.shapes):
            if title_shape is not None and shape.shape_id == title_shape.shape_id:
                continue
            if getattr(shape, "has_table", False) and shape.has_table:
                rows = [[cell.text for cell in row.cells] for row in shape.table.rows]
                elements.extend(table_elements(rows, header_rows=1, heading_path=path, slide=number))
            elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
                elements.extend(_frame_elements(shape, number, path))
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            note = text_element(
                "note", slide.notes_slide.notes_text_frame.text, heading_path=path, slide=number
            )
            if note:
                elements.append(note)
    title = prs.core_properties.title or first_title or ctx.path.stem
    return ctx.document("pptx", title, elements, n_slides)
