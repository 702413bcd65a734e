"""Each format parses into the right structure, and Chinese text survives the round trip."""

from __future__ import annotations

from pathlib import Path

import docx
import openpyxl

from onebox.errors import OneboxError
from onebox.rag.demo import content as c
from onebox.rag.parsers import SUPPORTED_EXTENSIONS, parse_file
from onebox.rag.types import ParsedDocument


def _kinds(doc: ParsedDocument, kind: str) -> list:
    return [e for e in doc.elements if e.kind == kind]


def test_supported_extensions() -> None:
    for ext in (".pdf", ".docx", ".xlsx", ".csv", ".pptx", ".html", ".md", ".txt", ".png", ".jpg", ".webp"):
        assert ext in SUPPORTED_EXTENSIONS


def test_docx_headings_tables_lists_and_margins(demo_dir: Path) -> None:
    doc = parse_file(demo_dir / c.HANDBOOK)
    assert doc.format == "docx" and doc.title.startswith("沃萝科技员工手册")
    kinds = [e.kind for e in doc.elements]
    assert kinds[0] == "header" and kinds[-1] == "footer"
    assert kinds.count("header") == 1 and kinds.count("footer") == 1
    (table,) = _kinds(doc, "table")
    assert table.rows[0] == ("工龄 Years of service", "年假 Annual leave") and table.header_rows == 1
    assert table.heading_path == ("2 假期 Holidays", "2.1 年假 Annual leave")
    sub = next(e for e in doc.elements if e.kind == "heading" and e.text.startswith("2.1"))
    assert sub.level == 2 and sub.heading_path == ("2 假期 Holidays",)
    # reading order: the table sits between its intro paragraph and the paragraph after it
    i = doc.elements.index(table)
    assert "年假天数" in doc.elements[i - 1].text and "carried over" in doc.elements[i + 1].text
    items = _kinds(doc, "list_item")
    assert [e.heading_path for e in items] == [("3 福利 Benefits",)] * 2
    assert "午餐补贴每个工作日 35 元" in items[0].text


def test_docx_interleaves_many_tables(tmp_path: Path) -> None:
    d = docx.Document()
    for i in range(3):
        d.add_paragraph(f"段落 {i}")
        t = d.add_table(rows=2, cols=2)
        t.cell(0, 0).text, t.cell(0, 1).text = "名称", "数量"
        t.cell(1, 0).text, t.cell(1, 1).text = f"物品{i}", str(i)
    d.save(str(tmp_path / "t.docx"))
    doc = parse_file(tmp_path / "t.docx")
    assert [e.kind for e in doc.elements] == ["paragraph", "table"] * 3
    assert doc.elements[5].rows == (("名称", "数量"), ("物品2", "2"))


def test_xlsx_sheets(demo_dir: Path) -> None:
    doc = parse_file(demo_dir / c.SALES)
    assert doc.pages == 2
    q, r = _kinds(doc, "table")
    assert q.sheet == "Quarterly 2024" and r.sheet == "区域 Regions"
    assert q.rows[0][0] == "Quarter 季度" and q.header_rows == 1 and len(q.rows) == 5
    assert ("华南 South China", "27", "周启航") in r.rows


def test_xlsx_empty_sheet_skipped_and_huge_sheet_split(tmp_path: Path) -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "数据"
    ws.append(["编号", "值"])
    for i in range(1000):
        ws.append([i, f"值{i}"])
    wb.create_sheet("空白")
    wb.save(tmp_path / "big.xlsx")
    doc = parse_file(tmp_path / "big.xlsx")
    tables = _kinds(doc, "table")
    assert len(tables) >= 3 and all(t.sheet == "数据" and t.rows[0] == ("编号", "值") for t in tables)
    assert sum(len(t.rows) - 1 for t in tables) == 1000
    assert any("空白" in w and "empty" in w for w in doc.warnings)


def test_csv_semicolon_gb18030(tmp_path: Path) -> None:
    path = tmp_path / "价格表.csv"
    path.write_bytes("型号;价格;备注\nVX-100;399;土壤湿度\nVX-200;1299;温湿度\n".encode("gb18030"))
    doc = parse_file(path)
    (table,) = doc.elements
    assert table.rows == (
        ("型号", "价格", "备注"),
        ("VX-100", "399", "土壤湿度"),
        ("VX-200", "1299", "温湿度"),
    )


def test_csv_demo_utf8_bom(demo_dir: Path) -> None:
    (table,) = parse_file(demo_dir / c.PARTS).elements
    assert table.rows[0][0] == "编号 Part no." and table.header_rows == 1


def test_pptx_slides_tables_notes(demo_dir: Path) -> None:
    doc = parse_file(demo_dir / c.LAUNCH)
    assert doc.pages == 3
    headings = _kinds(doc, "heading")
    assert [h.slide for h in headings] == [1, 2, 3]
    (table,) = _kinds(doc, "table")
    assert table.slide == 2 and table.heading_path == ("主要参数 Key specs",)
    assert table.rows[0] == ("参数 Item", "数值 Value") and ("售价 Price", "2899 RMB") in table.rows
    notes = _kinds(doc, "note")
    assert [n.slide for n in notes] == [2, 3] and "立减 300 元" in notes[1].text
    # the title is a heading, not repeated as a paragraph
    assert not any(e.kind == "paragraph" and e.text == headings[1].text for e in doc.elements)


def test_pdf_pages_headings_tables_footer(demo_dir: Path) -> None:
    doc = parse_file(demo_dir / c.WARRANTY)
    assert doc.pages == 3 and doc.title == "保修与服务条款 Warranty and Service Terms"
    body = [e for e in doc.elements if e.kind not in ("header", "footer")]
    assert {e.page for e in body} == {1, 2, 3}
    (table,) = _kinds(doc, "table")
    assert table.page == 2 and table.header_rows == 1 and ("VX-500", "299", "3") in table.rows
    assert table.heading_path[-1] == "2 延保服务 Extended warranty"
    # table cells are not repeated in the paragraph text
    assert not any("VX-500" in e.text for e in doc.elements if e.kind == "paragraph")
    assert any("寄修产品在收到后 5 个工作日内修复并寄回" in e.text and e.page == 3 for e in body)
    # the running footer is reported once, not once per page
    assert len(_kinds(doc, "footer")) == 1 and not any("第 2 页" in e.text for e in body)


def test_html_gbk_drops_boilerplate(demo_dir: Path) -> None:
    doc = parse_file(demo_dir / c.OFFICES)
    text = "\n".join(e.text for e in doc.elements)
    assert "文三路 478 号华星科技大厦" in text
    assert "这段脚本" not in text and "首页" not in text and "font-family" not in text
    h2 = next(e for e in doc.elements if e.kind == "heading" and e.text.startswith("嘉兴工厂"))
    assert h2.level == 2
    para = next(e for e in doc.elements if "亚中路" in e.text)
    assert para.heading_path == ("嘉兴工厂 Jiaxing factory",)
    (table,) = _kinds(doc, "table")
    assert table.rows[0] == ("部门 Department", "分机 Extension") and table.header_rows == 1
    assert len(_kinds(doc, "list_item")) == 2


def test_html_nested_headings_and_lists(tmp_path: Path) -> None:
    html = (
        "<html><head><meta http-equiv='Content-Type' content='text/html; charset=gb2312'></head><body>"
        "<h1>一</h1><p>甲</p><h2>二</h2><ul><li>项目<b>A</b><ul><li>子项</li></ul></li></ul>"
        "<h1>三</h1><div>乙<br>丙</div></body></html>"
    )
    path = tmp_path / "p.htm"
    path.write_bytes(html.encode("gbk"))
    els = parse_file(path).elements
    assert [(e.kind, e.text, e.heading_path) for e in els] == [
        ("heading", "一", ()),
        ("paragraph", "甲", ("一",)),
        ("heading", "二", ("一",)),
        ("list_item", "项目A", ("一", "二")),
        ("list_item", "子项", ("一", "二")),
        ("heading", "三", ()),
        ("paragraph", "乙丙", ("三",)),
    ]


def test_markdown_structure(demo_dir: Path) -> None:
    doc = parse_file(demo_dir / c.FAQ)
    assert doc.title == "Varnolia 安装与使用 FAQ"
    kinds = {e.kind for e in doc.elements}
    assert {"title", "heading", "paragraph", "list_item", "code", "table"} <= kinds
    (table,) = _kinds(doc, "table")
    assert table.rows[0] == ("颜色 Colour", "含义 Meaning") and table.heading_path == ("指示灯 LED colours",)
    (code,) = _kinds(doc, "code")
    assert code.text == "varnolia-cli firmware update --channel stable"


def test_txt_encodings(tmp_path: Path) -> None:
    text = "第一段：沃萝科技。\n第二行\n\n  第二段  with   spaces\x07\n"
    for enc in ("utf-8", "utf-16", "gb18030", "utf-8-sig"):
        path = tmp_path / f"{enc}.txt"
        path.write_bytes(text.encode(enc))
        doc = parse_file(path)
        assert [e.text for e in doc.elements] == ["第一段：沃萝科技。\n第二行", "第二段 with spaces"], enc


def test_source_name_is_kept(demo_dir: Path) -> None:
    doc = parse_file(demo_dir / c.RELEASE, source="docs/notes.txt")
    assert doc.source == "docs/notes.txt" and doc.format == "txt"


def test_content_in_memory_parses_like_the_file(demo_dir: Path, tmp_path: Path) -> None:
    """A decrypted sealed source is parsed from bytes: same result, and the path need not exist."""

    def outcome(path: Path, data: bytes | None = None) -> object:
        try:
            return parse_file(path, source=path.name, ocr=False, data=data)
        except OneboxError as exc:  # images without OCR: the same refusal either way
            return (type(exc).__name__, exc.message)

    for path in sorted(demo_dir.iterdir()):
        ghost = tmp_path / "nowhere" / path.name
        assert outcome(ghost, path.read_bytes()) == outcome(path), path.name
