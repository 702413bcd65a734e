"""Metrics against values computed by hand, in Chinese and English."""

from __future__ import annotations

import math

import pytest

from onebox.evaluate.metrics import (
    bleu,
    contains,
    corpus_bleu,
    exact_match,
    keywords_hit,
    lcs_length,
    rouge_l,
    tokenize_for_metrics,
)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("VX-200 的售价是 1299 元。", ["vx", "200", "的", "售", "价", "是", "1299", "元"]),
        ("The VX-350 costs 2,199 RMB!", ["the", "vx", "350", "costs", "2,199", "rmb"]),
        ("ＶＸ－２００，保修２年", ["vx", "200", "保", "修", "2", "年"]),  # NFKC folds full width
        ("沃萝科技成立于2017年", ["沃", "萝", "科", "技", "成", "立", "于", "2017", "年"]),
        ("accuracy ±2.5%, Café", ["accuracy", "2.5", "café"]),
        ("。，！？…—", []),
        ("", []),
    ],
)
def test_tokenize_for_metrics(text: str, tokens: list[str]) -> None:
    assert tokenize_for_metrics(text) == tokens


def test_exact_match_ignores_case_width_punctuation_and_spaces() -> None:
    assert exact_match("The price is 1299 RMB.", "the price is 1299 rmb")
    assert exact_match("保修期是 2 年。", "保修期是２年")
    assert not exact_match("保修期是 3 年", "保修期是 2 年")
    assert not exact_match("The price is 1299 RMB, thanks", "The price is 1299 RMB")


def test_contains_is_token_level() -> None:
    assert contains("VX-200 的售价是1299元！", "1299 元")
    assert contains("Sure. The VX-500 costs 3499 RMB. Anything else?", "the vx-500 costs 3499 rmb")
    assert not contains("concatenate", "cat")
    assert not contains("售价是 1299 元", "售价是 1399 元")
    assert contains("", "") and not contains("something", "")


def test_keywords_hit_normalises_both_sides() -> None:
    assert keywords_hit("保修期为2年。", ["2 年"])  # whitespace removed on both sides
    assert keywords_hit("The warranty lasts 2 Years.", ["2 years"])
    assert keywords_hit("请拨打 400-600-5817", ["400-600-5817"])
    assert keywords_hit("ＶＸ－２００ 售价 1299", ["vx-200", "1299"])  # NFKC + lower-case
    assert not keywords_hit("售价 1299", ["vx-200", "1299"])  # every keyword needed
    assert not keywords_hit("anything", [])  # no keywords must not mean "correct"
    assert not keywords_hit("anything", [" "])


def test_keywords_hit_with_word_boundaries() -> None:
    assert keywords_hit("a warranty for the last 12 years", ["2 years"])  # the README's substring rule
    assert not keywords_hit("a warranty for the last 12 years", ["2 years"], word_boundaries=True)
    assert not keywords_hit("staff of 1200", ["120"], word_boundaries=True)
    assert not keywords_hit("VX-2000", ["VX-200"], word_boundaries=True)
    for pred, keyword in [
        ("保修期为2年", "2 年"),
        ("约120人", "120"),
        ("Varnolia's founder", "Varnolia"),
        ("沃萝科技", "沃萝"),
        ("ＶＸ－２００。", "vx-200"),
        ("call 400 - 600 - 5817.", "400-600-5817"),
    ]:
        assert keywords_hit(pred, [keyword], word_boundaries=True), (pred, keyword)


def test_lcs_length() -> None:
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert lcs_length([], ["a"]) == 0


def test_rouge_l_english() -> None:
    # LCS(the cat sat on the mat, the cat is on the mat) = "the cat on the mat" = 5; P = R = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert rouge_l("The cat.", "the CAT") == 1.0
    assert rouge_l("dog", "the cat") == 0.0


def test_rouge_l_chinese_characters() -> None:
    # pred 保修两年 (4), ref 保修期为两年 (6), LCS 保修两年 = 4: P = 1, R = 2/3, F = 0.8.
    assert rouge_l("保修两年", "保修期为两年") == pytest.approx(0.8)
    # 售价是一千元 vs 价格是一千元: LCS 价是一千元 = 5 of 6 each.
    assert rouge_l("售价是一千元", "价格是一千元") == pytest.approx(5 / 6)
    assert rouge_l("", "") == 1.0 and rouge_l("", "有") == 0.0


def test_bleu_english_with_exp_smoothing() -> None:
    # 1-grams 5/6, 2-grams 3/5, 3-grams 1/4, 4-grams 0/3 -> 1/(2*3); equal lengths, BP = 1.
    expected = (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert bleu("the cat sat on the mat", "the cat is on the mat") == pytest.approx(expected)
    assert bleu("The cat sat on the mat.", "the cat sat on the mat") == pytest.approx(1.0)


def test_bleu_chinese_brevity_penalty_and_repeated_smoothing() -> None:
    # 保修两年 vs 保修期为两年: 1-g 4/4, 2-g 2/3 (保修, 两年), 3-g 0/2 -> 1/(2*2), 4-g 0/1 -> 1/(4*1);
    # c = 4 < r = 6 -> BP = exp(1 - 6/4).
    expected = math.exp(1 - 6 / 4) * (1 * 2 / 3 * 1 / 4 * 1 / 4) ** 0.25
    assert bleu("保修两年", "保修期为两年") == pytest.approx(expected)


def test_bleu_effective_order_for_short_answers() -> None:
    assert bleu("hello world", "hello world") == pytest.approx(1.0)  # no 3/4-grams: orders 1-2 only
    assert bleu("hello", "hello world") == pytest.approx(math.exp(1 - 2))  # p1 = 1, BP = e^-1
    assert bleu("a b", "c d") == pytest.approx((1 / 4 * 1 / 4) ** 0.5)  # 1/(2*2), then 1/(4*1)
    assert bleu("", "") == 1.0 and bleu("", "有") == 0.0
    assert bleu("the cat sat", "the cat sat on", max_n=1) == pytest.approx(math.exp(1 - 4 / 3))


def test_corpus_bleu_sums_statistics_before_combining() -> None:
    preds = ["the cat sat on the mat", "你好世界"]
    refs = ["the cat is on the mat", "你好世界"]
    # 1-g (5+4)/(6+4), 2-g (3+3)/(5+3), 3-g (1+2)/(4+2), 4-g (0+1)/(3+1); lengths 10 = 10.
    expected = (9 / 10 * 6 / 8 * 3 / 6 * 1 / 4) ** 0.25
    assert corpus_bleu(preds, refs) == pytest.approx(expected)
    mean_sentence = (bleu(preds[0], refs[0]) + bleu(preds[1], refs[1])) / 2
    assert corpus_bleu(preds, refs) != pytest.approx(mean_sentence)
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        corpus_bleu(preds, refs[:1])
