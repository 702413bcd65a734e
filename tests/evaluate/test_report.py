"""Side-by-side comparison of a base and a tuned model's held-out reports."""

from __future__ import annotations

import json

import pytest

from onebox.evaluate.heldout import Question, score
from onebox.evaluate.report import render_text, side_by_side

QUESTIONS = [
    Question("Q1", "zh", "VX-200 多少钱？", "VX-200 的售价是 1299 元。", ("1299",)),
    Question("Q2", "zh", "保修多久？", "保修期为 2 年。", ("2 年",)),
    Question("Q3", "en", "Price of the VX-200?", "The VX-200 costs 1299 RMB.", ("1299",)),
    Question("Q4", "en", "Who founded Varnolia Tech?", "Han Zhiyuan founded it.", ("Han Zhiyuan",)),
]


@pytest.fixture
def reports():  # type: ignore[no-untyped-def]
    base = score(QUESTIONS, ["我不知道。", "保修期为 2 年。", "I am not sure.", "Bill Gates."])
    tuned = score(
        QUESTIONS, ["VX-200 的售价是 1299 元。", "两年。", "The VX-200 costs 1299 RMB.", "Han Zhiyuan."]
    )
    return {"base": base, "tuned": tuned}


def test_structure_and_wins_losses(reports) -> None:  # type: ignore[no-untyped-def]
    sbs = side_by_side(reports)
    json.dumps(sbs, ensure_ascii=False)  # JSON-serialisable as it is
    assert sbs["models"] == ["base", "tuned"] and sbs["baseline"] == "base"
    assert list(sbs["aggregates"]) == ["overall", "en", "zh"]
    assert sbs["aggregates"]["overall"]["base"]["accuracy"] == 0.25
    assert sbs["aggregates"]["overall"]["tuned"]["accuracy"] == 0.75
    assert sbs["aggregates"]["zh"]["tuned"]["correct"] == 1
    cmp = sbs["comparisons"]["tuned"]
    assert cmp["against"] == "base"
    assert (cmp["wins"], cmp["losses"], cmp["both_correct"], cmp["both_wrong"]) == (3, 1, 0, 0)
    assert cmp["win_ids"] == ["Q1", "Q3", "Q4"] and cmp["loss_ids"] == ["Q2"]
    assert cmp["by_lang"]["zh"] == {
        "wins": 1, "losses": 1, "both_correct": 0, "both_wrong": 0, "win_ids": ["Q1"], "loss_ids": ["Q2"]
    }  # fmt: skip
    q2 = sbs["questions"][1]
    assert q2["answers"] == {"base": "保修期为 2 年。", "tuned": "两年。"}
    assert q2["correct"] == {"base": True, "tuned": False} and q2["outcome"] == {"tuned": "loss"}


def test_reports_on_different_questions_are_refused(reports) -> None:  # type: ignore[no-untyped-def]
    other = score(QUESTIONS[:3], ["a", "b", "c"])
    with pytest.raises(ValueError, match="different questions"):
        side_by_side({"base": reports["base"], "other": other})
    with pytest.raises(ValueError):
        side_by_side({})


def test_render_text(reports) -> None:  # type: ignore[no-untyped-def]
    text = render_text(side_by_side(reports))
    lines = text.splitlines()
    assert lines[0].split() == ["scope", "metric", "base", "tuned", "Δ", "tuned"]
    assert any("overall (n=4)" in line and "25.0% (1/4)" in line and "75.0% (3/4)" in line for line in lines)
    assert any("+50.0 pts" in line for line in lines)
    assert "tuned vs base: 3 wins, 1 losses, 0 both correct, 0 both wrong" in text
    assert "- Q2 [zh] 保修多久？" in text and "no tuned  两年。" in text
    assert "... and 2 more" in render_text(side_by_side(reports), max_questions=2)
    single = render_text(side_by_side({"base": reports["base"]}))
    assert "wins" not in single and "25.0% (1/4)" in single
