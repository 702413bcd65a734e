"""Bad files raise the right DocumentError subclass with a message naming the file and the fix."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from onebox.errors import (
    CorruptDocumentError,
    DocumentError,
    EmptyInputError,
    EncryptedDocumentError,
    InputTooLargeError,
    UnsupportedFormatError,
)
from onebox.rag.demo import content as c
from onebox.rag.parsers import parse_file


def _copy(src: Path, dest: Path, name: str) -> Path:
    out = dest / name
    shutil.copyfile(src, out)
    return out


def test_encrypted_pdf(demo_dir: Path, tmp_path: Path) -> None:
    writer = PdfWriter()
    for page in PdfReader(demo_dir / c.WARRANTY).pages:
        writer.add_page(page)
    writer.encrypt("s3cret", algorithm="AES-128")
    path = tmp_path / "locked.pdf"
    writer.write(path)
    with pytest.raises(EncryptedDocumentError, match=r"locked\.pdf.*password"):
        parse_file(path)


def test_pdf_with_owner_password_only_still_parses(demo_dir: Path, tmp_path: Path) -> None:
    writer = PdfWriter()
    for page in PdfReader(demo_dir / c.WARRANTY).pages:
        writer.add_page(page)
    writer.encrypt("", owner_password="owner")
    path = tmp_path / "restricted.pdf"
    writer.write(path)
    assert any("寄修产品" in e.text for e in parse_file(path).elements)


def test_encrypted_office_file(tmp_path: Path) -> None:
    # Encrypted OOXML is an OLE container holding an "EncryptedPackage" stream.
    ole = (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
        + b"\x00" * 504
        + "EncryptedPackage".encode("utf-16-le")
        + b"\x00" * 64
    )
    path = tmp_path / "工资表.xlsx"
    path.write_bytes(ole)
    with pytest.raises(EncryptedDocumentError, match=r"工资表\.xlsx.*password"):
        parse_file(path)


def test_legacy_doc_named_docx(tmp_path: Path) -> None:
    path = tmp_path / "old.docx"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600)
    with pytest.raises(UnsupportedFormatError, match="legacy"):
        parse_file(path)


@pytest.mark.parametrize("name", [c.HANDBOOK, c.WARRANTY, c.LAUNCH, c.SALES])
def test_truncated_files(demo_dir: Path, tmp_path: Path, name: str) -> None:
    data = (demo_dir / name).read_bytes()
    path = tmp_path / f"cut{Path(name).suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptDocumentError, match=r"cut\.\w+") as info:
        parse_file(path)
    assert "copy" in str(info.value) or "save it again" in str(info.value)


def test_damaged_zip_member(demo_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.docx"
    with zipfile.ZipFile(demo_dir / c.HANDBOOK) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, b"<w:document>broken" if item.filename == "word/document.xml" else data)
    with pytest.raises(CorruptDocumentError, match=r"bad\.docx"):
        parse_file(path)


def test_docx_that_is_text(tmp_path: Path) -> None:
    path = tmp_path / "report.docx"
    path.write_text("这其实是纯文本 just text", encoding="utf-8")
    with pytest.raises(CorruptDocumentError, match=r"report\.docx.*plain text"):
        parse_file(path)


def test_pdf_that_is_zip(demo_dir: Path, tmp_path: Path) -> None:
    path = _copy(demo_dir / c.SALES, tmp_path, "really_a_zip.pdf")
    with pytest.raises(CorruptDocumentError, match=r"really_a_zip\.pdf.*ZIP"):
        parse_file(path)


def test_xlsx_named_docx(demo_dir: Path, tmp_path: Path) -> None:
    path = _copy(demo_dir / c.SALES, tmp_path, "wrong.docx")
    with pytest.raises(CorruptDocumentError, match=r"\.xlsx"):
        parse_file(path)


def test_binary_named_txt(tmp_path: Path) -> None:
    path = tmp_path / "blob.txt"
    path.write_bytes(b"\x00\x01\x02\x03" * 100)
    with pytest.raises(CorruptDocumentError, match=r"blob\.txt"):
        parse_file(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pdf"
    path.write_bytes(b"")
    with pytest.raises(EmptyInputError, match=r"empty\.pdf.*empty"):
        parse_file(path)


def test_no_text_at_all(tmp_path: Path) -> None:
    path = tmp_path / "blank.md"
    path.write_text("\n\n   \n\u200b\n", encoding="utf-8")
    with pytest.raises(EmptyInputError, match=r"blank\.md.*no text"):
        parse_file(path)


def test_oversized(demo_dir: Path) -> None:
    with pytest.raises(InputTooLargeError, match=r"limit") as info:
        parse_file(demo_dir / c.HANDBOOK, max_bytes=1000)
    assert c.HANDBOOK in str(info.value) and info.value.details["limit"] == 1000


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"abc")
    with pytest.raises(UnsupportedFormatError, match=r"model\.bin.*\.bin.*\.docx"):
        parse_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match=r"nope\.txt"):
        parse_file(tmp_path / "nope.txt")


def test_undecodable_text(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\xff\xfe"[:1] + b"\x81\x30\xff\xff" * 10)
    with pytest.raises(DocumentError, match=r"bad\.txt"):
        parse_file(path)


def test_corrupt_image(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 10)
    with pytest.raises(CorruptDocumentError, match=r"scan\.png"):
        parse_file(path, ocr=False)
