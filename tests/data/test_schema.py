from __future__ import annotations

import datetime as dt
import json
import math

import pytest

from onebox.data.readers import RawRecord, read_records
from onebox.data.schema import Example, detect_schema, normalize
from onebox.errors import SchemaError


def records(*rows: dict) -> list[RawRecord]:
    return [RawRecord(i + 1, row) for i, row in enumerate(rows)]


CHAT = {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "您好！"}]}


@pytest.mark.parametrize(
    ("row", "schema"),
    [
        (CHAT, "messages"),
        ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, "messages"),
        ({"instruction": "翻译", "input": "你好", "output": "hello"}, "alpaca"),
        ({"prompt": "1+1=", "completion": "2"}, "prompt_completion"),
        ({"text": "一段文字"}, "text"),
        ({"Instruction ": "x", "OUTPUT": "y"}, "alpaca"),
    ],
)
def test_detect_each_schema(row, schema):
    assert detect_schema(records(row, row)) == schema


def test_detect_by_majority():
    rows = records({"text": "a"}, {"prompt": "p", "completion": "c"}, {"text": "b"})
    assert detect_schema(rows) == "text"


def test_detect_prefers_messages_when_a_row_fits_several():
    assert detect_schema(records({**CHAT, "text": "also"})) == "messages"


def test_detect_accepts_plain_dicts():
    assert detect_schema([{"text": "a"}]) == "text"


def test_detect_from_header_columns():
    assert detect_schema([], columns=["id", "prompt", "completion"]) == "prompt_completion"


def test_missing_columns_error_names_what_is_missing():
    with pytest.raises(SchemaError) as info:
        detect_schema([], columns=["instruction", "input"])
    message = str(info.value)
    assert "columns found: instruction, input" in message
    assert "alpaca needs columns instruction, output; missing: output" in message
    assert "prompt_completion needs columns prompt, completion; missing: prompt, completion" in message
    assert "messages needs columns messages (or conversations); missing: messages" in message
    assert "text needs columns text; missing: text" in message


def test_no_majority_error():
    rows = records({"text": "a"}, {"prompt": "p", "completion": "c"}, {"foo": 1}, {"bar": 2})
    with pytest.raises(SchemaError, match="text needs columns text; present together in only 1 of 4 rows"):
        detect_schema(rows)


def test_csv_missing_column_end_to_end(files):
    path = files.csv(["instruction", "input"], [["翻译", "你好"]])
    result = read_records(path, max_bytes=1 << 20)
    with pytest.raises(SchemaError, match="missing: output"):
        detect_schema(result.records, columns=result.columns)


def test_alpaca_with_input_and_system():
    rows = records(
        {"instruction": "翻译成英文", "input": "你好", "output": "Hello", "system": "你是翻译"},
        {"instruction": "讲个笑话", "input": "", "output": "好的……"},
    )
    examples, errors = normalize(rows, "alpaca")
    assert errors == []
    assert examples[0] == Example(
        1,
        messages=[
            {"role": "system", "content": "你是翻译"},
            {"role": "user", "content": "翻译成英文\n\n你好"},
            {"role": "assistant", "content": "Hello"},
        ],
    )
    assert examples[1].messages == [
        {"role": "user", "content": "讲个笑话"},
        {"role": "assistant", "content": "好的……"},
    ]


def test_prompt_completion_and_text():
    (pc,), _ = normalize(records({"prompt": "天空", "completion": "是蓝色的"}), "prompt_completion")
    assert pc.messages == [{"role": "user", "content": "天空"}, {"role": "assistant", "content": "是蓝色的"}]
    (tx,), _ = normalize(records({"text": "纯文本"}), "text")
    assert tx.text == "纯文本" and tx.messages is None


def test_sharegpt_roles_are_mapped_and_empty_system_dropped():
    row = {
        "conversations": [
            {"from": "system", "value": ""},
            {"from": "human", "value": "你是谁？"},
            {"from": "gpt", "value": "我是助手。"},
        ]
    }
    (example,), errors = normalize(records(row), "messages")
    assert errors == []
    assert example.messages == [
        {"role": "user", "content": "你是谁？"},
        {"role": "assistant", "content": "我是助手。"},
    ]


def test_messages_as_json_text_in_a_cell():
    (example,), errors = normalize(records({"messages": json.dumps(CHAT["messages"])}), "messages")
    assert errors == [] and example.messages == CHAT["messages"]


def test_tool_role_is_accepted():
    messages = [
        {"role": "user", "content": "天气？"},
        {"role": "assistant", "content": "查询中"},
        {"role": "tool", "content": '{"temp": 20}'},
        {"role": "assistant", "content": "20 度"},
    ]
    (example,), errors = normalize(records({"messages": messages}), "messages")
    assert errors == [] and [m["role"] for m in example.messages] == [
        "user",
        "assistant",
        "tool",
        "assistant",
    ]


@pytest.mark.parametrize(
    ("messages", "field", "reason"),
    [
        ([{"role": "robot", "content": "x"}], "messages[0].role", "unknown role 'robot'"),
        ([{"role": "user", "content": "只有问题"}], "messages", "no assistant message"),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "q2"},
            ],
            "messages",
            "must end with an assistant message",
        ),
        ([{"role": "user", "content": ["多模态"]}], "messages[0].content", "must be a string, got a list"),
        ([{"role": "user"}], "messages[0].content", "is missing"),
        ([{"role": "user", "content": "  "}], "messages[0].content", "is empty"),
        ([{"content": "x"}], "messages[0].role", "is missing"),
        ("not json", "messages", "not JSON"),
        ({"role": "user"}, "messages", "must be a list"),
        ([], "messages", "is empty"),
        (["hi"], "messages[0]", "must be an object"),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": "a"},
            ],
            "messages[1].role",
            "system message must come first",
        ),
    ],
)
def test_bad_chats(messages, field, reason):
    examples, errors = normalize(records({"messages": messages}), "messages")
    assert examples == []
    assert len(errors) == 1
    assert errors[0].line == 1 and errors[0].field == field and reason in errors[0].reason


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ({"instruction": "x"}, "output", "output is missing"),
        ({"instruction": "x", "output": None}, "output", "output is missing"),
        ({"instruction": "x", "output": math.nan}, "output", "output is missing"),
        ({"instruction": "", "output": "y"}, "instruction", "instruction is empty"),
        ({"instruction": "x", "output": 5}, "output", "must be a string, got a number"),
        ({"instruction": "x", "output": {"a": 1}}, "output", "must be a string, got an object"),
        ({"instruction": "x", "input": [1], "output": "y"}, "input", "must be a string, got a list"),
    ],
)
def test_bad_alpaca_rows(row, field, reason):
    good = {"instruction": "好", "output": "的"}
    examples, errors = normalize(records(good, row, good), "alpaca")
    assert [e.line for e in examples] == [1, 3]
    assert [(e.line, e.field) for e in errors] == [(2, field)]
    assert reason in errors[0].reason
    assert errors[0].original == row


def test_numbers_from_spreadsheets_become_text():
    rows = records(
        {"prompt": 3.0, "completion": 0.1},
        {"prompt": 42, "completion": True},
        {"prompt": dt.datetime(2024, 5, 1), "completion": 1e20},
    )
    examples, errors = normalize(rows, "prompt_completion", coerce_scalars=True)
    assert errors == []
    assert [(e.messages[0]["content"], e.messages[1]["content"]) for e in examples] == [
        ("3", "0.1"),
        ("42", "TRUE"),
        ("2024-05-01", "1e+20"),
    ]


def test_example_holds_exactly_one_kind():
    with pytest.raises(ValueError):
        Example(1)
    with pytest.raises(ValueError):
        Example(1, messages=[], text="x")


def test_content_key_ignores_line_and_is_canonical():
    a = Example(1, messages=[{"role": "user", "content": "中"}, {"role": "assistant", "content": "文"}])
    b = Example(9, messages=[{"content": "中", "role": "user"}, {"content": "文", "role": "assistant"}])
    assert a.content_key() == b.content_key()
    assert "中" in a.content_key()
    assert a.num_chars() == 2
