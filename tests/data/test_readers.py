from __future__ import annotations

import json
from pathlib import Path

import pytest

from onebox.data.readers import read_records
from onebox.errors import (
    EmptyInputError,
    EncodingError,
    InputTooLargeError,
    InvalidInputError,
    UnsupportedFormatError,
)

MB = 1 << 20
ZH = "请把这句话翻译成英文：今天天气很好。"


def read(path: Path, **kwargs):
    return read_records(path, max_bytes=kwargs.pop("max_bytes", MB), **kwargs)


def test_jsonl_keeps_physical_line_numbers_and_chinese(files):
    path = files.text(
        json.dumps({"text": ZH}, ensure_ascii=False) + "\n\n  \n" + json.dumps({"text": "第二行"}) + "\n",
        "a.jsonl",
    )
    result = read(path)
    assert result.format == "jsonl"
    assert [(r.line, r.data["text"]) for r in result.records] == [(1, ZH), (4, "第二行")]
    assert result.total_rows == 2 and result.errors == []


def test_jsonl_malformed_line_reports_exact_line_and_continues(files):
    path = files.text('{"text": "一"}\n{"text": "二"}\n{"text": "坏\n\n{"text": "四"}\n', "a.jsonl")
    result = read(path)
    assert [r.line for r in result.records] == [1, 2, 5]
    assert len(result.errors) == 1
    error = result.errors[0]
    assert error.line == 3
    assert "invalid JSON" in error.reason and "Unterminated string" in error.reason
    assert error.original == '{"text": "坏'
    assert result.total_rows == 4


@pytest.mark.parametrize(
    ("line", "kind"), [("[1, 2]", "an array"), ('"hello"', "a string"), ("42", "a number")]
)
def test_jsonl_non_object_line_is_a_row_error(files, line, kind):
    path = files.text('{"text": "ok"}\n' + line + "\n", "a.jsonl")
    result = read(path)
    assert [(e.line, e.reason) for e in result.errors] == [(2, f"expected a JSON object, got {kind}")]


def test_ndjson_suffix_and_bom_are_accepted(files):
    path = files.raw(
        b"\xef\xbb\xbf" + json.dumps({"text": ZH}, ensure_ascii=False).encode() + b"\r\n", "a.ndjson"
    )
    result = read(path)
    assert result.format == "jsonl"
    assert result.records[0].data == {"text": ZH}


def test_json_array_lines_are_index_plus_one(files):
    path = files.text(json.dumps([{"text": "甲"}, 5, {"text": "丙"}], ensure_ascii=False, indent=2), "a.json")
    result = read(path)
    assert result.format == "json"
    assert [(r.line, r.data["text"]) for r in result.records] == [(1, "甲"), (3, "丙")]
    assert [(e.line, e.reason) for e in result.errors] == [(2, "expected a JSON object, got a number")]


@pytest.mark.parametrize("key", ["data", "rows", "examples"])
def test_json_object_with_list(files, key):
    path = files.text(json.dumps({"version": 1, key: [{"text": "你好"}]}, ensure_ascii=False), "a.json")
    assert read(path).records[0].data == {"text": "你好"}


def test_json_object_without_list_is_invalid(files):
    path = files.text(json.dumps({"text": "你好"}), "a.json")
    with pytest.raises(InvalidInputError, match="data, rows, examples"):
        read(path)


def test_broken_json_file_reports_line_and_column(files):
    path = files.text('[\n  {"text": "a"},\n  {"text": }\n]\n', "a.json")
    with pytest.raises(InvalidInputError) as info:
        read(path)
    assert info.value.details["line"] == 3
    assert info.value.details["column"] == 12
    assert "line 3, column 12" in str(info.value)


def test_json_file_holding_json_lines_is_read_as_jsonl(files):
    path = files.text('{"text": "一"}\n{"text": "二"}\n', "a.json")
    result = read(path)
    assert result.format == "jsonl"
    assert [r.line for r in result.records] == [1, 2]


def test_csv_lines_count_header_as_line_one_and_multiline_cells(files):
    path = files.csv(
        ["instruction", "input", "output"],
        [["写一首诗", "", "床前明月光，\n疑是地上霜。"], ["翻译", "你好", "Hello"]],
    )
    result = read(path)
    assert result.format == "csv"
    assert result.columns == ["instruction", "input", "output"]
    assert [r.line for r in result.records] == [2, 4]
    assert result.records[0].data["output"] == "床前明月光，\n疑是地上霜。"
    assert result.records[1].data == {"instruction": "翻译", "input": "你好", "output": "Hello"}


def test_csv_row_with_too_many_fields_is_a_row_error(files):
    path = files.text("prompt,completion\n你好,世界\n多,了,一列\n短\n", "a.csv")
    result = read(path)
    assert [(e.line, e.reason) for e in result.errors] == [(3, "row has 3 fields but the header has 2")]
    assert result.records[1].line == 4
    assert result.records[1].data == {"prompt": "短", "completion": None}


def test_csv_duplicate_header_is_invalid(files):
    path = files.text("text,text\na,b\n", "a.csv")
    with pytest.raises(InvalidInputError, match="duplicate column"):
        read(path)


def test_tsv(files):
    path = files.csv(["prompt", "completion"], [["问题，带逗号", "回答"]], name="a.tsv", delimiter="\t")
    result = read(path)
    assert result.format == "tsv"
    assert result.records[0].data == {"prompt": "问题，带逗号", "completion": "回答"}


def test_xlsx_uses_spreadsheet_row_numbers_and_keeps_chinese(files):
    path = files.xlsx(["instruction", "output"], [["你好吗？", "我很好。"], [None, None], ["价格", 1299]])
    result = read(path)
    assert result.format == "xlsx"
    assert result.columns == ["instruction", "output"]
    assert [(r.line, r.data) for r in result.records] == [
        (2, {"instruction": "你好吗？", "output": "我很好。"}),
        (4, {"instruction": "价格", "output": 1299}),
    ]


def test_parquet_rows_and_nested_messages(files):
    messages = [[{"role": "user", "content": "你好"}, {"role": "assistant", "content": "您好！"}]]
    path = files.parquet({"messages": messages})
    result = read(path)
    assert result.format == "parquet"
    assert result.columns == ["messages"]
    assert result.records[0].line == 1
    assert result.records[0].data["messages"] == messages[0]


def test_txt_one_example_per_non_empty_line(files):
    path = files.text("第一段文字。\n\n第二段\r\n   \nthird\n", "a.txt")
    result = read(path)
    assert [(r.line, r.data) for r in result.records] == [
        (1, {"text": "第一段文字。"}),
        (3, {"text": "第二段"}),
        (5, {"text": "third"}),
    ]


def test_unknown_suffix_is_sniffed_as_jsonl(files):
    path = files.text('{"text": "嗅探"}\n{"text": "b"}\n', "export.data")
    result = read(path)
    assert result.format == "jsonl" and len(result.records) == 2


def test_unknown_suffix_parquet_magic_is_sniffed(files):
    path = files.parquet({"text": ["x"]}, name="blob.bin")
    assert read(path).format == "parquet"


def test_unknown_suffix_and_content_is_unsupported(files):
    path = files.text("just some words\n", "notes.md")
    with pytest.raises(UnsupportedFormatError) as info:
        read(path)
    message = str(info.value)
    assert "'.md'" in message
    for fmt in (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".xlsx", ".txt"):
        assert fmt in message


def test_xls_is_unsupported_with_a_fix(files):
    path = files.raw(b"\xd0\xcf\x11\xe0 old excel", "old.xls")
    with pytest.raises(UnsupportedFormatError, match="xlsx"):
        read(path)


def test_fmt_overrides_suffix(files):
    path = files.text("text\n覆盖\n", "data.jsonl")
    result = read(path, fmt="csv")
    assert result.format == "csv" and result.records[0].data == {"text": "覆盖"}


def test_unknown_fmt_is_unsupported(files):
    path = files.text("{}", "a.json")
    with pytest.raises(UnsupportedFormatError, match="unknown format 'yaml'"):
        read(path, fmt="yaml")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n  \n\n"),
        ("header.csv", "instruction,output\n"),
        ("empty.json", "[]"),
        ("blank.txt", "\n\n"),
    ],
)
def test_empty_inputs(files, name, content):
    path = files.text(content, name)
    with pytest.raises(EmptyInputError):
        read(path)


def test_empty_xlsx_sheet(files):
    path = files.xlsx(["text"], [])
    with pytest.raises(EmptyInputError, match="no data rows"):
        read(path)


def test_file_over_the_limit(files):
    path = files.text('{"text": "' + "长" * 100 + '"}\n', "big.jsonl")
    size = path.stat().st_size
    with pytest.raises(InputTooLargeError) as info:
        read(path, max_bytes=100)
    message = str(info.value)
    assert str(size) in message and "100" in message and "ONEBOX_MAX_IMPORT_BYTES" in message
    assert info.value.details == {"size": size, "max_bytes": 100}


@pytest.mark.parametrize("name", ["bad.jsonl", "bad.csv", "bad.txt", "bad.json"])
def test_non_utf8_reports_line_and_byte_offset(files, name):
    good = b'{"text": "ok"}\n{"text": "ok"}\n'
    path = files.raw(good + '{"text": "中文"}\n'.encode("gbk"), name)
    with pytest.raises(EncodingError) as info:
        read(path)
    assert info.value.details["line"] == 3
    assert info.value.details["byte_offset"] == len(good) + len('{"text": "')
    assert "line 3" in str(info.value)
    assert "GBK" in str(info.value)


def test_bom_offset_counts_in_byte_offset(files):
    path = files.raw(b"\xef\xbb\xbftext\n\xff\n", "a.csv")
    with pytest.raises(EncodingError) as info:
        read(path)
    assert info.value.details == {"line": 2, "byte_offset": 8}


def test_corrupt_parquet(files):
    path = files.raw(b"PAR1 this is not really parquet PAR1", "bad.parquet")
    with pytest.raises(InvalidInputError, match="not a readable Parquet") as info:
        read(path)
    assert info.value.__cause__ is not None


def test_corrupt_xlsx(files):
    path = files.raw(b"PK\x03\x04 broken zip", "bad.xlsx")
    with pytest.raises(InvalidInputError, match="not a readable XLSX") as info:
        read(path)
    assert info.value.__cause__ is not None


def test_missing_file(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        read(tmp_path / "nope.jsonl")


def test_binary_file_with_unknown_suffix_is_unsupported(files):
    path = files.raw(b"\x00\x01\xff\xfe\x89PNG", "image.bin")
    with pytest.raises(UnsupportedFormatError, match=r"'\.bin'"):
        read(path)


def test_unknown_fmt_wins_over_empty_file(files):
    with pytest.raises(UnsupportedFormatError):
        read(files.text("", "a.jsonl"), fmt="yaml")
