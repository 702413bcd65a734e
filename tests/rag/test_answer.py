"""Grounded prompts, citation parsing and the not-found rule; the model is a stub."""

from __future__ import annotations

import pytest

from onebox.errors import ConfigError
from onebox.rag.answer import (
    NOT_FOUND_MESSAGE,
    RelevanceRule,
    answer,
    below_threshold,
    build_messages,
    parse_citations,
    query_terms,
    relevance,
)
from onebox.rag.types import Chunk, DocumentRecord, Hit


def hit(n: int, text: str, *, page: int | None = None, title: str = "", **scores: float) -> Hit:
    doc = DocumentRecord(f"d{n}", f"docs/file{n}.pdf", "h", "pdf", title or f"File {n}", 10)
    chunk = Chunk(f"d{n}:0", f"d{n}", 0, text, page_start=page, page_end=page)
    return Hit(chunk=chunk, score=1.0, rank=n, document=doc, scores=scores)


LEAVE = hit(
    1, "员工每年享有十五天带薪年假，需提前两周申请。", page=3, title="员工手册", lexical=4.2, dense=0.55
)
TRAVEL = hit(2, "Travel claims need original invoices and an itinerary.", page=7, lexical=1.0, dense=0.2)
SECURITY = hit(3, "Passwords rotate every ninety days.", dense=0.1)


def never(_: list[dict[str, str]]) -> str:
    raise AssertionError("the model must not be called")


def test_prompt_numbers_sources_and_states_the_rules() -> None:
    messages, used = build_messages("年假有多少天？", [LEAVE, TRAVEL, SECURITY])
    assert used == [LEAVE, TRAVEL, SECURITY]
    system, user = messages[0]["content"], messages[1]["content"]
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "same language as the question" in system and "[1]" in system and NOT_FOUND_MESSAGE in system
    assert "[1] 员工手册 (p. 3)\n员工每年享有十五天带薪年假，需提前两周申请。" in user
    assert "[2] File 2 (p. 7)\nTravel claims" in user
    assert "[3] File 3\nPasswords" in user  # no locator, no parentheses
    assert user.rstrip().endswith("Question: 年假有多少天？")


def test_source_budget_drops_the_lowest_ranked() -> None:
    count = len  # one token per character keeps the arithmetic visible
    _, used = build_messages("q", [LEAVE, TRAVEL, SECURITY], max_source_tokens=110, count_tokens=count)
    assert used == [LEAVE, TRAVEL]
    messages, used = build_messages("q", [TRAVEL, LEAVE], max_source_tokens=30, count_tokens=count)
    assert used == [TRAVEL]  # the best source is cut to fit rather than dropped
    block = messages[1]["content"].split("\n\nQuestion:")[0].removeprefix("Sources:\n\n")
    assert len(block) <= 30 and block.startswith("[1] File 2 (p. 7)\nTravel")


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("年假是十五天[1]。", [1]),
        ("Leave is 15 days [1][2], claims need invoices [2].", [1, 2]),
        ("See [2, 1] and [3].", [2, 1, 3]),
        ("见【1】和【2，3】。", [1, 2, 3]),
        ("Sources [1-3]", [1, 2, 3]),
        ("Nothing cited, a year [2024], [0] and [9].", []),
    ],
)
def test_citation_forms(text: str, numbers: list[int]) -> None:
    cites = parse_citations(text, [LEAVE, TRAVEL, SECURITY])
    assert [c.number for c in cites] == numbers


def test_citations_point_at_files_and_pages() -> None:
    (c,) = parse_citations("答案[1]", [LEAVE])
    assert (c.source, c.title, c.locator, c.page_start, c.chunk_id) == (
        "docs/file1.pdf",
        "员工手册",
        "p. 3",
        3,
        "d1:0",
    )


def test_not_found_rule() -> None:
    assert below_threshold([])
    # English: the dense cosine decides
    assert not below_threshold([hit(1, "Annual leave is fifteen days.", dense=0.6)], "How much vacation?")
    assert below_threshold([hit(1, "Annual leave is fifteen days.", dense=0.1)], "Capital of France?")
    # Chinese: MiniLM's cosine is ignored, the question's terms must be in a hit
    assert not below_threshold([LEAVE], "员工一年有几天年假？")
    assert below_threshold(
        [hit(1, "员工每年享有十五天带薪年假。", dense=0.9, lexical=2.0)], "法国的首都是哪里？"
    )
    # without the question: any lexical hit counts
    assert not below_threshold([TRAVEL])
    assert below_threshold([SECURITY])
    # a calibrated reranker, when configured, overrides the rest
    strict = RelevanceRule(min_rerank=0.5)
    assert below_threshold([hit(1, "Annual leave.", dense=0.9, rerank=0.2)], "annual leave", strict)
    assert not below_threshold([hit(1, "x", rerank=0.8)], "annual leave", strict)
    sig = relevance([LEAVE], "员工一年有几天年假？")
    assert sig.cjk_share == 1.0 and sig.term_coverage is not None and sig.term_coverage >= 0.3
    assert {"员工", "年假"} <= query_terms("员工一年有几天年假？")
    assert "什么" not in query_terms("差旅报销需要什么材料？")
    with pytest.raises(ConfigError):
        RelevanceRule(min_dense=2.0, min_term_coverage=-1)


def test_answer_not_found_skips_the_model() -> None:
    ans = answer("法国的首都是哪里？", [LEAVE], never)
    assert ans.not_found and ans.text == NOT_FOUND_MESSAGE and ans.citations == () and ans.hits == ()
    assert answer("anything", [], never).not_found


def test_answer_with_citations() -> None:
    seen: list[list[dict[str, str]]] = []

    def generate(messages: list[dict[str, str]]) -> str:
        seen.append(messages)
        return " 员工每年有十五天带薪年假【1】，报销需要发票[2][7]。 "

    ans = answer("员工一年有几天年假？", [LEAVE, TRAVEL], generate)
    assert len(seen) == 1 and "[2] File 2" in seen[0][1]["content"]
    assert not ans.not_found
    assert ans.text == "员工每年有十五天带薪年假【1】，报销需要发票[2][7]。"
    assert [c.number for c in ans.citations] == [1, 2]  # [7] names no source
    assert ans.hits == (LEAVE, TRAVEL)


def test_model_saying_not_found_is_flagged() -> None:
    ans = answer("员工一年有几天年假？", [LEAVE], lambda _: "This is not in the knowledge base. [1]")
    assert ans.not_found and ans.citations == ()


def test_answer_without_marks_is_attributed_to_the_source_holding_its_facts() -> None:
    from onebox.rag.answer import attribute

    hits = [
        hit(1, "The VX-900 measures pH with an accuracy of 0.05 and weighs 2.1 kg."),
        hit(2, "Annual leave is 15 days for every employee."),
    ]
    cites = attribute("The pH accuracy of the VX-900 is 0.05.", "What is the pH accuracy?", hits)
    assert [(c.number, c.inferred) for c in cites] == [(1, True)]
    assert attribute("What is the pH accuracy?", "What is the pH accuracy?", hits) == []  # an echo
    assert attribute("It is blue and made of glass.", "What colour is it?", hits) == []  # no source
    zh = [hit(3, "沃萝科技维修中心位于苏州工业园区星湖街88号。"), hits[1]]
    cites = attribute("维修中心在苏州工业园区星湖街。", "维修中心在哪里？", zh)
    assert [c.number for c in cites] == [1]
