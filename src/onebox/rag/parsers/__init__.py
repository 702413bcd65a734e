"""Document parsers for knowledge bases: one file in, a :class:`ParsedDocument` out.

``parse_file`` is the only entry point: it checks size and content before any third-party library
sees the file, dispatches by extension, and turns every library failure into a
:class:`~onebox.errors.DocumentError` that names the file, the reason and what to do.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from onebox.errors import (
    CorruptDocumentError,
    DependencyMissingError,
    DocumentError,
    EmptyInputError,
    InputTooLargeError,
    OneboxError,
    UnsupportedFormatError,
)
from onebox.rag.parsers._common import ParseContext
from onebox.rag.parsers.sniff import check_content
from onebox.rag.types import ParsedDocument

DEFAULT_MAX_BYTES = 100 * 1024 * 1024
"""Largest file accepted by default (100 MiB)."""

_FORMATS: dict[str, str] = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".xlsx": "xlsx",
    ".xlsm": "xlsx",
    ".csv": "csv",
    ".tsv": "csv",
    ".pptx": "pptx",
    ".html": "html",
    ".htm": "html",
    ".md": "md",
    ".markdown": "md",
    ".txt": "txt",
    ".text": "txt",
    ".png": "image",
    ".jpg": "image",
    ".jpeg": "image",
    ".bmp": "image",
    ".tif": "image",
    ".tiff": "image",
    ".webp": "image",
}
_MODULES = {"md": "markdown", "txt": "text", "html": "html", "image": "image"}

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(_FORMATS)
"""Lower-case file extensions (with the dot) that :func:`parse_file` reads."""

_INSTALL_HINT = "install the document extras: pip install 'onebox[docs]'"


def format_for(path: Path) -> str:
    """Parser name for a path's extension; UnsupportedFormatError when there is none."""
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(SUPPORTED_EXTENSIONS))
        raise UnsupportedFormatError(
            f"{path.name}: extension {path.suffix or '(none)'!r} is not a supported document format; "
            f"convert it to one of: {known}.",
            source=path.name,
        )
    return fmt


def parse_file(
    path: Path,
    *,
    source: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    ocr: bool = True,
    data: bytes | None = None,
) -> ParsedDocument:
    """Parse one document into elements in reading order.

    ``source`` is the name shown to users (defaults to the file name); ``ocr=False`` skips image
    files' and scanned pages' OCR (with a warning) for fast ingestion. ``data`` is the content when
    it is already in memory (a decrypted sealed file): ``path`` then only names it, and every
    parser reads the bytes (no plaintext file is written). Raises only
    :class:`~onebox.errors.DocumentError` subclasses and :class:`DependencyMissingError`.
    """
    path = Path(path)
    source = source or path.name
    fmt = format_for(path)
    if data is not None:
        size = len(data)
    else:
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise DocumentError(f"{source}: cannot be read ({exc.strerror or exc}); check the path.") from exc
        if not path.is_file():
            raise DocumentError(f"{source}: is not a regular file.", source=source)
    if size == 0:
        raise EmptyInputError(f"{source}: the file is empty (0 bytes); nothing to add.", source=source)
    if size > max_bytes:
        raise InputTooLargeError(
            f"{source}: {size:,} bytes is over the {max_bytes:,}-byte limit for one document; split it "
            "into smaller files or raise the limit.",
            source=source,
            size=size,
            limit=max_bytes,
        )
    try:
        check_content(path, fmt, source, data)
        module = _load(fmt)
        ctx = ParseContext(path=path, source=source, ocr=ocr, data=data)
        doc: ParsedDocument = module.parse(ctx)
    except OneboxError:
        raise
    except (MemoryError, RecursionError) as exc:
        raise CorruptDocumentError(
            f"{source}: too complex to parse ({type(exc).__name__}); simplify or split the file.",
            source=source,
        ) from exc
    except Exception as exc:  # the contract: no third-party exception escapes
        raise CorruptDocumentError(
            f"{source}: the {fmt.upper()} file could not be read ({type(exc).__name__}: {exc}); it may be "
            "damaged - open and save it again, or export it to PDF.",
            source=source,
        ) from exc
    if not any(e.text.strip() for e in doc.elements):
        hint = "it may be a scan: enable OCR" if not ocr and fmt in ("pdf", "image") else "nothing to index"
        raise EmptyInputError(f"{source}: no text found in the document ({hint}).", source=source)
    return doc


def _load(fmt: str) -> ModuleType:
    """Import the parser module; a missing third-party library becomes DependencyMissingError."""
    name = _MODULES.get(fmt, fmt)
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError as exc:
        raise DependencyMissingError(
            f"Reading {fmt.upper()} files needs the Python package {exc.name or '?'!r}; {_INSTALL_HINT}.",
            package=exc.name,
        ) from exc


__all__ = ["DEFAULT_MAX_BYTES", "SUPPORTED_EXTENSIONS", "format_for", "parse_file"]
