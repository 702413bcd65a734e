"""Chunker invariants on Chinese and English text, tables, headings and pages.

A simple, additive token counter (one token per CJK character, word or punctuation mark) stands in
for the MiniLM tokenizer here; test_embedding.py checks the chunker against the real one.
"""

from __future__ import annotations

import itertools
import random
import re

import pytest

from onebox.errors import ConfigError
from onebox.rag.chunking import chunk_elements, split_sentences
from onebox.rag.types import Chunk, Element

_TOKEN = re.compile(r"[\u4e00-\u9fff]|[A-Za-z0-9]+|[^\sA-Za-z0-9\u4e00-\u9fff]")


def count(text: str) -> int:
    return len(_TOKEN.findall(text))


ZH = [
    "员工每年享有十五天带薪年假。",
    "年假需提前两周向直属主管申请！",
    "未使用的年假可以顺延到下一年吗？",
    "他说：“机房温度必须保持在二十度左右。”",
    "报销差旅费用时须附上发票原件和行程单；",
    "新员工入职第一周需完成安全培训课程……",
    "数据不得上传到任何外部云服务。",
]
EN = [
    "Employees get fifteen days of paid annual leave.",
    "Mr. Smith approved the budget of $3.50 per unit.",
    "The U.S. office follows the same rules, e.g. for travel.",
    "Is the server room kept between 18 and 27 degrees?",
    "Expense claims need original invoices!",
    "Dr. Li wrote the security policy in 2021.",
]


def sentences_of(chunks: list[Chunk]) -> str:
    return "\n".join(c.text for c in chunks)


def test_split_sentences_chinese_and_english() -> None:
    zh = "他说：“今天很好。”我们去公园吧！真的吗？好的；走吧……然后呢"
    assert split_sentences(zh) == [
        "他说：“今天很好。”",
        "我们去公园吧！",
        "真的吗？",
        "好的；",
        "走吧……",
        "然后呢",
    ]
    en = "Mr. Smith paid $3.50 for it. See Fig. 3 now. The U.S. army is big. He left! Did he? Yes."
    assert [s.strip() for s in split_sentences(en)] == [
        "Mr. Smith paid $3.50 for it.",
        "See Fig. 3 now.",
        "The U.S. army is big.",
        "He left!",
        "Did he?",
        "Yes.",
    ]
    assert [s.strip() for s in split_sentences("Visit a.php?x=1 today. J. Doe came.\n\nNew para")] == [
        "Visit a.php?x=1 today.",
        "J. Doe came.",
        "New para",
    ]
    mixed = "The VX-200 ships in May. 保修期为两年。Call us."
    assert "".join(split_sentences(mixed)) == mixed
    assert len(split_sentences(mixed)) == 3


def _random_doc(rng: random.Random) -> tuple[list[Element], dict[str, tuple[tuple[str, ...], int]]]:
    """Headings, paragraphs of random sentences over several pages; where each sentence went."""
    elements: list[Element] = []
    where: dict[str, tuple[tuple[str, ...], int]] = {}
    page = 1
    for h in range(rng.randint(1, 4)):
        heading = f"第{h + 1}章 Section {h + 1}"
        elements.append(Element("heading", heading, level=1, page=page))
        for _ in range(rng.randint(1, 6)):
            sents = []
            for _ in range(rng.randint(1, 8)):
                base, n = rng.choice(ZH + EN), rng.randint(0, 10**6)
                sents.append(f"编号{n}{base}" if base in ZH else f"Item {n}: {base}")
            for s in sents:
                where[s] = ((heading,), page)
            text = "".join(x if x in ZH or x.endswith(tuple("。！？；…”")) else x + " " for x in sents)
            elements.append(Element("paragraph", text, heading_path=(heading,), page=page))
            page += rng.random() < 0.4
    return elements, where


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(("max_tokens", "overlap"), [(40, 8), (80, 20), (250, 40)])
def test_chunk_invariants_on_random_documents(seed: int, max_tokens: int, overlap: int) -> None:
    rng = random.Random(seed)
    elements, where = _random_doc(rng)
    title = "员工手册 Handbook"
    chunks = chunk_elements(
        "doc", elements, count_tokens=count, max_tokens=max_tokens, overlap_tokens=overlap, title=title
    )
    assert chunks
    assert [c.chunk_id for c in chunks] == [f"doc:{i}" for i in range(len(chunks))]
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.n_tokens == count(c.embed_text(title)) <= max_tokens
        assert c.page_start is not None and c.page_end is not None and c.page_start <= c.page_end
    for sentence, (path, page) in where.items():
        holders = [c for c in chunks if sentence in c.text]
        assert holders, f"sentence split or lost: {sentence!r}"
        for c in holders:  # a sentence sits only under its own heading, and its page is in range
            assert c.heading_path == path
            assert c.page_start <= page <= c.page_end  # type: ignore[operator]
    again = chunk_elements(
        "doc", elements, count_tokens=count, max_tokens=max_tokens, overlap_tokens=overlap, title=title
    )
    assert again == chunks  # deterministic


def test_small_paragraphs_merge_and_headings_start_chunks() -> None:
    els = [
        Element("heading", "Leave", level=1),
        Element("paragraph", "Annual leave is fifteen days.", heading_path=("Leave",), page=1),
        Element("list_item", "Apply two weeks ahead.", heading_path=("Leave",), page=2),
        Element("heading", "Travel", level=1),
        Element("heading", "Claims", level=2, heading_path=("Travel",)),
        Element("paragraph", "差旅报销须附发票。", heading_path=("Travel", "Claims"), page=2),
    ]
    chunks = chunk_elements("d", els, count_tokens=count, max_tokens=100)
    assert [c.text for c in chunks] == [
        "Annual leave is fifteen days.\nApply two weeks ahead.",
        "差旅报销须附发票。",
    ]
    assert [c.heading_path for c in chunks] == [("Leave",), ("Travel", "Claims")]
    assert [(c.page_start, c.page_end) for c in chunks] == [(1, 2), (2, 2)]
    assert chunks[1].embed_text("Handbook") == "Handbook / Travel / Claims\n差旅报销须附发票。"


def test_headings_without_paths_from_the_parser_are_tracked() -> None:
    els = [
        Element("title", "Handbook"),
        Element("heading", "Leave", level=1),
        Element("paragraph", "Fifteen days."),
        Element("heading", "Travel", level=1),
        Element("paragraph", "Keep invoices."),
    ]
    chunks = chunk_elements("d", els, count_tokens=count, title="Handbook")
    assert [(c.heading_path, c.text) for c in chunks] == [
        (("Leave",), "Fifteen days."),
        (("Travel",), "Keep invoices."),
    ]


def test_overlap_is_whole_sentences_within_a_section_only() -> None:
    s = [f"这是第{i}句话，内容比较短。" for i in range(12)]  # 13 tokens each
    els = [
        Element("paragraph", "".join(s[:8]), heading_path=("A",)),
        Element("paragraph", "".join(s[8:]), heading_path=("B",)),
    ]
    chunks = chunk_elements("d", els, count_tokens=count, max_tokens=40, overlap_tokens=14)
    a = [c for c in chunks if c.heading_path == ("A",)]
    b = [c for c in chunks if c.heading_path == ("B",)]
    assert len(a) >= 3
    for prev, nxt in itertools.pairwise(a):
        last = split_sentences(prev.text)[-1]
        assert nxt.text.startswith(last)  # one whole sentence carried over
    assert not any(sent in b[0].text for sent in s[:8])  # nothing carried across the heading change
    no_overlap = chunk_elements("d", els, count_tokens=count, max_tokens=40, overlap_tokens=0)
    assert sum(len(c.text) for c in no_overlap) < sum(len(c.text) for c in chunks)


def test_table_splits_between_rows_and_repeats_the_header() -> None:
    rows = (("姓名", "Department", "年假天数"), *((f"员工{i}", f"Dept {i}", str(10 + i)) for i in range(30)))
    els = [
        Element("paragraph", "The table lists leave per person.", heading_path=("Leave",), page=4),
        Element("table", "", heading_path=("Leave",), page=5, rows=rows, header_rows=1),
    ]
    chunks = chunk_elements("d", els, count_tokens=count, max_tokens=60, overlap_tokens=10)
    table_chunks = [c for c in chunks if "|" in c.text]
    assert len(table_chunks) > 2
    header = "| 姓名 | Department | 年假天数 |"
    body_seen: list[str] = []
    for c in table_chunks:
        lines = c.text.splitlines()
        assert lines[0] == header
        assert all(line.startswith("| ") and line.endswith(" |") for line in lines)
        body_seen += lines[1:]
        assert c.page_start == c.page_end == 5
        assert c.n_tokens <= 60
    assert body_seen == [f"| 员工{i} | Dept {i} | {10 + i} |" for i in range(30)]  # each row once, whole
    small = chunk_elements(
        "d",
        [els[0], Element("table", "", heading_path=("Leave",), rows=rows[:3], header_rows=1)],
        count_tokens=count,
    )
    assert len(small) == 1  # a table that fits merges with the paragraph before it


def test_long_sentences_split_at_clauses_then_tokens() -> None:
    clauses = "，".join(f"第{i}个条件必须满足" for i in range(20)) + "。"
    words = " ".join(f"word{i}" for i in range(300)) + "."
    els = [Element("paragraph", clauses), Element("paragraph", words)]
    chunks = chunk_elements("d", els, count_tokens=count, max_tokens=30, overlap_tokens=0)
    assert all(c.n_tokens <= 30 for c in chunks)
    zh = [c.text for c in chunks if "条件" in c.text]
    assert all(t.endswith(("，", "。")) for t in zh)  # cut after clause punctuation
    assert "".join(zh) == clauses
    en = [c.text for c in chunks if "word" in c.text]
    assert " ".join(en).split() == words.split()  # cut between words, none lost


def test_sheets_slides_headers_and_code() -> None:
    els = [
        Element("header", "Company Confidential", page=1),
        Element("table", "| a | b |\n| 1 | 2 |", sheet="Q1", header_rows=1),
        Element("table", "| a | b |\n| 3 | 4 |", sheet="Q2", header_rows=1),
        Element("paragraph", "Slide one text.", slide=1),
        Element("note", "Speaker note.", slide=1),
        Element("paragraph", "Slide two text.", slide=2),
        Element("code", "def f():\n    return 1\n", slide=2),
        Element("footer", "Page 1", page=1),
    ]
    chunks = chunk_elements("d", els, count_tokens=count)
    assert [(c.sheet, c.slide, c.locator()) for c in chunks] == [
        ("Q1", None, "sheet Q1"),
        ("Q2", None, "sheet Q2"),
        (None, 1, "slide 1"),
        (None, 2, "slide 2"),
    ]
    assert chunks[2].text == "Slide one text.\nSpeaker note."
    assert "def f():\n    return 1" in chunks[3].text
    assert not any("Confidential" in c.text or "Page 1" in c.text for c in chunks)


def test_long_headings_are_trimmed_to_keep_the_budget() -> None:
    path = tuple(f"Heading level {i} " + "long " * 10 for i in range(5))
    els = [Element("paragraph", "Short text.", heading_path=path)]
    (chunk,) = chunk_elements("d", els, count_tokens=count, max_tokens=40, title="T")
    assert chunk.n_tokens <= 40
    assert chunk.heading_path and chunk.heading_path[-1].startswith("Heading level 4")


def test_bad_budgets_are_refused_up_front() -> None:
    with pytest.raises(ConfigError) as err:
        chunk_elements("d", [], count_tokens=count, max_tokens=8, overlap_tokens=100)
    assert {p.field for p in err.value.problems} == {"max_tokens", "overlap_tokens"}
    assert chunk_elements("d", [], count_tokens=count) == []
