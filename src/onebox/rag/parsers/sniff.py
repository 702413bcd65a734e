"""Content sniffing: a file must be what its extension says before a parser library touches it.

Libraries fail on mislabelled files with obscure messages (or hang); checking magic bytes first
turns "a .pdf that is really a zip" into a clear error naming the file and the real content.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from onebox.errors import CorruptDocumentError, EncryptedDocumentError, UnsupportedFormatError
from onebox.security.archives import DOCUMENT_LIMITS, scan_zip

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "pdf"),
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "ole"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"GIF8", "gif"),
    (b"\x1f\x8b", "gzip"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!", "rar"),
)
_OOXML_MAIN = {"docx": "word/", "xlsx": "xl/", "pptx": "ppt/"}
_IMAGE_KINDS = {"png", "jpeg", "bmp", "tiff", "webp", "gif"}
_TEXT_FORMATS = {"txt", "md", "csv", "html"}


def sniff(head: bytes) -> str:
    """Kind of content from the first bytes: a magic name, ``text`` or ``binary``."""
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if b"%PDF-" in head[:1024]:
        return "pdf"  # PDF readers accept leading junk before the header
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "text"  # UTF-16 with BOM: NUL bytes are expected
    if b"\x00" in head:
        return "binary"
    return "text"


def _describe(kind: str) -> str:
    return {"zip": "a ZIP archive", "ole": "a legacy Office (OLE) file", "binary": "binary data"}.get(
        kind, f"{kind.upper()} data" if kind != "text" else "plain text"
    )


def check_content(path: Path, fmt: str, source: str, data: bytes | None = None) -> None:
    """Raise unless the bytes of ``path`` (or ``data``, its content in memory) fit the parser
    ``fmt`` chosen from its extension."""
    if data is not None:
        head = data[:4096]
    else:
        with path.open("rb") as fh:
            head = fh.read(4096)
    kind = sniff(head)
    ext = path.suffix.lower()
    if fmt == "pdf" and kind != "pdf":
        raise CorruptDocumentError(
            f"{source}: named {ext} but holds {_describe(kind)}, not a PDF; export it to PDF again "
            "or give it its real extension.",
            source=source,
        )
    if fmt in _OOXML_MAIN:
        if kind == "ole":
            if _ole_is_encrypted(path, data):
                raise EncryptedDocumentError(
                    f"{source}: the file is password-protected; remove the password (save an unprotected "
                    "copy) and add it again.",
                    source=source,
                )
            raise UnsupportedFormatError(
                f"{source}: is a legacy binary Office file (.doc/.xls/.ppt) named {ext}; open it in "
                f"Office or LibreOffice and save it as {ext}.",
                source=source,
            )
        if kind != "zip":
            raise CorruptDocumentError(
                f"{source}: named {ext} but holds {_describe(kind)}, not an Office document; "
                f"save it again as {ext} or give it its real extension.",
                source=source,
            )
        _check_ooxml(io.BytesIO(data) if data is not None else path, fmt, source)
    if fmt == "image" and kind not in _IMAGE_KINDS:
        raise CorruptDocumentError(
            f"{source}: named {ext} but holds {_describe(kind)}, not an image.", source=source
        )
    if fmt in _TEXT_FORMATS and kind not in ("text",):
        raise CorruptDocumentError(
            f"{source}: named {ext} but holds {_describe(kind)}, not text; give it its real extension.",
            source=source,
        )


def _check_ooxml(path: Path | io.BytesIO, fmt: str, source: str) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            # The parser libraries inflate members in memory: refuse bombs and odd members first.
            scan_zip(zf, DOCUMENT_LIMITS, source)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CorruptDocumentError(
            f"{source}: the {fmt.upper()} file is damaged (its ZIP structure cannot be read, often a "
            "truncated download or copy); get a fresh copy of the file.",
            source=source,
        ) from exc
    main = _OOXML_MAIN[fmt]
    if "[Content_Types].xml" not in names or not any(n.startswith(main) for n in names):
        found = next((k for k, v in _OOXML_MAIN.items() if any(n.startswith(v) for n in names)), None)
        what = f"a .{found} document" if found else "a ZIP archive that is no Office document"
        raise CorruptDocumentError(
            f"{source}: named .{fmt} but is {what}; give it its real extension.", source=source
        )


def _ole_is_encrypted(path: Path, content: bytes | None = None) -> bool:
    """Encrypted OOXML files are OLE containers with an ``EncryptedPackage`` stream."""
    if content is not None:
        data = content[: 1 << 20]
    else:
        with path.open("rb") as fh:
            data = fh.read(1 << 20)
    return "EncryptedPackage".encode("utf-16-le") in data or "EncryptionInfo".encode("utf-16-le") in data
