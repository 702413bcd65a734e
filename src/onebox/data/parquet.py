"""The on-disk form of normalised examples: Parquet with one fixed schema.

Training and evaluation read these files; a fixed explicit schema means an empty split still
has the right columns and types, and a file from elsewhere is rejected rather than misread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from onebox.data.schema import Example
from onebox.errors import InvalidInputError, Problem
from onebox.fsutil import atomic_path

MESSAGE_TYPE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])
EXAMPLE_SCHEMA = pa.schema(
    [
        pa.field("line", pa.int64(), nullable=False),
        pa.field("messages", pa.list_(MESSAGE_TYPE), nullable=True),
        pa.field("text", pa.string(), nullable=True),
    ],
    metadata={b"onebox.format": b"examples/1"},
)
"""``line`` int64, ``messages`` list<struct<role, content>> or null, ``text`` string or null."""


def write_examples(path: Path, examples: list[Example]) -> None:
    """Write ``examples`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    table = pa.Table.from_pydict(
        {
            "line": [e.line for e in examples],
            "messages": [e.messages for e in examples],
            "text": [e.text for e in examples],
        },
        schema=EXAMPLE_SCHEMA,
    )
    with atomic_path(Path(path)) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_examples(path: Path) -> list[Example]:
    """Read a file written by :func:`write_examples`; anything else raises InvalidInputError."""
    from onebox.security.sealed import read_pointer

    path = Path(path)
    try:
        sealed = read_pointer(path)  # an encrypted store's shard: decrypted into memory, no file
        table = pq.read_table(pa.BufferReader(sealed) if sealed is not None else path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InvalidInputError(
            f"{path.name} is not a readable Parquet file: {exc}", problems=[Problem("parquet", str(exc))]
        ) from exc
    missing = [f.name for f in EXAMPLE_SCHEMA if f.name not in table.column_names]
    if missing:
        raise InvalidInputError(
            f"{path.name} is not an examples file: missing columns {', '.join(missing)}",
            problems=[Problem(name, "column is missing") for name in missing],
        )
    try:
        table = table.select([f.name for f in EXAMPLE_SCHEMA]).cast(EXAMPLE_SCHEMA)
    except (pa.ArrowException, ValueError) as exc:
        raise InvalidInputError(
            f"{path.name} is not an examples file: its column types do not match ({exc})",
            problems=[Problem("schema", str(exc))],
        ) from exc
    examples: list[Example] = []
    for row in table.to_pylist():
        try:
            examples.append(Example(row["line"], messages=row["messages"], text=row["text"]))
        except ValueError as exc:
            raise InvalidInputError(
                f"{path.name}: row for line {row['line']} must hold exactly one of messages or text",
                problems=[Problem("messages", str(exc), line=row["line"])],
            ) from exc
    return examples


def content_digest(examples: Iterable[Example]) -> str:
    """sha256 of the examples' content in order, ignoring line numbers and source format.

    Identical data from a JSONL and a CSV file gives the same digest.
    """
    digest = hashlib.sha256(b"onebox.examples/1\n")
    for example in examples:
        digest.update(example.content_key().encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
