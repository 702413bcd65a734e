"""Detect a dataset's schema and normalise every row to one internal form, :class:`Example`.

Supported schemas (column names match case-insensitively, surrounding spaces ignored):

- ``messages``: a ``messages`` list of ``{role, content}`` (roles system/user/assistant/tool),
  or ShareGPT ``conversations`` of ``{from, value}`` with human -> user, gpt -> assistant.
  In CSV/XLSX the cell may hold the list as JSON text.
- ``alpaca``: ``instruction``, optional ``input``, ``output``, optional ``system``.
- ``prompt_completion``: ``prompt``, ``completion``.
- ``text``: ``text`` (plain text for continued pre-training).

Trainers then only ever see chat ``messages`` or plain ``text``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from onebox.data.readers import RawRecord, RowError
from onebox.errors import Problem, SchemaError

SCHEMAS: tuple[str, ...] = ("messages", "alpaca", "prompt_completion", "text")
"""Schema names, in the order that wins when a record fits several."""

REQUIRED: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
"""Columns each schema needs (``messages`` is also satisfied by ShareGPT ``conversations``)."""

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
_ROLE_MAP = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "human": "user",
    "gpt": "assistant",
}


@dataclass(slots=True)
class Example:
    """One normalised training row: chat ``messages`` or plain ``text``, never both.

    ``line`` points back at the source file so a user can find the row again.
    """

    line: int
    messages: list[dict[str, str]] | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.text is None):
            raise ValueError("an Example holds exactly one of messages or text")

    def content(self) -> dict[str, Any]:
        """The row's content without its line number (what dedupe, split and hashing look at)."""
        if self.messages is not None:
            return {"messages": [{"role": m["role"], "content": m["content"]} for m in self.messages]}
        return {"text": self.text}

    def content_key(self) -> str:
        """Canonical JSON of :meth:`content`: equal content gives equal strings on every platform."""
        return json.dumps(self.content(), ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    def num_chars(self) -> int:
        """Characters of all message contents (or of the text); what length limits apply to."""
        if self.messages is not None:
            return sum(len(m["content"]) for m in self.messages)
        return len(self.text or "")


def detect_schema(
    records: Sequence[RawRecord | Mapping[str, Any]], *, columns: list[str] | None = None
) -> str:
    """Return the schema whose required columns most records have (more than half).

    For tabular files pass the header ``columns``: a header decides for every row at once.
    Raises :class:`SchemaError` naming the columns found and what each schema is missing.
    """
    if columns is not None:
        keys = {_norm(c) for c in columns}
        for schema in SCHEMAS:
            if _has_schema(keys, schema):
                return schema
        raise _schema_error(list(columns), {s: 0 for s in SCHEMAS}, None)
    counts = dict.fromkeys(SCHEMAS, 0)
    found: dict[str, None] = {}
    for record in records:
        data = record.data if isinstance(record, RawRecord) else record
        keys = set()
        for key in data:
            k = _norm(key)
            keys.add(k)
            if len(found) < 100:
                found.setdefault(str(key), None)
        for schema in SCHEMAS:
            if _has_schema(keys, schema):
                counts[schema] += 1
    total = len(records)
    if total:
        best = max(SCHEMAS, key=lambda s: (counts[s], -SCHEMAS.index(s)))
        if counts[best] * 2 > total:
            return best
    raise _schema_error(list(found), counts, total)


def _norm(key: Any) -> str:
    return str(key).strip().lower()


def _has_schema(keys: set[str], schema: str) -> bool:
    if schema == "messages":
        return "messages" in keys or "conversations" in keys
    return all(k in keys for k in REQUIRED[schema])


def _schema_error(found: list[str], counts: dict[str, int], total: int | None) -> SchemaError:
    keys = {_norm(c) for c in found}
    problems: list[Problem] = []
    for schema in SCHEMAS:
        required = REQUIRED[schema]
        missing = [] if _has_schema(keys, schema) else [c for c in required if c not in keys]
        needs = "messages (or conversations)" if schema == "messages" else ", ".join(required)
        if missing:
            reason = f"{schema} needs columns {needs}; missing: {', '.join(missing)}"
        else:
            reason = (
                f"{schema} needs columns {needs}; present together in only {counts[schema]} of {total} rows"
            )
        problems.append(Problem(schema, reason))
    shown = ", ".join(found) if found else "(none)"
    if total == 0:
        message = "no records to detect a schema from"
    else:
        message = f"the data matches no supported schema; columns found: {shown}"
    return SchemaError(
        message,
        problems=problems,
        columns=found,
        missing={p.field: p.reason for p in problems},
    )


def normalize(
    records: Sequence[RawRecord], schema: str, *, coerce_scalars: bool = False
) -> tuple[list[Example], list[RowError]]:
    """Validate every record against ``schema`` and convert the good ones to :class:`Example`.

    Each bad row yields one :class:`RowError` (its first problem) instead of stopping the
    import. ``coerce_scalars`` turns numbers, booleans and dates into text, for spreadsheet
    cells (CSV/XLSX/Parquet) where "42" arrives as a number; JSON sources must send strings.
    """
    if schema not in SCHEMAS:
        raise ValueError(f"unknown schema {schema!r}")
    convert = _CONVERTERS[schema]
    examples: list[Example] = []
    errors: list[RowError] = []
    for record in records:
        try:
            examples.append(convert(record, coerce_scalars))
        except _RowProblem as problem:
            errors.append(RowError(record.line, problem.reason, problem.field, record.data))
    return examples, errors


class _RowProblem(Exception):
    """Internal: the first thing wrong with a row."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


_MISSING: Any = object()


def _get(data: Mapping[str, Any], name: str) -> Any:
    """Look a column up exactly, then case-insensitively (CSV headers like "Instruction")."""
    if name in data:
        return data[name]
    for key, value in data.items():
        if _norm(key) == name:
            return value
    return _MISSING


def _is_missing(value: Any) -> bool:
    return value is _MISSING or value is None or (isinstance(value, float) and math.isnan(value))


def scalar_to_text(value: Any) -> str | None:
    """Render a spreadsheet cell as the text a user sees: 3.0 -> "3", 0.1 -> "0.1".

    Returns None for values that are not scalars (lists, dicts, bytes).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value == value.to_integral_value() else str(value)
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0) and value.tzinfo is None:
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return None


def _text(data: Mapping[str, Any], name: str, coerce: bool, *, required: bool) -> str | None:
    value = _get(data, name)
    if _is_missing(value):
        if required:
            raise _RowProblem(name, f"{name} is missing")
        return None
    if not isinstance(value, str):
        text = scalar_to_text(value) if coerce else None
        if text is None:
            raise _RowProblem(name, f"{name} must be a string, got {_type_name(value)}")
        value = text
    if not value.strip():
        if required:
            raise _RowProblem(name, f"{name} is empty")
        return None
    return value


def _type_name(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float | Decimal):
        return "a number"
    return type(value).__name__


def _messages(record: RawRecord, coerce: bool) -> Example:
    name = "messages"
    value = _get(record.data, "messages")
    if _is_missing(value):
        name = "conversations"
        value = _get(record.data, "conversations")
    if _is_missing(value):
        raise _RowProblem("messages", "messages is missing")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise _RowProblem(
                name, f"{name} must be a list of messages; the text is not JSON ({exc.msg})"
            ) from exc
    if not isinstance(value, list):
        raise _RowProblem(name, f"{name} must be a list of messages, got {_type_name(value)}")
    if not value:
        raise _RowProblem(name, f"{name} is empty")
    out: list[dict[str, str]] = []
    for i, item in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(item, Mapping):
            raise _RowProblem(
                where, f"{where} must be an object with role and content, got {_type_name(item)}"
            )
        role_raw = item.get("role", item.get("from", _MISSING))
        content = item.get("content", item.get("value", _MISSING))
        if _is_missing(role_raw):
            raise _RowProblem(f"{where}.role", f"{where}.role is missing")
        role = _ROLE_MAP.get(str(role_raw).strip().lower()) if isinstance(role_raw, str) else None
        if role is None:
            raise _RowProblem(
                f"{where}.role",
                f"unknown role {role_raw!r}; expected one of {', '.join(ROLES)} (or ShareGPT human, gpt)",
            )
        if _is_missing(content):
            if role == "system":
                continue
            raise _RowProblem(f"{where}.content", f"{where}.content is missing")
        if not isinstance(content, str):
            raise _RowProblem(
                f"{where}.content", f"{where}.content must be a string, got {_type_name(content)}"
            )
        if not content.strip():
            if role == "system":  # an empty system prompt is common in ShareGPT exports: drop it
                continue
            raise _RowProblem(f"{where}.content", f"{where}.content is empty")
        if role == "system" and out:
            raise _RowProblem(f"{where}.role", "a system message must come first")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise _RowProblem(name, "the conversation has no assistant message")
    if out[-1]["role"] != "assistant":
        raise _RowProblem(name, f"the conversation must end with an assistant message, not {out[-1]['role']}")
    return Example(record.line, messages=out)


def _alpaca(record: RawRecord, coerce: bool) -> Example:
    instruction = _text(record.data, "instruction", coerce, required=True)
    extra = _text(record.data, "input", coerce, required=False)
    output = _text(record.data, "output", coerce, required=True)
    system = _text(record.data, "system", coerce, required=False)
    assert instruction is not None and output is not None
    user = f"{instruction}\n\n{extra}" if extra else instruction
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return Example(record.line, messages=messages)


def _prompt_completion(record: RawRecord, coerce: bool) -> Example:
    prompt = _text(record.data, "prompt", coerce, required=True)
    completion = _text(record.data, "completion", coerce, required=True)
    assert prompt is not None and completion is not None
    return Example(
        record.line,
        messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}],
    )


def _text_row(record: RawRecord, coerce: bool) -> Example:
    text = _text(record.data, "text", coerce, required=True)
    assert text is not None
    return Example(record.line, text=text)


_CONVERTERS = {
    "messages": _messages,
    "alpaca": _alpaca,
    "prompt_completion": _prompt_completion,
    "text": _text_row,
}
