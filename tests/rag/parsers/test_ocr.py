"""OCR of images and of scanned (image-only) PDF pages, and the demo set's gold passages.

The OCR engine is loaded once per process, so these share it; assertions allow for small OCR
errors by comparing without spaces.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from onebox.rag.demo import content as c
from onebox.rag.demo.content import demo_questions
from onebox.rag.demo.make_docs import write_demo_docs
from onebox.rag.parsers import parse_file
from onebox.rag.parsers.ocr import get_engine

pytestmark = pytest.mark.slow


def _squash(text: str) -> str:
    return "".join(text.split())


def test_png_ocr_chinese_and_english(demo_dir: Path) -> None:
    doc = parse_file(demo_dir / c.NOTICE)
    assert doc.format == "image" and all(e.ocr for e in doc.elements)
    text = _squash("\n".join(e.text for e in doc.elements))
    for must in ("维修中心", "康和路1288号", "RepaircenteropenonSaturdays", "9:30-15:30", "RX-7391"):
        assert must in text
    # reading order: the notice title comes first
    assert "通知" in doc.elements[0].text


def test_scanned_pdf_page_is_ocred_with_page_number(demo_dir: Path) -> None:
    doc = parse_file(demo_dir / c.CERT)
    assert doc.pages == 1 and doc.elements
    assert all(e.ocr and e.page == 1 for e in doc.elements)
    text = _squash("\n".join(e.text for e in doc.elements))
    assert "CN-QMS-2023-4471" in text and "ISO9001" in text and "质量管理体系" in text


def test_ocr_disabled_warns_and_reports_empty(demo_dir: Path) -> None:
    from onebox.errors import EmptyInputError

    with pytest.raises(EmptyInputError, match="OCR"):
        parse_file(demo_dir / c.CERT, ocr=False)


def test_engine_is_shared_across_threads() -> None:
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(get_engine())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(e) for e in seen}) == 1


def test_every_gold_passage_is_in_exactly_its_source(demo_dir: Path) -> None:
    texts = {
        p.name: _squash("\n".join(e.text for e in parse_file(p).elements)) for p in sorted(demo_dir.iterdir())
    }
    questions = demo_questions()
    assert len(questions) >= 30
    assert abs(sum(q["lang"] == "zh" for q in questions) - len(questions) / 2) <= 2
    for q in questions:
        gold = _squash(q["gold"])
        holders = [name for name, text in texts.items() if gold in text]
        assert holders == [q["source"]], (q["id"], q["gold"], holders)


def test_demo_docs_are_deterministic_and_small(demo_dir: Path, tmp_path: Path) -> None:
    again = write_demo_docs(tmp_path)
    assert {p.name for p in again} == {p.name for p in demo_dir.iterdir()}
    for p in again:
        assert p.read_bytes() == (demo_dir / p.name).read_bytes(), p.name
    assert sum(p.stat().st_size for p in again) < 2 * 1024 * 1024
