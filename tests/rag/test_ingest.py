"""Ingestion with the real MiniLM and the embedded index: incremental sync, bad files, cancel, resume."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from onebox.errors import ConfigError, InvalidInputError
from onebox.models.catalog import get_entry
from onebox.rag.embedding import Embedder
from onebox.rag.index import open_index
from onebox.rag.ingest import ParseOptions, doc_id_for, ingest_folder
from onebox.rag.types import ChunkIndex


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder.load(get_entry("all-minilm-l6-v2").locate())


@pytest.fixture
def index(tmp_path: Path, embedder: Embedder) -> Iterator[ChunkIndex]:
    idx = open_index(tmp_path / "index", embedder.dim)
    yield idx
    idx.close()


def write_docx(path: Path, heading: str, text: str) -> None:
    import docx

    d = docx.Document()
    d.add_heading(heading, level=1)
    d.add_paragraph(text)
    d.save(str(path))


def write_encrypted_pdf(path: Path) -> None:
    from pypdf import PdfWriter

    w = PdfWriter()
    w.add_blank_page(200, 200)
    w.encrypt("secret")
    buf = io.BytesIO()
    w.write(buf)
    path.write_bytes(buf.getvalue())


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    (d / "hr").mkdir(parents=True)
    (d / "hr" / "travel.md").write_text(
        "# 差旅制度\n\n员工出差住宿费每晚不超过500元。\n\n"
        "## Meals\n\nMeals are refunded up to 120 CNY a day.\n",
        encoding="utf-8",
    )
    (d / "notes.txt").write_text("The VPN password rotates every ninety days.\n", encoding="utf-8")
    (d / "faq.html").write_text(
        "<html><head><title>FAQ</title></head><body><h1>Parking</h1><p>Parking is free on Fridays.</p>"
        "</body></html>",
        encoding="utf-8",
    )
    write_docx(d / "handbook.docx", "Holidays", "Every employee gets fifteen days of paid leave per year.")
    (d / ".hidden.md").write_text("# secret\n\nnot a document", encoding="utf-8")
    (d / "image.xyz").write_bytes(b"not a document")
    return d


def test_folder_sync_is_incremental(index: ChunkIndex, embedder: Embedder, folder: Path) -> None:
    first = ingest_folder(index, embedder, folder, tags=["hr"])
    assert sorted(r.source for r in first.added) == ["faq.html", "handbook.docx", "hr/travel.md", "notes.txt"]
    assert first.skipped == ["image.xyz"] and not first.failed and first.chunks >= 4
    assert {d.source: d.tags for d in index.documents()}["hr/travel.md"] == ("hr",)

    again = ingest_folder(index, embedder, folder, tags=["hr"])
    assert again.counts() == {"added": 0, "updated": 0, "unchanged": 4, "deleted": 0, "failed": 0}

    (folder / "notes.txt").write_text("The VPN password now rotates every thirty days.\n", encoding="utf-8")
    (folder / "faq.html").unlink()
    (folder / "new.md").write_text("# Canteen\n\nThe canteen opens at 11:30.\n", encoding="utf-8")
    third = ingest_folder(index, embedder, folder, tags=["hr"])
    assert [r.source for r in third.updated] == ["notes.txt"]
    assert [r.source for r in third.deleted] == ["faq.html"]
    assert [r.source for r in third.added] == ["new.md"]
    assert len(third.unchanged) == 2
    assert {d.source for d in index.documents()} == {"handbook.docx", "hr/travel.md", "new.md", "notes.txt"}
    hit = index.lexical_search("thirty", 1)[0]
    assert hit.document.source == "notes.txt" and hit.chunk.doc_id == doc_id_for("notes.txt")
    assert not index.lexical_search("Parking", 3)


def test_bad_files_are_reported_and_the_rest_goes_in(
    index: ChunkIndex, embedder: Embedder, tmp_path: Path
) -> None:
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "good.md").write_text("# 报销\n\n报销需在30天内提交。\n", encoding="utf-8")
    (d / "empty.txt").write_bytes(b"")
    (d / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf\n")
    (d / "broken.docx").write_bytes(b"PK\x03\x04 garbage")
    write_encrypted_pdf(d / "locked.pdf")
    (d / "big.txt").write_text("x " * 5000, encoding="utf-8")
    report = ingest_folder(index, embedder, d, parse_options=ParseOptions(max_bytes=4096))
    assert [r.source for r in report.added] == ["good.md"]
    codes = {r.source: r.error_code for r in report.failed}
    assert codes["empty.txt"] == "empty_input"
    assert codes["big.txt"] == "input_too_large"
    assert codes["locked.pdf"] == "document_encrypted"
    assert codes["broken.pdf"].startswith("document_") and codes["broken.docx"].startswith("document_")
    assert all(r.reason and r.source in r.reason for r in report.failed)
    # an explicit file list reports an unsupported format instead of skipping it
    (d / "data.bin").write_bytes(b"\x00\x01")
    listed = ingest_folder(index, embedder, [d / "data.bin", d / "good.md"], base=d)
    assert [(r.source, r.error_code) for r in listed.failed] == [("data.bin", "unsupported_format")]
    assert [r.source for r in listed.unchanged] == ["good.md"]


def test_file_list_adds_and_replaces_only(index: ChunkIndex, embedder: Embedder, folder: Path) -> None:
    ingest_folder(index, embedder, folder)
    extra = folder.parent / "extra.md"
    extra.write_text("# Gym\n\nThe gym is on floor 3.\n", encoding="utf-8")
    report = ingest_folder(index, embedder, [extra])
    assert [r.source for r in report.added] == ["extra.md"] and not report.deleted
    assert len(index.documents()) == 5
    with pytest.raises(InvalidInputError) as err:
        ingest_folder(index, embedder, [extra, folder / "notes.txt", folder.parent / "x" / "notes.txt"])
    assert err.value.problems[0].field == "paths"


def test_cancel_between_files_then_resume(index: ChunkIndex, embedder: Embedder, folder: Path) -> None:
    asked = []

    def cancel() -> bool:
        asked.append(1)
        return len(asked) > 2  # two files get in, then the run stops

    seen: list[tuple[str, int, int | None]] = []
    first = ingest_folder(index, embedder, folder, cancel=cancel, progress=lambda *a: seen.append(a))
    assert first.cancelled and len(first.added) == 2 and not first.deleted
    assert ("files", 2, 4) in seen and any(s.startswith("embed ") for s, _, _ in seen)
    resumed = ingest_folder(index, embedder, folder)
    assert len(resumed.unchanged) == 2 and len(resumed.added) == 2 and not resumed.cancelled


def test_changed_tags_reindex_and_wrong_dims_refused(
    index: ChunkIndex, embedder: Embedder, folder: Path, tmp_path: Path
) -> None:
    ingest_folder(index, embedder, [folder / "notes.txt"], tags=["it"])
    again = ingest_folder(index, embedder, [folder / "notes.txt"], tags=["it", "security"])
    assert [r.source for r in again.updated] == ["notes.txt"]
    assert index.documents()[0].tags == ("it", "security")
    assert ingest_folder(index, embedder, [folder / "notes.txt"]).counts()["unchanged"] == 1  # None keeps
    other = open_index(tmp_path / "other", 8)
    try:
        with pytest.raises(ConfigError, match="does not fit"):
            ingest_folder(other, embedder, folder)
    finally:
        other.close()
    with pytest.raises(ConfigError) as err:
        ParseOptions(max_tokens=4, batch_size=0)
    assert {p.field for p in err.value.problems} == {"max_tokens", "batch_size", "overlap_tokens"}
