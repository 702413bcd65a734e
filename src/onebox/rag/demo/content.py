"""The facts of the demo document set, one document each, and the questions that check them.

Kept apart from the writers so the questions and the documents cannot drift: every gold substring
below is asserted (by the tests) to occur in exactly one parsed demo document, its ``source``.
Varnolia Tech is fictional; facts here extend ``onebox/data/demo/facts.md`` without repeating it.
"""

from __future__ import annotations

HANDBOOK = "varnolia_employee_handbook.docx"
SALES = "varnolia_sales_2024.xlsx"
LAUNCH = "varnolia_vx900_launch.pptx"
WARRANTY = "varnolia_warranty_service.pdf"
OFFICES = "varnolia_offices.html"
FAQ = "varnolia_install_faq.md"
RELEASE = "varnolia_release_notes.txt"
PARTS = "varnolia_spare_parts.csv"
NOTICE = "varnolia_repair_notice.png"
CERT = "varnolia_iso_certificate_scan.pdf"

# Text drawn into the two images (OCR): short lines, large type.
NOTICE_LINES = (
    "沃萝科技维修中心通知",
    "维修中心地址：嘉兴市秀洲区康和路1288号",
    "Repair center open on Saturdays 9:30-15:30",
    "Service ticket prefix: RX-7391",
)
CERT_LINES = (
    "质量管理体系认证证书",
    "证书编号：CN-QMS-2023-4471",
    "Certified to ISO 9001:2015",
    "Valid until 2026-08-31",
)

# (lang, question, answer, source, gold substring of the passage that answers it)
_QUESTIONS: tuple[tuple[str, str, str, str, str], ...] = (
    ("zh", "沃萝科技的核心工作时间是几点到几点？", "10:00 至 16:00", HANDBOOK,
     "核心工作时间为 10:00 至 16:00"),
    ("en", "Which day of the week may Varnolia employees work from home?", "Wednesday", HANDBOOK,
     "work from home every Wednesday"),
    ("en", "How many days of annual leave does an employee with 6 years of service get?", "15 days", HANDBOOK,
     "| 5-9 years | 15 days |"),
    ("zh", "沃萝科技春节统一放假几天？", "9 天", HANDBOOK, "春节期间公司统一放假 9 天"),
    ("zh", "沃萝科技的午餐补贴每天多少钱？", "35 元", HANDBOOK, "午餐补贴每个工作日 35 元"),
    ("en", "How large is each employee's annual training budget?", "2,000 RMB", HANDBOOK,
     "2,000 RMB annual training budget"),
    ("en", "What was Varnolia's revenue in Q3 2024?", "18.6 million RMB (1860 × 10k RMB)", SALES,
     "| Q3 2024 | 1860 |"),
    ("en", "How many units did Varnolia ship in Q4 2024?", "15600", SALES, "| Q4 2024 | 2140 | 15600 |"),
    ("zh", "华南区的区域经理是谁？", "周启航", SALES, "华南 South China | 27 | 周启航"),
    ("zh", "华东区有多少家经销商？", "42 家", SALES, "华东 East China | 42"),
    ("en", "What is the pH accuracy of the VX-900?", "±0.05", LAUNCH, "| pH accuracy 酸碱度精度 | ±0.05 |"),
    ("zh", "VX-900 营养液传感器售价多少？", "2899 元", LAUNCH, "| 售价 Price | 2899 RMB |"),
    ("en", "When do VX-900 pre-orders open?", "18 March 2025 (2025-03-18)", LAUNCH,
     "Pre-orders open on 2025-03-18"),
    ("zh", "VX-900 预售期间有什么优惠？", "下单立减 300 元", LAUNCH, "预售期间下单立减 300 元"),
    ("en", "Is damage caused by lightning covered by the warranty?", "No", WARRANTY,
     "lightning or flooding is not covered"),
    ("zh", "VX-500 延长保修每年多少钱？", "299 元", WARRANTY, "| VX-500 | 299 | 3 |"),
    ("en", "How much does one extra year of warranty cost for the VX-800?", "89 RMB", WARRANTY,
     "| VX-800 | 89 | 2 |"),
    ("zh", "寄修的产品多久可以修好寄回？", "收到后 5 个工作日内", WARRANTY, "收到后 5 个工作日内修复并寄回"),
    ("en", "How fast are replacements for dead-on-arrival devices shipped?", "within 48 hours", WARRANTY,
     "dead-on-arrival devices ship within 48 hours"),
    ("zh", "沃萝科技杭州总部的地址是什么？", "杭州市西湖区文三路 478 号华星科技大厦 12 层", OFFICES,
     "文三路 478 号华星科技大厦"),
    ("en", "Where is Varnolia's Shenzhen sales office?",
     "7F, Building B, Kexing Science Park, 15 Keyuan Road, Nanshan",
     OFFICES, "Building B, Kexing Science Park"),
    ("zh", "参观嘉兴工厂需要提前多久预约？", "3 个工作日", OFFICES, "工厂参观需提前 3 个工作日预约"),
    ("en", "Which phone extension handles media enquiries?", "8410", OFFICES, "| 媒体 Media | 8410 |"),
    ("zh", "App 配对码的有效期是多久？", "10 分钟", FAQ, "配对码有效期为 10 分钟"),
    ("en", "How long must the reset button be held?", "8 seconds", FAQ,
     "Hold the reset button for 8 seconds"),
    ("en", "What does a red LED on a Varnolia sensor mean?", "The battery is below 10%", FAQ,
     "| 红色 Red | 电量低于 10% Battery below 10% |"),
    ("en", "At what time are firmware updates installed automatically?", "03:00", FAQ,
     "installed automatically at 03:00"),
    ("zh", "固件 3.2.1 版本是哪天发布的？", "2024-11-05", RELEASE, "发布日期：2024-11-05"),
    ("zh", "固件 3.2.1 把 VX-200 的数据上报间隔改成了多少？", "5 分钟", RELEASE, "从 10 分钟缩短为 5 分钟"),
    ("en", "Which VX-500 bug did firmware 3.2.1 fix?", "The gateway dropped sensors after 30 days of uptime",
     RELEASE, "no longer drops sensors after 30 days of uptime"),
    ("en", "How much does a replacement probe for the VX-100 cost?", "68 RMB", PARTS,
     "| SP-02 | 探针 Probe (VX-100) | 68 |"),
    ("zh", "防水圈配件多少钱？", "9 元", PARTS, "| SP-04 | 防水圈 Waterproof seal | 9 |"),
    ("zh", "沃萝科技维修中心在哪里？", "嘉兴市秀洲区康和路 1288 号", NOTICE, "康和路1288号"),
    ("en", "When is the repair center open on Saturdays?", "9:30-15:30", NOTICE, "9:30-15:30"),
    ("zh", "沃萝科技质量管理体系认证证书的编号是多少？", "CN-QMS-2023-4471", CERT, "CN-QMS-2023-4471"),
    ("en", "Until when is Varnolia's ISO 9001 certificate valid?", "2026-08-31", CERT, "2026-08-31"),
)  # fmt: skip


def demo_questions() -> list[dict[str, str]]:
    """Questions about the demo documents (half Chinese, half English) with answer and gold passage.

    ``gold`` is a short substring of the passage that answers the question, present in exactly one
    document (``source``): a retrieved chunk is relevant when its text contains it.
    """
    return [
        {"id": f"Q{i:02d}", "lang": lang, "question": q, "answer": a, "source": src, "gold": gold}
        for i, (lang, q, a, src, gold) in enumerate(_QUESTIONS, start=1)
    ]
