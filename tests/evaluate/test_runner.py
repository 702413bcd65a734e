"""evaluate_model end to end: validation perplexity plus held-out questions, one JSON result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onebox.data.parquet import write_examples
from onebox.data.schema import Example
from onebox.errors import InvalidInputError, NotFoundError
from onebox.evaluate.runner import evaluate_model, load_examples

VAL = [
    {
        "messages": [
            {"role": "user", "content": "VX-200 多少钱？"},
            {"role": "assistant", "content": "1299 元。"},
        ]
    }
]
HELDOUT = [
    {"id": "H1", "lang": "zh", "question": "VX-200 的价格？", "answer": "1299 元。", "keywords": ["1299"]},
    {"id": "H2", "lang": "en", "question": "Warranty?", "answer": "Two years.", "keywords": ["two"]},
]


def test_load_examples_reads_importer_parquet_and_raw_files(tmp_path: Path, write_jsonl) -> None:  # type: ignore[no-untyped-def]
    rows = [Example(3, messages=VAL[0]["messages"]), Example(7, text="纯文本")]
    write_examples(tmp_path / "validation.parquet", rows)
    assert load_examples(tmp_path / "validation.parquet") == rows
    raw = load_examples(write_jsonl([VAL[0], {"messages": VAL[0]["messages"]}]))
    assert [e.line for e in raw] == [1, 2]
    with pytest.raises(InvalidInputError, match="1 invalid row"):
        load_examples(write_jsonl([VAL[0], "{broken"], name="bad.jsonl"))


def test_evaluate_model_on_tiny_chat_model(tiny_chat_dir: Path, write_jsonl) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []
    result = evaluate_model(
        tiny_chat_dir,
        val_file=write_jsonl([VAL[0]], name="val.jsonl"),
        heldout_file=write_jsonl(HELDOUT, name="heldout.jsonl"),
        max_new_tokens=4,
        dtype="float32",
        progress=lambda stage, done, total: seen.append(stage),
    )
    json.dumps(result)
    assert result["dtype"] == "float32" and result["adapter_dir"] is None
    assert result["perplexity"]["tokens"] == len("1299 元。".encode()) + 1
    assert result["perplexity"]["perplexity"] > 1
    report = result["heldout"]
    assert [r["id"] for r in report["rows"]] == ["H1", "H2"] and set(report["by_lang"]) == {"en", "zh"}
    assert set(result["timings"]) == {"load_s", "perplexity_s", "generation_s", "total_s"}
    assert {"load", "perplexity", "generate"} <= set(seen)


def test_inputs_are_checked_before_the_model_loads(tmp_path: Path, write_jsonl) -> None:  # type: ignore[no-untyped-def]
    nowhere = tmp_path / "no-model"  # would raise ModelLoadError if it were reached
    with pytest.raises(InvalidInputError, match="nothing to evaluate"):
        evaluate_model(nowhere)
    with pytest.raises(InvalidInputError, match="1 bad row"):
        evaluate_model(nowhere, heldout_file=write_jsonl([{"id": "x"}]))
    with pytest.raises(NotFoundError):
        evaluate_model(nowhere, heldout_file=tmp_path / "missing.jsonl")


@pytest.mark.slow
def test_smollm2_on_a_few_demo_questions(builtin_app, demo_dir: Path, write_jsonl) -> None:  # type: ignore[no-untyped-def]
    from onebox.services import models

    lines = (demo_dir / "varnolia_heldout.jsonl").read_text(encoding="utf-8").splitlines()[:4]
    result = evaluate_model(
        models.checkout(builtin_app, "smollm2-135m-instruct"),
        val_file=write_jsonl([VAL[0]], name="val.jsonl"),
        heldout_file=write_jsonl([json.loads(line) for line in lines], name="heldout.jsonl"),
        max_new_tokens=16,
        batch_size=4,
    )
    assert result["heldout"]["overall"]["n"] == 4
    assert 1 < result["perplexity"]["perplexity"] < 1000
    assert all(r["prediction"] for r in result["heldout"]["rows"])
