"""Generate the demo knowledge-base documents (one per supported format) about Varnolia Tech.

Usage: ``python -m onebox.rag.demo.make_docs DEST``. Output is byte-for-byte deterministic: ZIP
entry times and Office/PDF timestamps are pinned, so re-running changes nothing.
"""

from __future__ import annotations

import io
import re
import sys
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

from onebox.errors import DependencyMissingError
from onebox.rag.demo import content as c
from onebox.rag.demo.content import demo_questions

FIXED_TIME = datetime(2024, 12, 1, 9, 0, 0)
_ZIP_TIME = (2024, 12, 1, 9, 0, 0)
_CJK_FONT_PACKAGE = "noto-cjk-sans-jp-regular"


def cjk_font_path() -> Path:
    """A CJK-capable font for rendering the OCR images (the PyPI package carries Noto Sans CJK)."""
    try:
        import noto_cjk_sans_jp_regular as font_pkg
    except ImportError as exc:
        raise DependencyMissingError(
            f"Rendering the demo images needs a CJK font; pip install {_CJK_FONT_PACKAGE} "
            "(or pip install 'onebox[docs]').",
            package=_CJK_FONT_PACKAGE,
        ) from exc
    return Path(str(font_pkg.FONT_PATH))


def _pin_zip(path: Path) -> None:
    """Rewrite an Office file with fixed entry times and core-property dates (deterministic bytes)."""
    src = path.read_bytes()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(src)) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "docProps/core.xml":
                stamp = FIXED_TIME.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
                data = re.sub(rb"(<dcterms:(?:created|modified)[^>]*>)[^<]*", rb"\g<1>" + stamp, data)
            zout.writestr(zipfile.ZipInfo(info.filename, _ZIP_TIME), data, zipfile.ZIP_DEFLATED)
    path.write_bytes(out.getvalue())


# --- DOCX ------------------------------------------------------------------------------------------


def write_docx(path: Path) -> None:
    import docx

    d = docx.Document()
    d.core_properties.title = "沃萝科技员工手册 Varnolia Employee Handbook"
    d.core_properties.author = "Varnolia HR"
    d.core_properties.created = d.core_properties.modified = FIXED_TIME
    section = d.sections[0]
    section.header.paragraphs[0].text = "沃萝科技 内部资料 · Varnolia Tech Internal"
    section.footer.paragraphs[0].text = "员工手册 Employee Handbook v2.3 · 2024"
    d.add_paragraph("沃萝科技员工手册 Varnolia Employee Handbook", style="Title")
    d.add_paragraph("本手册适用于沃萝科技全体正式员工。This handbook applies to all permanent employees.")
    d.add_heading("1 工作时间 Working hours", level=1)
    d.add_paragraph("核心工作时间为 10:00 至 16:00，其余时间可弹性安排。")
    d.add_paragraph("Employees may work from home every Wednesday, after telling their team lead.")
    d.add_heading("2 假期 Holidays", level=1)
    d.add_heading("2.1 年假 Annual leave", level=2)
    d.add_paragraph("年假天数按工龄计算 (annual leave by years of service):")
    table = d.add_table(rows=1, cols=2)
    table.style = "Table Grid"
    table.rows[0].cells[0].text = "工龄 Years of service"
    table.rows[0].cells[1].text = "年假 Annual leave"
    for years, days in (("1-4 years", "10 days"), ("5-9 years", "15 days"), ("10+ years", "20 days")):
        cells = table.add_row().cells
        cells[0].text, cells[1].text = years, days
    d.add_paragraph("Unused annual leave can be carried over until the end of March of the next year.")
    d.add_heading("2.2 春节 Spring Festival", level=2)
    d.add_paragraph("春节期间公司统一放假 9 天，嘉兴工厂于正月初十复工。")
    d.add_heading("3 福利 Benefits", level=1)
    d.add_paragraph("午餐补贴每个工作日 35 元，随工资发放。", style="List Bullet")
    d.add_paragraph("Each employee receives a 2,000 RMB annual training budget.", style="List Bullet")
    d.save(str(path))
    _pin_zip(path)


# --- XLSX ------------------------------------------------------------------------------------------


def write_xlsx(path: Path) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    wb.properties.title = "Varnolia sales 2024 沃萝科技 2024 年销售"
    wb.properties.created = wb.properties.modified = FIXED_TIME
    ws = wb.active
    ws.title = "Quarterly 2024"
    ws.append(
        ["Quarter 季度", "Revenue (10k RMB) 营收（万元）", "Units shipped 出货量", "New customers 新客户"]
    )
    for row in (("Q1 2024", 1280, 9400, 35), ("Q2 2024", 1530, 11200, 41), ("Q3 2024", 1860, 13900, 52),
                ("Q4 2024", 2140, 15600, 58)):  # fmt: skip
        ws.append(list(row))
    regions = wb.create_sheet("区域 Regions")
    regions.append(["区域 Region", "经销商数量 Dealers", "区域经理 Manager"])
    for row in (("华东 East China", 42, "林晓雯"), ("华南 South China", 27, "周启航"),
                ("华北 North China", 19, "马骁"), ("西南 Southwest", 11, "唐雪")):  # fmt: skip
        regions.append(list(row))
    wb.save(path)
    _pin_zip(path)


# --- PPTX ------------------------------------------------------------------------------------------


def write_pptx(path: Path) -> None:
    import pptx
    from pptx.util import Inches

    prs = pptx.Presentation()
    prs.core_properties.title = "VX-900 营养液传感器发布 VX-900 Nutrient Sensor Launch"
    prs.core_properties.created = prs.core_properties.modified = FIXED_TIME
    s1 = prs.slides.add_slide(prs.slide_layouts[0])
    s1.shapes.title.text = "VX-900 营养液传感器发布 / VX-900 Nutrient Sensor Launch"
    s1.placeholders[1].text = "2025 产品发布会 · Varnolia Tech"
    s2 = prs.slides.add_slide(prs.slide_layouts[5])
    s2.shapes.title.text = "主要参数 Key specs"
    specs = (("参数 Item", "数值 Value"), ("EC 量程 EC range", "0-10 mS/cm"),
             ("pH accuracy 酸碱度精度", "±0.05"), ("售价 Price", "2899 RMB"),
             ("电池 Battery", "24 months"))  # fmt: skip
    shape = s2.shapes.add_table(len(specs), 2, Inches(1), Inches(1.8), Inches(8), Inches(3))
    for i, row in enumerate(specs):
        for j, value in enumerate(row):
            shape.table.cell(i, j).text = value
    s2.notes_slide.notes_text_frame.text = "强调：VX-900 是沃萝第一款营养液传感器。"
    s3 = prs.slides.add_slide(prs.slide_layouts[1])
    s3.shapes.title.text = "上市计划 Launch plan"
    body = s3.placeholders[1].text_frame
    body.text = "Pre-orders open on 2025-03-18 in the Varnolia Grow app."
    body.add_paragraph().text = "首批产量 5,000 台，由嘉兴工厂生产。"
    s3.notes_slide.notes_text_frame.text = (
        "演讲备注：预售期间下单立减 300 元。Mention the 300 RMB pre-order discount."
    )
    prs.save(str(path))
    _pin_zip(path)


# --- PDF -------------------------------------------------------------------------------------------


def _pdf_styles() -> dict[str, Any]:
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    base = {"fontName": "STSong-Light", "wordWrap": "CJK"}
    return {
        "h1": ParagraphStyle("h1", fontSize=18, leading=26, spaceAfter=10, **base),
        "h2": ParagraphStyle("h2", fontSize=14, leading=20, spaceBefore=8, spaceAfter=6, **base),
        "body": ParagraphStyle("body", fontSize=10.5, leading=15, spaceAfter=8, **base),
    }


def write_pdf(path: Path) -> None:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Table, TableStyle

    st = _pdf_styles()

    def footer(canvas: Any, doc: Any) -> None:
        canvas.setFont("STSong-Light", 9)
        canvas.drawString(72, 40, f"Varnolia Tech · 保修与服务条款 · 第 {doc.page} 页")

    doc = SimpleDocTemplate(
        str(path),
        pagesize=A4,
        invariant=1,
        title="保修与服务条款 Warranty and Service Terms",
        author="Varnolia",
    )
    grid = TableStyle(
        [("GRID", (0, 0), (-1, -1), 0.5, colors.black), ("FONTNAME", (0, 0), (-1, -1), "STSong-Light")]
    )
    prices = [["Model 型号", "Extra year (RMB) 每年延保价", "Max extra years 最长延保年数"],
              ["VX-100", "49", "2"], ["VX-200", "129", "2"], ["VX-350", "199", "2"], ["VX-500", "299", "3"],
              ["VX-800", "89", "2"]]  # fmt: skip
    story = [
        Paragraph("保修与服务条款 Warranty and Service Terms", st["h1"]),
        Paragraph("1 保修范围 Coverage", st["h2"]),
        Paragraph("保修期自签收之日起计算，以物流签收记录为准。", st["body"]),
        Paragraph("Damage caused by lightning or flooding is not covered by the warranty.", st["body"]),
        Paragraph("人为损坏、私自拆机的产品不在保修范围内。", st["body"]),
        PageBreak(),
        Paragraph("2 延保服务 Extended warranty", st["h2"]),
        Paragraph("延保可在保修期内通过沃萝种植 App 购买，按年计费。", st["body"]),
        Table(prices, style=grid),
        Paragraph("Extended warranty is bought per device and cannot be transferred.", st["body"]),
        PageBreak(),
        Paragraph("3 维修时效 Repair turnaround", st["h2"]),
        Paragraph("寄修产品在收到后 5 个工作日内修复并寄回。", st["body"]),
        Paragraph("Replacement units for dead-on-arrival devices ship within 48 hours.", st["body"]),
    ]
    doc.build(story, onFirstPage=footer, onLaterPages=footer)


# --- images ----------------------------------------------------------------------------------------


def render_text_image(lines: tuple[str, ...], *, size: int = 30, width: int = 1000) -> Any:
    """White image with black text lines: what a phone photo of a printed notice looks like, minus noise."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(cjk_font_path()), size)
    title_font = ImageFont.truetype(str(cjk_font_path()), round(size * 1.3))
    height = 60 + len(lines) * round(size * 2.2)
    img = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(img)
    y = 40
    for i, line in enumerate(lines):
        draw.text((50, y), line, font=title_font if i == 0 else font, fill=0)
        y += round(size * 2.2)
    return img


def write_png(path: Path) -> None:
    render_text_image(c.NOTICE_LINES).save(path, format="PNG", optimize=True)


def write_scanned_pdf(path: Path) -> None:
    """An image-only PDF page (no text layer), like a scanner's output."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    img = render_text_image(c.CERT_LINES)
    cv = canvas.Canvas(str(path), pagesize=A4, invariant=1)
    cv.setTitle("质量管理体系认证证书（扫描件）ISO 9001 certificate scan")
    w = A4[0] - 100
    h = w * img.height / img.width
    cv.drawImage(ImageReader(img), 50, A4[1] - 80 - h, width=w, height=h)
    cv.showPage()
    cv.save()


# --- text formats ----------------------------------------------------------------------------------

_HTML = """<!DOCTYPE html>
<html><head><meta charset="gbk"><title>联系我们 Contact Varnolia</title>
<style>body {{ font-family: sans-serif; }}</style>
<script>var tracking = "这段脚本不应出现在知识库里";</script></head>
<body>
<nav><a href="/">首页 Home</a> | <a href="/products">产品 Products</a></nav>
<h1>联系我们 Contact us</h1>
<h2>杭州总部 Hangzhou headquarters</h2>
<p>地址：杭州市西湖区文三路 478 号华星科技大厦 12 层。</p>
<p>Address: 12F, Huaxing Tech Tower, 478 Wensan Road, Xihu District, Hangzhou.</p>
<h2>嘉兴工厂 Jiaxing factory</h2>
<p>嘉兴市南湖区亚中路 66 号；工厂参观需提前 3 个工作日预约。</p>
<h2>深圳销售办事处 Shenzhen sales office</h2>
<p>7F, Building B, Kexing Science Park, 15 Keyuan Road, Nanshan District, Shenzhen.</p>
<h2>电话分机 Phone extensions</h2>
<table>
<thead><tr><th>部门 Department</th><th>分机 Extension</th></tr></thead>
<tbody>
<tr><td>销售 Sales</td><td>8201</td></tr>
<tr><td>售后 After-sales</td><td>8305</td></tr>
<tr><td>媒体 Media</td><td>8410</td></tr>
</tbody></table>
<ul><li>总机 Switchboard: 0571-8690-2200</li><li>传真 Fax: 0571-8690-2211</li></ul>
</body></html>
"""

_MD = """# Varnolia 安装与使用 FAQ

## 配对 Pairing

在沃萝种植 App 中扫描设备背面的二维码即可配对，配对码有效期为 10 分钟。

## 重置 Reset

Hold the reset button for 8 seconds until the LED blinks orange; the sensor then forgets its gateway.

## 指示灯 LED colours

| 颜色 Colour | 含义 Meaning |
|---|---|
| 绿色 Green | 在线 Online |
| 蓝色 Blue | 配对中 Pairing |
| 红色 Red | 电量低于 10% Battery below 10% |

## 固件 Firmware

- Firmware updates are installed automatically at 03:00 local time.
- 升级期间传感器会暂停上报约 2 分钟。

To update by hand from a computer:

```
varnolia-cli firmware update --channel stable
```
"""

_TXT = """VX 固件 3.2.1 版本发布说明 / Firmware 3.2.1 release notes

发布日期：2024-11-05

本版本将 VX-200 的数据上报间隔从 10 分钟缩短为 5 分钟。

Fixed: the VX-500 gateway no longer drops sensors after 30 days of uptime.

Known issue: the VX-800 may report 0 lux for one minute after a reboot.
"""

_CSV = """编号 Part no.,名称 Name,价格 Price (RMB)
SP-01,电池仓盖 Battery cover,15
SP-02,探针 Probe (VX-100),68
SP-03,天线 Antenna (VX-500),45
SP-04,防水圈 Waterproof seal,9
"""


def write_demo_docs(dest: Path) -> list[Path]:
    """Write the demo document set into ``dest`` (created if needed); returns the files written."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    writers = {
        c.HANDBOOK: write_docx,
        c.SALES: write_xlsx,
        c.LAUNCH: write_pptx,
        c.WARRANTY: write_pdf,
        c.OFFICES: lambda p: p.write_bytes(_HTML.encode("gbk")),
        c.FAQ: lambda p: p.write_text(_MD, encoding="utf-8"),
        c.RELEASE: lambda p: p.write_text(_TXT, encoding="utf-8"),
        c.PARTS: lambda p: p.write_bytes(_CSV.encode("utf-8-sig")),
        c.NOTICE: write_png,
        c.CERT: write_scanned_pdf,
    }
    paths = []
    for name, write in writers.items():
        path = dest / name
        write(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    import json

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m onebox.rag.demo.make_docs DEST", file=sys.stderr)
        return 2
    dest = Path(args[0])
    paths = write_demo_docs(dest)
    with (dest / "questions.jsonl").open("w", encoding="utf-8") as fh:
        for q in demo_questions():
            fh.write(json.dumps(q, ensure_ascii=False) + "\n")
    total = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} documents ({total:,} bytes) and questions.jsonl to {dest}")
    return 0


__all__ = ["demo_questions", "write_demo_docs"]

if __name__ == "__main__":
    raise SystemExit(main())
