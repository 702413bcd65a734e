from __future__ import annotations

import numpy as np
import pytest
from datasketch import MinHash

from onebox.data.clean import CleanConfig, clean, minhash_signatures, shingle_hashes
from onebox.data.schema import Example
from onebox.errors import ConfigError

ZH_A = (
    "沃萝科技成立于二零一七年，总部位于杭州，主要生产智能温室传感器，"
    "产品包括土壤湿度传感器和无线网关，销往全国各地。"
)
ZH_B = (
    "今天我们去公园散步，看到很多人在放风筝，孩子们在草地上奔跑，"
    "天气晴朗，阳光明媚，大家都玩得很开心，直到傍晚才回家。"
)
EN_A = (
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch, "
    "drinking his morning coffee and reading yesterday's newspaper."
)
EN_B = "Machine learning models need clean, deduplicated data; otherwise they memorise repeated rows."


def chat(line: int, user: str, assistant: str, system: str | None = None) -> Example:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return Example(line, messages=messages)


def text(line: int, value: str) -> Example:
    return Example(line, text=value)


def only(**kwargs) -> CleanConfig:
    """A config with every optional step off except those given."""
    base = {"dedupe_exact": False, "near_duplicate_threshold": None, "zscore_threshold": None}
    return CleanConfig(**{**base, **kwargs})


def test_nfkc_newlines_and_control_characters():
    example = chat(1, "ＡＢＣ１２３\r\n第二行\x00\x07\tok\ufeff", "答\r案\x1b")
    result = clean([example], only())
    assert result.kept[0].messages == [
        {"role": "user", "content": "ABC123\n第二行\tok"},
        {"role": "assistant", "content": "答\n案"},
    ]
    assert result.report.unicode_changed == 1


def test_default_form_folds_full_width_letters_but_keeps_chinese_punctuation():
    result = clean([text(1, "ＬＭ－２００多少钱？便宜（含税），好！")], only())
    assert result.kept[0].text == "LM-200多少钱？便宜（含税），好！"
    plain = clean([text(1, "多少钱？（含税），好！")], only(unicode_form="NFKC"))
    assert plain.kept[0].text == "多少钱?(含税),好!"


def test_unicode_form_none_keeps_full_width_but_still_fixes_controls():
    result = clean([text(1, "ＡＢＣ，你好\r\n\x00")], only(unicode_form=None))
    assert result.kept[0].text == "ＡＢＣ，你好\n"


def test_length_limits():
    examples = [text(1, "\x00\x01"), text(2, "短"), text(3, "刚好五个字"), text(4, "太长了" * 10)]
    result = clean(examples, only(min_chars=2, max_chars=20))
    assert [e.line for e in result.kept] == [3]
    assert [(q.example.line, q.reason) for q in result.quarantined] == [
        (1, "empty"),
        (2, "too_short"),
        (4, "too_long"),
    ]
    assert "30 characters, more than max_chars 20" in result.quarantined[2].detail
    assert result.report.removed["too_long"] == 1


def test_max_chars_counts_all_messages():
    result = clean([chat(1, "a" * 6, "b" * 6)], only(max_chars=10))
    assert result.quarantined[0].reason == "too_long"


def test_turn_emptied_by_cleaning_is_empty():
    result = clean([chat(1, "\x00\x01", "答案")], only())
    assert result.quarantined[0].reason == "empty"


def test_exact_duplicates_keep_the_first():
    examples = [
        chat(1, "你好", "您好"),
        chat(2, "在吗", "在"),
        chat(5, "你好", "您好"),
        chat(7, "你好", "您好"),
    ]
    result = clean(examples, only(dedupe_exact=True))
    assert [e.line for e in result.kept] == [1, 2]
    assert [(q.example.line, q.reason, q.detail) for q in result.quarantined] == [
        (5, "exact_duplicate", "duplicate of line 1"),
        (7, "exact_duplicate", "duplicate of line 1"),
    ]


def test_exact_duplicates_compare_after_normalisation():
    result = clean([text(1, "ABC 你好"), text(2, "ＡＢＣ 你好")], only(dedupe_exact=True))
    assert [q.example.line for q in result.quarantined] == [2]


def test_near_duplicates_in_chinese_and_english():
    examples = [
        text(1, ZH_A),
        text(2, EN_A),
        text(3, ZH_B),
        text(4, ZH_A.replace("。", "！")),  # one character changed at the end
        text(5, EN_A.replace("newspaper.", "newspaper!")),
        text(6, EN_B),
        text(7, ZH_A[:20] + ZH_B[20:]),  # shares a prefix only: not a near duplicate
    ]
    result = clean(examples, only(near_duplicate_threshold=0.9))
    assert [e.line for e in result.kept] == [1, 2, 3, 6, 7]
    assert [(q.example.line, q.reason) for q in result.quarantined] == [
        (4, "near_duplicate"),
        (5, "near_duplicate"),
    ]
    assert "near duplicate of line 1" in result.quarantined[0].detail
    assert "near duplicate of line 2" in result.quarantined[1].detail


def test_near_duplicates_ignore_case_punctuation_and_spaces():
    examples = [
        chat(1, "How much does the VX-350 cost?", "The VX-350 costs 2199 RMB."),
        chat(2, "What is the price of the VX-350?", "The VX-350 costs 2199 RMB."),  # paraphrase: kept
        chat(3, "how much does the VX 350 cost", "The VX-350 costs 2199 RMB"),
        chat(4, "VX-100 的售价是多少？", "VX-100 的售价是 399 元。"),
        chat(5, "VX-100的售价是多少", "VX-100 的售价是 399 元"),
    ]
    result = clean(examples, only(near_duplicate_threshold=0.9))
    assert [e.line for e in result.kept] == [1, 2, 4]
    assert [q.detail.split(" (")[0] for q in result.quarantined] == [
        "near duplicate of line 1",
        "near duplicate of line 4",
    ]


def test_near_duplicates_disabled():
    examples = [text(1, ZH_A), text(2, ZH_A.replace("。", "！"))]
    assert len(clean(examples, only(near_duplicate_threshold=None)).kept) == 2


def test_shared_system_prompt_does_not_make_rows_near_duplicates():
    system = "你是沃萝科技的客服助手，请用简洁、礼貌的语气回答用户关于产品、订单和售后的问题。" * 5
    examples = [chat(1, "VX-200 多少钱？", "1299 元。", system), chat(2, "保修多久？", "两年。", system)]
    result = clean(examples, only(near_duplicate_threshold=0.5))
    assert len(result.kept) == 2


def test_length_outliers():
    examples = [text(i, f"第{i}条普通长度的句子，内容各不相同。") for i in range(1, 31)]
    examples.append(text(31, "很长" * 5000))
    result = clean(examples, only(zscore_threshold=4.0))
    assert [(q.example.line, q.reason) for q in result.quarantined] == [(31, "length_outlier")]
    assert "z-score" in result.quarantined[0].detail


def test_outliers_skipped_for_small_sets():
    examples = [text(i, f"句子{i}") for i in range(1, 10)] + [text(10, "长" * 5000)]
    result = clean(examples, only(zscore_threshold=1.0))
    assert len(result.kept) == 10
    assert result.report.steps[-1] == {"step": "length_outlier", "rows_in": 10, "rows_out": 10, "ran": False}


def test_pii_redaction_and_report():
    examples = [chat(1, "我的邮箱是 a@b.com。电话 13800138000", "好的"), chat(2, "没有隐私", "嗯")]
    result = clean(examples, only(redact_pii=True))
    assert result.kept[0].messages[0]["content"] == "我的邮箱是 [EMAIL]。电话 [PHONE]"
    assert result.report.pii == {"email": 1, "id_number": 0, "bank_card": 0, "phone": 1}
    assert result.report.pii_rows == 1


def test_pii_off_by_default():
    result = clean([text(1, "电话 13800138000")], CleanConfig())
    assert result.kept[0].text == "电话 13800138000"


def test_report_counts_and_as_dict():
    examples = [text(1, ZH_A), text(2, ZH_A), text(3, ZH_A.replace("。", "！")), text(4, "")]
    result = clean(examples, CleanConfig())
    report = result.report.as_dict()
    assert report["rows_in"] == 4 and report["rows_out"] == 1
    assert report["removed"] == {
        "empty": 1,
        "too_short": 0,
        "too_long": 0,
        "exact_duplicate": 1,
        "near_duplicate": 1,
        "length_outlier": 0,
    }
    assert [s["step"] for s in report["steps"]] == [
        "unicode",
        "length",
        "exact_dedupe",
        "near_dedupe",
        "length_outlier",
    ]


def test_deterministic():
    examples = [text(i, (ZH_A if i % 3 else EN_A) + str(i % 7)) for i in range(1, 60)]
    config = CleanConfig(seed=7)
    first, second = clean(examples, config), clean(examples, config)
    assert [e.line for e in first.kept] == [e.line for e in second.kept]
    assert [(q.example.line, q.reason, q.detail) for q in first.quarantined] == [
        (q.example.line, q.reason, q.detail) for q in second.quarantined
    ]


def test_progress_is_reported_under_clean():
    calls = []
    clean(
        [text(1, "a"), text(2, "b")],
        CleanConfig(),
        lambda stage, done, total: calls.append((stage, done, total)),
    )
    assert {c[0] for c in calls} == {"clean"}
    assert calls[-1][1] == calls[-1][2]
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)


def test_vectorised_minhash_matches_datasketch():
    texts = [ZH_A, EN_B, "短", ""]
    signatures = minhash_signatures(texts, num_perm=64, seed=3, size=5)
    for value, signature in zip(texts, signatures, strict=True):
        reference = MinHash(num_perm=64, seed=3, scheme="affine32", hashfunc=int)
        reference.update_batch([int(h) for h in shingle_hashes(value, 5)])
        assert np.array_equal(reference.hashvalues, signature)


def test_config_errors_are_listed_together():
    config = CleanConfig(
        unicode_form="NFX",
        min_chars=-1,
        max_chars=0,
        near_duplicate_threshold=1.5,
        zscore_threshold=0,
        redact_pii="yes",  # type: ignore[arg-type]
        seed=-3,
    )
    with pytest.raises(ConfigError) as info:
        config.validate()
    fields = [p.field for p in info.value.problems]
    assert fields == [
        "unicode_form",
        "min_chars",
        "max_chars",
        "near_duplicate_threshold",
        "zscore_threshold",
        "redact_pii",
        "seed",
    ]


def test_clean_validates_its_config():
    with pytest.raises(ConfigError):
        clean([text(1, "x")], CleanConfig(max_chars=-1))


def test_from_dict_rejects_unknown_keys():
    assert CleanConfig.from_dict({"min_chars": 3}).min_chars == 3
    with pytest.raises(ConfigError, match="unknown options") as info:
        CleanConfig.from_dict({"min_char": 3, "dedup": True})
    assert [p.field for p in info.value.problems] == ["dedup", "min_char"]
