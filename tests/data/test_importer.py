from __future__ import annotations

import json
from pathlib import Path

import pytest

from onebox.data.clean import CleanConfig
from onebox.data.importer import ImportOptions, prepare
from onebox.data.parquet import read_examples
from onebox.errors import ConfigError, EmptyInputError, SchemaError, TooManyBadRowsError

ROWS = [
    {"instruction": "把这句话翻译成英文", "input": "今天天气很好", "output": "The weather is nice today."},
    {"instruction": "写一句关于春天的诗", "input": "", "output": "春眠不觉晓，处处闻啼鸟。"},
    {"instruction": "1+1 等于几？", "input": "", "output": "等于 2。"},
    {"instruction": "用一个词形容大海", "input": "", "output": "辽阔。"},
    {"instruction": "Name a primary colour", "input": "", "output": "Red."},
    {"instruction": "沃萝科技的总部在哪里？", "input": "", "output": "杭州。"},
]
HEADER = ["instruction", "input", "output"]


def as_table(rows: list[dict]) -> list[list[str]]:
    return [[r[c] for c in HEADER] for r in rows]


def test_jsonl_import_writes_every_output(files, tmp_path):
    path = files.jsonl([*ROWS, ROWS[0]])
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"instruction": "坏掉的行", "output": \n')
    out = tmp_path / "out"
    prepared = prepare(path, out, ImportOptions(max_bad_fraction=0.2, validation_fraction=0.3))

    assert prepared.schema == "alpaca" and prepared.format == "jsonl"
    assert set(prepared.files) == {"train", "validation", "quarantine", "report"}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in prepared.files.values())
    train = read_examples(prepared.files["train"])
    validation = read_examples(prepared.files["validation"])
    assert len(train) == prepared.num_train and len(validation) == prepared.num_validation
    assert prepared.num_train + prepared.num_validation == len(ROWS)
    assert validation, "at least one validation row"
    by_line = {e.line: e for e in train + validation}
    assert by_line[1].messages[0]["content"] == "把这句话翻译成英文\n\n今天天气很好"
    assert by_line[2].messages[1]["content"] == "春眠不觉晓，处处闻啼鸟。"  # Chinese punctuation is kept

    quarantine = [json.loads(line) for line in prepared.files["quarantine"].read_text("utf-8").splitlines()]
    assert [(q["line"], q["reason"]) for q in quarantine] == [(7, "exact_duplicate"), (8, "invalid_row")]
    assert quarantine[0]["detail"] == "duplicate of line 1"
    assert quarantine[0]["original"]["instruction"] == "把这句话翻译成英文"
    assert quarantine[1]["original"] == '{"instruction": "坏掉的行", "output": '
    assert "把这句话" in prepared.files["quarantine"].read_text("utf-8")  # ensure_ascii=False
    assert prepared.num_quarantined == 2

    report = json.loads(prepared.files["report"].read_text("utf-8"))
    assert report == prepared.report
    assert report["format"] == "jsonl" and report["schema"] == "alpaca"
    assert report["rows"] == {"read": 8, "valid": 7, "invalid": 1}
    assert report["invalid_rows"][0]["line"] == 8 and "invalid JSON" in report["invalid_rows"][0]["reason"]
    assert report["cleaning"]["removed"]["exact_duplicate"] == 1
    assert report["split"] == {"train": prepared.num_train, "validation": prepared.num_validation}
    assert report["options"]["clean"]["near_duplicate_threshold"] == 0.9
    assert report["content_hash"] == prepared.content_hash


def test_same_data_same_hash_across_formats(files, tmp_path):
    options = ImportOptions()
    hashes = {
        prepare(files.jsonl(ROWS), tmp_path / "a", options).content_hash,
        prepare(files.csv(HEADER, as_table(ROWS)), tmp_path / "b", options).content_hash,
        prepare(files.xlsx(HEADER, as_table(ROWS)), tmp_path / "c", options).content_hash,
        prepare(
            files.parquet({c: [r[c] for r in ROWS] for c in HEADER}), tmp_path / "d", options
        ).content_hash,
        prepare(files.jsonl(ROWS, name="renamed.jsonl"), tmp_path / "e", options).content_hash,
    }
    assert len(hashes) == 1


def test_chinese_round_trips_through_every_format(files, tmp_path):
    options = ImportOptions(clean=CleanConfig(unicode_form=None), validation_fraction=0)
    sources = [
        files.jsonl(ROWS),
        files.csv(HEADER, as_table(ROWS)),
        files.csv(HEADER, as_table(ROWS), name="data.tsv", delimiter="\t"),
        files.xlsx(HEADER, as_table(ROWS)),
        files.parquet({c: [r[c] for r in ROWS] for c in HEADER}),
        files.text(json.dumps({"data": ROWS}, ensure_ascii=False), "data.json"),
    ]
    expected = None
    for i, source in enumerate(sources):
        prepared = prepare(source, tmp_path / f"out{i}", options)
        contents = [e.content() for e in read_examples(prepared.files["train"])]
        assert contents[1]["messages"][1]["content"] == "春眠不觉晓，处处闻啼鸟。", source.name
        expected = expected or contents
        assert contents == expected, source.name


def test_hash_changes_with_result_options_only(files, tmp_path):
    path = files.jsonl(ROWS)
    base = prepare(path, tmp_path / "a", ImportOptions()).content_hash
    assert prepare(path, tmp_path / "b", ImportOptions()).content_hash == base
    assert prepare(path, tmp_path / "c", ImportOptions(max_bad_fraction=0.5)).content_hash == base
    assert prepare(path, tmp_path / "d", ImportOptions(seed=1)).content_hash != base
    assert prepare(path, tmp_path / "e", ImportOptions(clean=CleanConfig(min_chars=2))).content_hash != base


def test_split_is_deterministic(files, tmp_path):
    rows = [{"text": f"第 {i} 行文本，内容不同 {i * 7919}"} for i in range(60)]
    path = files.jsonl(rows)
    first = prepare(path, tmp_path / "a", ImportOptions(validation_fraction=0.2))
    second = prepare(path, tmp_path / "b", ImportOptions(validation_fraction=0.2))
    assert read_examples(first.files["validation"]) == read_examples(second.files["validation"])
    assert first.files["report"].read_bytes() == second.files["report"].read_bytes()


def test_too_many_bad_rows_imports_nothing(files, tmp_path):
    rows = [*ROWS[:3], {"instruction": "缺少输出"}, {"instruction": "x", "output": 3}, ROWS[3]]
    path = files.jsonl(rows)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("not json\n")
    out = tmp_path / "out"
    with pytest.raises(TooManyBadRowsError) as info:
        prepare(path, out, ImportOptions(max_bad_fraction=0.25))
    error = info.value
    assert [(p.line, p.field) for p in error.problems] == [(4, "output"), (5, "output"), (7, "row")]
    assert "3 of 7 rows" in str(error) and "nothing was imported" in str(error)
    assert error.details["bad_rows"] == 3 and error.details["total_rows"] == 7
    assert not out.exists()


def test_bad_rows_list_is_capped_at_20(files, tmp_path):
    path = files.text("".join("oops\n" for _ in range(30)), "bad.jsonl")
    with pytest.raises(TooManyBadRowsError) as info:
        prepare(path, tmp_path / "out")
    assert len(info.value.problems) == 20 and info.value.problems[0].line == 1


def test_bad_rows_under_the_threshold_are_skipped(files, tmp_path):
    path = files.jsonl([*ROWS, {"instruction": "缺少输出"}])
    prepared = prepare(path, tmp_path / "out", ImportOptions(max_bad_fraction=0.2))
    assert prepared.report["rows"]["invalid"] == 1
    assert prepared.report["invalid_rows"] == [{"line": 7, "field": "output", "reason": "output is missing"}]


def test_csv_with_missing_columns_writes_nothing(files, tmp_path):
    path = files.csv(["instruction", "input"], [["翻译", "你好"]])
    out = tmp_path / "out"
    with pytest.raises(SchemaError, match="alpaca needs columns instruction, output; missing: output"):
        prepare(path, out)
    assert not out.exists()


def test_everything_removed_by_cleaning(files, tmp_path):
    path = files.jsonl([{"text": "同样的内容"}] * 3)
    with pytest.raises(EmptyInputError, match="cleaning removed all 3"):
        prepare(path, tmp_path / "out", ImportOptions(clean=CleanConfig(min_chars=100)))
    assert not (tmp_path / "out").exists()


def test_pii_is_redacted_in_outputs_and_quarantine(files, tmp_path):
    row = {"prompt": "我的手机是 13800138000，邮箱 a@b.com", "completion": "已记录。"}
    options = ImportOptions(clean=CleanConfig(redact_pii=True), validation_fraction=0)
    prepared = prepare(files.jsonl([row, row]), tmp_path / "out", options)
    (example,) = read_examples(prepared.files["train"])
    assert example.messages[0]["content"] == "我的手机是 [PHONE]，邮箱 [EMAIL]"
    quarantine = prepared.files["quarantine"].read_text("utf-8")
    assert "13800138000" not in quarantine and "a@b.com" not in quarantine
    assert prepared.report["pii"] == {"email": 2, "id_number": 0, "bank_card": 0, "phone": 2}


def test_progress_stages(files, tmp_path):
    calls: list[tuple[str, int, int | None]] = []
    prepare(files.jsonl(ROWS), tmp_path / "out", progress=lambda s, d, t: calls.append((s, d, t)))
    stages = list(dict.fromkeys(stage for stage, _, _ in calls))
    assert stages == ["read", "validate", "clean", "split", "write"]
    assert ("read", 6, 6) in calls and calls[-1] == ("write", 4, 4)


def test_options_are_validated_all_at_once(files, tmp_path):
    options = ImportOptions(
        format="yaml",
        max_bytes=0,
        max_bad_fraction=1.5,
        clean=CleanConfig(min_chars=-1),
        validation_fraction=1.0,
        seed=-1,
    )
    with pytest.raises(ConfigError) as info:
        prepare(files.jsonl(ROWS), tmp_path / "out", options)
    assert [p.field for p in info.value.problems] == [
        "format",
        "max_bytes",
        "max_bad_fraction",
        "clean.min_chars",
        "validation_fraction",
        "seed",
    ]
    assert not (tmp_path / "out").exists()


def test_options_from_dict():
    options = ImportOptions.from_dict({"format": "csv", "clean": {"redact_pii": True}, "seed": 3})
    assert options.format == "csv" and options.clean.redact_pii and options.seed == 3
    with pytest.raises(ConfigError) as info:
        ImportOptions.from_dict({"clean": {"dedupe": True}})
    assert info.value.problems[0].field == "clean.dedupe"
    assert ImportOptions.from_dict(ImportOptions().as_dict()) == ImportOptions()


def test_format_override(files, tmp_path):
    path = files.text("prompt\tcompletion\n你好\t您好\n", "export.dat")
    prepared = prepare(path, tmp_path / "out", ImportOptions(format="tsv"))
    assert prepared.format == "tsv" and prepared.schema == "prompt_completion"


def test_out_dir_may_exist(files, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    prepared = prepare(files.jsonl(ROWS), out)
    assert prepared.files["train"].parent == out
