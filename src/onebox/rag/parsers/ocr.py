"""Offline OCR (Chinese + English) with RapidOCR's bundled ONNX models, and layout into paragraphs.

The engine takes a second to load and a few hundred MB, so one instance serves the whole process:
created on first use under a lock, and calls are serialised (inference already uses every core).
"""

from __future__ import annotations

import statistics
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from onebox.errors import DependencyMissingError
from onebox.rag.parsers._common import clean_line, is_cjk, join_fragments

MIN_CONFIDENCE = 0.6
"""Boxes recognised with less confidence than this are dropped (mostly noise and smudges)."""

MAX_SIDE = 2400
"""Images are scaled down to this longest side first: more pixels only cost time."""

_lock = threading.Lock()
_engine: Any = None


def get_engine() -> Any:
    """The process-wide OCR engine; the one place that imports ``rapidocr_onnxruntime``."""
    global _engine
    if _engine is None:
        with _lock:
            if _engine is None:
                try:
                    from rapidocr_onnxruntime import RapidOCR
                except ImportError as exc:
                    raise DependencyMissingError(
                        "OCR of images and scanned PDF pages needs rapidocr-onnxruntime; install the "
                        "document extras: pip install 'onebox[docs]' (or parse with ocr=False).",
                        package="rapidocr_onnxruntime",
                    ) from exc
                _engine = RapidOCR()
    return _engine


@dataclass(frozen=True)
class Box:
    """One recognised text box in image pixels."""

    x0: float
    y0: float
    x1: float
    y1: float
    text: str

    @property
    def height(self) -> float:
        return max(1.0, self.y1 - self.y0)


def ocr_image(image: Image.Image, min_confidence: float = MIN_CONFIDENCE) -> list[str]:
    """Paragraphs of text found in ``image``, in reading order (top to bottom, left to right)."""
    image = image.convert("RGB")
    scale = min(1.0, MAX_SIDE / max(image.size))
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    array = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])  # the engine expects BGR like OpenCV
    engine = get_engine()
    with _lock:
        result, _ = engine(array, return_word_box=True)
    boxes = [_box(item) for item in result or () if float(item[2]) >= min_confidence]
    return layout([b for b in boxes if b.text])


def _box(item: Any) -> Box:
    points, text = item[0], str(item[1])
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    if len(item) > 3 and item[3] is not None and len(item[3]) == len(text):
        text = _respace(text, item[3])
    return Box(min(xs), min(ys), max(xs), max(ys), clean_line(text))


def _respace(text: str, char_boxes: Any) -> str:
    """Put back the spaces between Latin words that the recogniser drops, from per-character boxes.

    Only for boxes recognised without any space; a gap counts as a space when it is wide relative
    to the glyph height (narrower between a letter and a digit, never between two digits).
    """
    if " " in text:
        return text
    out = [text[:1]]
    for i in range(1, len(text)):
        prev, cur = text[i - 1], text[i]
        latin = prev.isascii() and cur.isascii() and prev.isalnum() and cur.isalnum()
        if latin and not (prev.isdigit() and cur.isdigit()):
            left = max(float(p[0]) for p in char_boxes[i - 1])
            right = min(float(p[0]) for p in char_boxes[i])
            ys = [float(p[1]) for p in char_boxes[i]]
            gap = (right - left) / max(1.0, max(ys) - min(ys))
            if gap > (0.22 if prev.isalpha() == cur.isalpha() else 0.12):
                out.append(" ")
        out.append(cur)
    return "".join(out)


def layout(boxes: list[Box]) -> list[str]:
    """Group boxes into lines (vertical overlap) and lines into paragraphs (small vertical gaps)."""
    if not boxes:
        return []
    lines: list[list[Box]] = []
    for box in sorted(boxes, key=lambda b: (b.y0 + b.y1) / 2):
        if lines:
            line = lines[-1]
            top, bottom = min(b.y0 for b in line), max(b.y1 for b in line)
            overlap = min(bottom, box.y1) - max(top, box.y0)
            if overlap > 0.5 * min(box.height, bottom - top):
                line.append(box)
                continue
        lines.append([box])
    rows = [sorted(line, key=lambda b: b.x0) for line in lines]
    heights = [statistics.median(b.height for b in row) for row in rows]
    typical = statistics.median(heights)
    paragraphs: list[list[str]] = []
    prev_bottom: float | None = None
    for row, height in zip(rows, heights, strict=True):
        text = _join_row(row)
        top = min(b.y0 for b in row)
        new_para = (
            prev_bottom is None or top - prev_bottom > 0.6 * typical or abs(height - typical) > 0.3 * typical
        )
        if new_para or not paragraphs:
            paragraphs.append([text])
        else:
            paragraphs[-1].append(text)
        prev_bottom = max(b.y1 for b in row)
    return [p for p in (join_fragments(lines) for lines in paragraphs) if p]


def _join_row(row: list[Box]) -> str:
    out = ""
    for box in row:
        if out and not (is_cjk(out[-1]) and is_cjk(box.text[0])):
            out += " "
        out += box.text
    return out
