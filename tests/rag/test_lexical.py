"""Lexical terms: the same function segments chunks and queries, in Chinese, English or both."""

from __future__ import annotations

import threading

from onebox.rag.lexical import query_terms, terms


def test_chinese_is_segmented_in_search_mode() -> None:
    got = terms("知识库检索结合了关键词匹配。")
    assert {"知识", "知识库", "检索", "关键", "关键词", "匹配"} <= set(got)
    assert "了" not in got and "。" not in got


def test_english_words_lowercased_without_stopwords_or_punctuation() -> None:
    assert terms("The Quick, brown fox: jumps over the lazy dog!") == [
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
    ]


def test_model_numbers_and_years_are_kept_whole_and_in_parts() -> None:
    assert terms("VX-200 in 2024") == ["vx200", "vx", "200", "2024"]
    # Full-width forms (common in Chinese documents) normalise to the same terms.
    assert terms("ＶＸ－２００") == terms("VX-200") == terms("vx_200")[:3]
    assert "gpt4o" in terms("GPT-4o") and "v21" in terms("v2.1")


def test_mixed_text_keeps_both_scripts_in_order() -> None:
    got = terms("型号VX-200的锂电池battery容量2024年")
    assert got[:4] == ["型号", "vx200", "vx", "200"]
    assert {"锂电", "电池", "锂电池", "battery", "容量", "2024", "年"} <= set(got)
    assert "的" not in got


def test_other_scripts_pass_through() -> None:
    assert terms("Naïve café Москва") == ["naïve", "café", "москва"]


def test_query_terms_are_distinct_and_empty_queries_give_nothing() -> None:
    assert query_terms("储能 储能 battery Battery") == ["储能", "battery"]
    assert query_terms("") == [] and query_terms("，。！?") == [] and query_terms("的 the") == []


def test_threads_share_one_segmenter() -> None:
    results: list[list[str]] = []
    text = "中华人民共和国的知识库"
    threads = [threading.Thread(target=lambda: results.append(terms(text))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r == results[0] for r in results) and "中华人民共和国" in results[0]
