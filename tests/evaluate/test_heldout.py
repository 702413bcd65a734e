"""Held-out question files: the demo set loads, bad rows are reported by line, scoring aggregates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onebox.errors import EmptyInputError, EncodingError, InvalidInputError, NotFoundError
from onebox.evaluate.heldout import EvalReport, Question, load_questions, score

GOOD = {"id": "H1", "lang": "en", "question": "q?", "answer": "a.", "keywords": ["a"], "fact_ids": ["F1"]}


def test_demo_heldout_set_loads(demo_dir: Path) -> None:
    questions = load_questions(demo_dir / "varnolia_heldout.jsonl")
    assert len(questions) == 74
    assert sum(q.lang == "zh" for q in questions) == sum(q.lang == "en" for q in questions) == 37
    first = questions[0]
    assert (first.id, first.keywords, first.fact_ids, first.line) == ("H001", ("Varnolia",), ("F01",), 1)


def test_bad_rows_are_all_reported_with_line_numbers(write_jsonl) -> None:  # type: ignore[no-untyped-def]
    path = write_jsonl(
        [
            GOOD,
            '{"id": "H2", "lang": "en",',  # line 2: broken JSON
            {**GOOD, "id": "H3", "keywords": []},  # line 3
            {**GOOD, "id": "H4", "question": 42},  # line 4
            "",  # line 5: blank lines are skipped but still counted
            {**GOOD, "id": "H1"},  # line 6: duplicate id
            {k: v for k, v in GOOD.items() if k != "answer"} | {"id": "H7"},  # line 7
            {**GOOD, "id": "H8", "keywords": ["ok", ""]},  # line 8
            [1, 2],  # line 9
            {**GOOD, "id": "H10", "fact_ids": "F1"},  # line 10
        ]
    )
    with pytest.raises(InvalidInputError) as info:
        load_questions(path)
    found = [(p.line, p.field) for p in info.value.problems]
    assert found == [
        (2, "row"),
        (3, "keywords"),
        (4, "question"),
        (6, "id"),
        (7, "answer"),
        (8, "keywords[1]"),
        (9, "row"),
        (10, "fact_ids"),
    ]
    text = str(info.value)
    assert "8 bad row(s)" in text and "line 2: row: invalid JSON" in text
    assert (
        "duplicate id 'H1' (first on line 1)" in text
        and "line 4: question: question must be a string" in text
    )


def test_file_level_errors(tmp_path: Path, write_jsonl) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFoundError):
        load_questions(tmp_path / "missing.jsonl")
    with pytest.raises(EmptyInputError):
        load_questions(write_jsonl(["", "  "]))
    bad = tmp_path / "gbk.jsonl"
    bad.write_bytes(json.dumps({**GOOD, "question": "多少钱"}, ensure_ascii=False).encode("gbk"))
    with pytest.raises(EncodingError, match="not UTF-8"):
        load_questions(bad)


def test_score_rows_and_aggregates_by_language() -> None:
    questions = [
        Question("Q1", "zh", "VX-200 多少钱？", "VX-200 的售价是 1299 元。", ("1299",)),
        Question("Q2", "zh", "保修多久？", "保修期为 2 年。", ("2 年",)),
        Question("Q3", "en", "Price of the VX-200?", "The VX-200 costs 1299 RMB.", ("1299",)),
    ]
    answers = ["VX-200 的售价是1299元。", "保修期为三年。", "It costs 999 RMB, not 12990."]
    report = score(questions, answers)
    q1, q2, q3 = report.rows
    assert (q1["accuracy"], q1["exact_match"], q1["contains"], q1["rouge_l"]) == (True, True, True, 1.0)
    assert (q2["accuracy"], q2["exact_match"]) == (False, False)
    assert q2["rouge_l"] == pytest.approx(5 / 6)  # LCS 保修期为年 of 保修期为三年 / 保修期为2年
    assert q3["accuracy"] is True and q3["accuracy_strict"] is False  # "1299" inside "12990"
    assert (
        report.overall["n"] == 3 and report.overall["correct"] == 2 and report.overall["correct_strict"] == 1
    )
    assert report.overall["accuracy"] == pytest.approx(2 / 3)
    assert report.by_lang["zh"]["accuracy"] == 0.5 and report.by_lang["en"]["accuracy"] == 1.0
    assert report.by_lang["en"]["accuracy_strict"] == 0.0
    assert report.by_lang["zh"]["exact_match"] == 0.5
    assert set(report.overall) == {
        "n", "correct", "correct_strict", "accuracy", "accuracy_strict", "contains", "exact_match", "rouge_l",
        "bleu", "corpus_bleu",
    }  # fmt: skip
    again = EvalReport.from_dict(json.loads(json.dumps(report.as_dict(), ensure_ascii=False)))
    assert again == report
    with pytest.raises(ValueError, match="3 questions but 2 answers"):
        score(questions, answers[:2])
