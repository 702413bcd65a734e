"""Question generation from passages: parsing, every filter reason, the report; the model is a stub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onebox.errors import ConfigError
from onebox.rag.answer import Message
from onebox.rag.to_dataset import (
    Passage,
    QAOptions,
    generate_qa,
    language,
    parse_pair,
    review_markdown,
    verdict,
    write_outputs,
)

ZH = Passage(
    "d1:0",
    "d1",
    "handbook.docx",
    "员工手册",
    "",
    "春节期间公司统一放假 9 天，嘉兴工厂于正月初十复工，其余部门按通知安排值班。",
)
EN = Passage(
    "d2:0",
    "d2",
    "warranty.pdf",
    "Warranty",
    "p. 3",
    "Dead-on-arrival devices ship within 48 hours of the claim.",
)


def fake(outputs: dict[str, list[str]]):
    """A generate function answering each passage's prompts from a queue, recording the prompts."""
    prompts: list[list[Message]] = []

    def generate(messages: list[Message]) -> str:
        prompts.append(messages)
        for key, queue in outputs.items():
            if key in messages[-1]["content"]:
                return queue.pop(0)
        raise AssertionError("unexpected prompt")

    generate.prompts = prompts  # type: ignore[attr-defined]
    return generate


def test_parse_pair_forms() -> None:
    assert parse_pair("Question: How fast?\nAnswer: 48 hours") == ("How fast?", "48 hours")
    assert parse_pair("问题：放假几天？\n答案：9 天") == ("放假几天？", "9 天")
    assert parse_pair("**Q1:** What ships?\n**A1:** DOA devices.\nQuestion: again?\nAnswer: x") == (
        "What ships?",
        "DOA devices.",
    )
    assert parse_pair("Question: What is the data: rate? Answer: 5") == ("What is the data: rate?", "5")
    assert parse_pair("The answer is 9 days.") is None


def test_language() -> None:
    assert language(ZH.text) == "zh" and language(EN.text) == "en" and language("") == "en"


def test_keeps_good_pairs_and_rejects_each_bad_kind_with_reasons() -> None:
    passages = [ZH, EN]
    gen = fake(
        {
            "春节": [
                "问题：春节期间公司统一放假几天？\n答案：9 天",
                "问题：春节期间公司统一放假几天？\n答案：9 天",
            ],
            "Dead-on-arrival": [
                "Question: How fast do dead-on-arrival devices ship?\nAnswer: within 48 hours",
                "Sure! Here is a question.",
                "Question: What colour is the sky?\nAnswer: blue",
            ],
        }
    )
    res = generate_qa(passages, gen, QAOptions(questions_per_chunk=2))
    kept = [(g.question, g.answer) for g in res.kept]
    assert kept == [
        ("春节期间公司统一放假几天？", "9 天"),
        ("How fast do dead-on-arrival devices ship?", "within 48 hours"),
    ]
    rejected = {g.raw.splitlines()[0]: g.reasons for g in res.generations if not g.kept}
    assert rejected["问题：春节期间公司统一放假几天？"] == ("duplicate",)
    assert rejected["Sure! Here is a question."] == ("unparsable",)
    # the second prompt for a passage lists the question already asked, in the passage's language
    assert "不要重复这些问题" in gen.prompts[1][-1]["content"]
    assert gen.prompts[0][0]["content"].startswith("你根据") and gen.prompts[2][0]["content"].startswith(
        "You"
    )
    s = res.summary()
    assert (s["generations"], s["kept"], s["rejected"]) == (4, 2, 2)
    assert s["rejected_by_reason"] == {"duplicate": 1, "unparsable": 1}


@pytest.mark.parametrize(
    ("output", "reasons"),
    [
        ("Question: \nAnswer: 48 hours", {"empty"}),
        ("Question: How fast do devices ship?\nAnswer: " + "48 hours " * 100, {"too_long"}),
        ("Question: Devices ship fast\nAnswer: within 48 hours", {"not_a_question"}),
        ("Question: 坏机多久发货？\nAnswer: 48 hours", {"wrong_language", "off_topic"}),
        (
            "Question: How fast do devices ship within 48 hours?\nAnswer: within 48 hours",
            {"answer_repeats_question"},
        ),
        ("Question: What is the capital of France?\nAnswer: Paris", {"off_topic", "not_grounded"}),
        (
            "Question: How fast do dead-on-arrival devices ship?\nAnswer: by drone in ten minutes",
            {"not_grounded"},
        ),
    ],
)
def test_filter_reasons(output: str, reasons: set[str]) -> None:
    res = generate_qa([EN], lambda _m: output)
    assert not res.kept and set(res.generations[0].reasons) == reasons


def test_chinese_passage_needs_a_chinese_question_and_grounded_answer() -> None:
    res = generate_qa([ZH], lambda _m: "Question: How many days off?\nAnswer: 9")
    assert "wrong_language" in res.generations[0].reasons
    res = generate_qa([ZH], lambda _m: "问题：嘉兴工厂什么时候复工？\n答案：三月一日以后由总经理决定")
    assert res.generations[0].reasons == ("not_grounded",)


def test_model_errors_short_passages_and_cancel() -> None:
    def boom(_m: list[Message]) -> str:
        raise RuntimeError("worker died")

    short = Passage("d3:0", "d3", "x.md", "", "", "Page 2")
    res = generate_qa([short, EN], boom)
    assert res.skipped == [("d3:0", "shorter than 30 characters")]
    assert res.generations[0].reasons == ("model_error",) and "worker died" in res.generations[0].raw
    stopped = generate_qa([EN, ZH], lambda _m: "x", cancel=lambda: True)
    assert stopped.cancelled and not stopped.generations


def test_outputs_report_and_eval_set(tmp_path: Path) -> None:
    good = "Question: How fast do dead-on-arrival devices ship?\nAnswer: within 48 hours"
    res = generate_qa([EN, ZH], lambda m: good if "Dead" in m[-1]["content"] else "no idea")
    files = write_outputs(res, tmp_path, "From kb docs", {"model": "tiny"})
    qa = [json.loads(x) for x in files["qa.jsonl"].read_text().splitlines()]
    assert qa == [
        {
            "messages": [
                {"role": "user", "content": "How fast do dead-on-arrival devices ship?"},
                {"role": "assistant", "content": "within 48 hours"},
            ]
        }
    ]
    ev = [json.loads(x) for x in files["retrieval_eval.jsonl"].read_text().splitlines()]
    assert ev[0]["gold_chunk_id"] == "d2:0" and ev[0]["locator"] == "p. 3"
    review = [json.loads(x) for x in files["review.jsonl"].read_text(encoding="utf-8").splitlines()]
    assert [(r["kept"], r["reasons"]) for r in review] == [(True, []), (False, ["unparsable"])]
    md = files["review.md"].read_text(encoding="utf-8")
    assert "1 of 2 generations passed" in md and "- model: tiny" in md and "| unparsable | no idea |" in md
    assert md == review_markdown(res, "From kb docs", {"model": "tiny"})


def test_verdict_is_honest_about_weak_models() -> None:
    res = generate_qa([EN, ZH, EN, ZH], lambda _m: "no idea")
    assert "weak questions" in verdict(res.summary())


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError) as exc:
        QAOptions(questions_per_chunk=0, min_answer_grounding=2)
    assert {p.field for p in exc.value.problems} == {"questions_per_chunk", "min_answer_grounding"}


def test_an_answer_restating_its_question_is_judged_on_what_it_adds() -> None:
    q = "Question: How fast do dead-on-arrival devices ship?\n"
    made_up = (
        q + "Answer: Dead-on-arrival devices ship fast because a specialised courier drives them overnight"
    )
    assert generate_qa([EN], lambda _m: made_up).generations[0].reasons == ("not_grounded",)
    echo = q + "Answer: dead-on-arrival devices ship within 48 hours"
    assert generate_qa([EN], lambda _m: echo).kept
