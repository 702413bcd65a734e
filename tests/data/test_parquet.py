from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from onebox.data.parquet import EXAMPLE_SCHEMA, content_digest, read_examples, write_examples
from onebox.data.schema import Example
from onebox.errors import InvalidInputError

EXAMPLES = [
    Example(
        3, messages=[{"role": "user", "content": "你好，世界"}, {"role": "assistant", "content": "您好！😀"}]
    ),
    Example(5, text="纯文本样本\n第二行"),
    Example(
        8,
        messages=[
            {"role": "system", "content": "你是助手"},
            {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "2"},
        ],
    ),
]


def test_round_trip_with_chinese(tmp_path):
    path = tmp_path / "train.parquet"
    write_examples(path, EXAMPLES)
    assert read_examples(path) == EXAMPLES
    assert [p.name for p in tmp_path.iterdir()] == ["train.parquet"]  # no temp file left behind


def test_explicit_schema(tmp_path):
    path = tmp_path / "x.parquet"
    write_examples(path, EXAMPLES)
    schema = pq.read_schema(path)
    assert schema.field("line").type == pa.int64()
    assert schema.field("messages").type == pa.list_(
        pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])
    )
    assert schema.field("text").type == pa.string()


def test_empty_split_keeps_the_schema(tmp_path):
    path = tmp_path / "validation.parquet"
    write_examples(path, [])
    assert read_examples(path) == []
    assert pq.read_schema(path).remove_metadata().equals(EXAMPLE_SCHEMA.remove_metadata())


def test_overwrite_is_atomic_replacement(tmp_path):
    path = tmp_path / "x.parquet"
    write_examples(path, EXAMPLES)
    write_examples(path, EXAMPLES[:1])
    assert read_examples(path) == EXAMPLES[:1]


def test_foreign_parquet_is_rejected(tmp_path):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"instruction": ["x"]}), path)
    with pytest.raises(InvalidInputError, match="missing columns line, messages, text"):
        read_examples(path)


def test_not_parquet_is_rejected(tmp_path):
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"junk")
    with pytest.raises(InvalidInputError) as info:
        read_examples(path)
    assert info.value.__cause__ is not None


def test_row_with_neither_messages_nor_text_is_rejected(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(
        pa.table(
            {
                "line": [1],
                "messages": pa.nulls(1, EXAMPLE_SCHEMA.field("messages").type),
                "text": pa.nulls(1, pa.string()),
            }
        ),
        path,
    )
    with pytest.raises(InvalidInputError, match="line 1"):
        read_examples(path)


def test_digest_ignores_line_numbers_but_not_content_or_order():
    moved = [Example(e.line + 100, messages=e.messages, text=e.text) for e in EXAMPLES]
    assert content_digest(EXAMPLES) == content_digest(moved)
    assert content_digest(EXAMPLES) != content_digest(EXAMPLES[::-1])
    changed = [*EXAMPLES[:1], Example(5, text="纯文本样本\n第二行!"), *EXAMPLES[2:]]
    assert content_digest(EXAMPLES) != content_digest(changed)
    assert content_digest([Example(1, text="a")]) != content_digest(
        [Example(1, text="a"), Example(2, text="")]
    )
    assert len(content_digest([])) == 64
