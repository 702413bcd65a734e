"""Images (PNG, JPEG, BMP, TIFF, WebP) through OCR; every frame of a multi-page TIFF is a page."""

from __future__ import annotations

from PIL import Image, ImageSequence, UnidentifiedImageError

from onebox.errors import CorruptDocumentError
from onebox.rag.parsers._common import ParseContext, text_element
from onebox.rag.parsers.ocr import ocr_image
from onebox.rag.types import Element, ParsedDocument

Image.MAX_IMAGE_PIXELS = 200_000_000  # a scan at 600 dpi is far below; decompression bombs are above


def parse(ctx: ParseContext) -> ParsedDocument:
    try:
        img = Image.open(ctx.file())
        img.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise CorruptDocumentError(
            f"{ctx.source}: the image cannot be decoded ({exc}); it may be truncated - get a fresh copy.",
            source=ctx.source,
        ) from exc
    with img:
        frames = getattr(img, "n_frames", 1)
        if not ctx.ocr:
            ctx.warn(f"{ctx.source}: image not OCR'd (OCR is disabled), so no text was taken from it.")
            return ctx.document("image", ctx.path.stem, [], frames if frames > 1 else 0)
        elements: list[Element] = []
        for number, frame in enumerate(ImageSequence.Iterator(img), start=1):
            page = number if frames > 1 else None
            for para in ocr_image(frame):
                el = text_element("paragraph", para, page=page, ocr=True)
                if el:
                    elements.append(el)
    return ctx.document("image", ctx.path.stem, elements, frames if frames > 1 else 0)
