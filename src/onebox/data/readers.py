"""Read dataset files (JSONL, JSON, CSV/TSV, Parquet, XLSX, TXT) into raw records.

Every record keeps the line number a user sees when opening the file, so every later error
can point at it:

- JSONL: the physical line (blank lines are skipped but still counted).
- CSV/TSV: the physical line where the record starts; the header is line 1.
- XLSX: the spreadsheet row number of the first sheet.
- JSON: the element's index + 1 within the array (JSON has no natural "row" line).
- Parquet: the row index + 1.
- TXT: the physical line. Each non-empty line is one ``{"text": ...}`` example; to import
  multi-line documents, use JSONL with a ``text`` field instead.

Bad rows that do not stop reading (a malformed JSONL line, a CSV row with too many fields) are
returned as :class:`RowError`; problems with the whole file raise a :class:`OneboxError`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onebox.errors import (
    EmptyInputError,
    EncodingError,
    InputTooLargeError,
    InvalidInputError,
    Problem,
    UnsupportedFormatError,
)

FORMATS: tuple[str, ...] = ("jsonl", "json", "csv", "tsv", "parquet", "xlsx", "txt")
"""Format names accepted by ``fmt`` (and reported in :attr:`ReadResult.format`)."""

TABULAR_FORMATS: frozenset[str] = frozenset({"csv", "tsv", "parquet", "xlsx"})
"""Formats whose cells may hold numbers that should be read as text."""

SUFFIXES: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".xlsx": "xlsx",
    ".txt": "txt",
}


def normalise_format(fmt: str) -> str:
    """``.JSONL``, ``ndjson`` and ``jsonl`` all name one format."""
    name = fmt.lower().lstrip(".")
    return _FORMAT_ALIASES.get(name, name)


_FORMAT_ALIASES = {"ndjson": "jsonl", "jsonlines": "jsonl", "pq": "parquet", "text": "txt"}
_SUPPORTED_TEXT = ".jsonl/.ndjson, .json, .csv, .tsv, .parquet, .xlsx, .txt"
_BOM = b"\xef\xbb\xbf"
_DATA_KEYS = ("data", "rows", "examples")


@dataclass(slots=True)
class RawRecord:
    """One row as read from the file, before any schema is applied."""

    line: int
    data: dict[str, Any]


@dataclass(slots=True)
class RowError:
    """One row that could not be used; the import continues without it.

    ``original`` carries the raw content (the line's text or the row's values) so it can be
    written to the quarantine file for the user to fix.
    """

    line: int
    reason: str
    field: str | None = None
    original: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "reason": self.reason}


@dataclass
class ReadResult:
    """Rows read from one file: good ones in ``records``, unusable ones in ``errors``."""

    format: str
    records: list[RawRecord]
    errors: list[RowError]
    total_rows: int
    columns: list[str] | None = field(default=None)
    """Header columns for tabular formats (CSV/TSV/XLSX/Parquet); None for JSON/TXT."""


def read_records(path: Path, *, fmt: str | None = None, max_bytes: int) -> ReadResult:
    """Read ``path`` into raw records; ``fmt`` overrides detection from the suffix.

    A file with an unknown suffix is sniffed (Parquet and XLSX magic, then JSON / JSON Lines).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(
            f"{path} does not exist or is not a file", problems=[Problem("path", "no such file")]
        )
    size = path.stat().st_size
    if size > max_bytes:
        raise InputTooLargeError(
            f"{path.name} is {size:,} bytes ({_human(size)}), over the import limit of {max_bytes:,} bytes "
            f"({_human(max_bytes)}); raise ONEBOX_MAX_IMPORT_BYTES to import larger files",
            problems=[Problem("size", f"{size} > {max_bytes} bytes", fix="raise ONEBOX_MAX_IMPORT_BYTES")],
            size=size,
            max_bytes=max_bytes,
        )
    fmt = _resolve_format(path, fmt)
    if size == 0:
        raise EmptyInputError(f"{path.name} is empty")
    if fmt == "parquet":
        result = _read_parquet(path)
    elif fmt == "xlsx":
        result = _read_xlsx(path)
    else:
        raw = path.read_bytes()
        if fmt is None:
            try:
                raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise _unsupported(path) from None  # binary content with an unknown suffix
        text = _decode(raw, path.name)
        if fmt is None:
            fmt = _sniff_text(text, path)
        result = _TEXT_READERS[fmt](text, path.name)
    if result.total_rows == 0:
        raise EmptyInputError(f"{path.name} holds no rows ({result.format})")
    return result


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _resolve_format(path: Path, fmt: str | None) -> str | None:
    """Return the format to read with, or None when the content must be sniffed."""
    if fmt is not None:
        name = _FORMAT_ALIASES.get(fmt.lower().lstrip("."), fmt.lower().lstrip("."))
        if name not in FORMATS:
            raise UnsupportedFormatError(
                f"unknown format {fmt!r}; supported formats: {', '.join(FORMATS)}",
                problems=[
                    Problem("format", f"{fmt!r} is not supported", fix=f"use one of {', '.join(FORMATS)}")
                ],
            )
        return name
    suffix = path.suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    if suffix == ".xls":
        raise UnsupportedFormatError(
            f"{path.name}: legacy Excel .xls files are not supported; supported formats: {_SUPPORTED_TEXT}",
            problems=[
                Problem("format", "'.xls' is not supported", fix="save the sheet as .xlsx (or CSV UTF-8)")
            ],
        )
    with path.open("rb") as fh:
        head = fh.read(4)
    if head == b"PAR1":
        return "parquet"
    if head.startswith(b"PK") and _is_xlsx(path):
        return "xlsx"
    return None


def _is_xlsx(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return "xl/workbook.xml" in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def _unsupported(path: Path) -> UnsupportedFormatError:
    suffix = path.suffix or "(none)"
    return UnsupportedFormatError(
        f"{path.name}: suffix {suffix!r} is not supported and the content is not JSON or JSON Lines; "
        f"supported formats: {_SUPPORTED_TEXT}",
        problems=[
            Problem(
                "format",
                f"cannot read suffix {suffix!r}",
                fix="rename the file or pass the format explicitly",
            )
        ],
        suffix=suffix,
        supported=list(FORMATS),
    )


def _sniff_text(text: str, path: Path) -> str:
    """Tell JSON from JSON Lines for a file whose suffix says nothing."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        return "json"
    if stripped.startswith("{"):
        first = stripped.split("\n", 1)[0]
        try:
            return "jsonl" if isinstance(json.loads(first), dict) else "json"
        except json.JSONDecodeError:
            return "json"
    raise _unsupported(path)


def _decode(raw: bytes, name: str) -> str:
    """Decode UTF-8 (a BOM is dropped); point at the first bad byte otherwise."""
    offset = 0
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
        offset = len(_BOM)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        byte_offset = exc.start + offset
        fix = "save the file as UTF-8"
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            fix = "the file looks like UTF-16; save it as UTF-8"
        else:
            try:
                raw.decode("gb18030")
                fix = (
                    "the file looks like GBK/GB18030 (common for Excel in Chinese locales); "
                    "save it as UTF-8 (Excel: Save As > 'CSV UTF-8')"
                )
            except UnicodeDecodeError:
                pass
        bad = raw[exc.start : exc.start + 1].hex()
        raise EncodingError(
            f"{name} is not valid UTF-8: line {line}, byte offset {byte_offset} "
            f"(column byte {exc.start - line_start + 1}) holds byte 0x{bad}; {fix}",
            problems=[
                Problem("encoding", f"invalid UTF-8 byte 0x{bad} at byte offset {byte_offset}", fix, line)
            ],
            line=line,
            byte_offset=byte_offset,
        ) from exc


def _read_jsonl(text: str, name: str) -> ReadResult:
    records: list[RawRecord] = []
    errors: list[RowError] = []
    total = 0
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        total += 1
        line = line.rstrip("\r")
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(RowError(number, f"invalid JSON: {exc.msg} (column {exc.colno})", None, line))
            continue
        if isinstance(value, dict):
            records.append(RawRecord(number, value))
        else:
            errors.append(RowError(number, f"expected a JSON object, got {_json_type(value)}", None, line))
    return ReadResult("jsonl", records, errors, total)


def _read_json(text: str, name: str) -> ReadResult:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and _first_line_is_object(text):
            # A .json file that really holds one object per line: read it as JSON Lines.
            return _read_jsonl(text, name)
        raise InvalidInputError(
            f"{name} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            problems=[Problem("json", exc.msg, line=exc.lineno)],
            line=exc.lineno,
            column=exc.colno,
        ) from exc
    if isinstance(value, dict):
        rows = next((value[k] for k in _DATA_KEYS if isinstance(value.get(k), list)), None)
        if rows is None:
            keys = ", ".join(list(value)[:10]) or "(none)"
            raise InvalidInputError(
                f"{name}: expected a JSON array of objects or an object with a list under "
                f"{', '.join(_DATA_KEYS)}; found an object with keys {keys}",
                problems=[
                    Problem("json", "no list of records found", fix="use JSON Lines, one object per line")
                ],
            )
        value = rows
    if not isinstance(value, list):
        raise InvalidInputError(
            f"{name}: expected a JSON array of objects, got {_json_type(value)}",
            problems=[Problem("json", f"top-level value is {_json_type(value)}")],
        )
    records: list[RawRecord] = []
    errors: list[RowError] = []
    for index, item in enumerate(value):
        if isinstance(item, dict):
            records.append(RawRecord(index + 1, item))
        else:
            errors.append(RowError(index + 1, f"expected a JSON object, got {_json_type(item)}", None, item))
    return ReadResult("json", records, errors, len(value))


def _first_line_is_object(text: str) -> bool:
    first = text.lstrip().split("\n", 1)[0]
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    return type(value).__name__


def _read_csv(text: str, name: str, *, delimiter: str | None = None, fmt: str = "csv") -> ReadResult:
    if delimiter is None:
        first = text.split("\n", 1)[0]
        counts = {d: first.count(d) for d in (",", "\t", ";", "|")}
        delimiter = max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","
    # Long examples exceed csv's default 128 KiB field limit; the file size limit still applies.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    records: list[RawRecord] = []
    errors: list[RowError] = []
    total = 0
    previous_end = 0
    try:
        for row in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = _header(row, name, start)
                continue
            total += 1
            if len(row) > len(header) and any(cell.strip() for cell in row[len(header) :]):
                errors.append(
                    RowError(start, f"row has {len(row)} fields but the header has {len(header)}", None, row)
                )
                continue
            data: dict[str, Any] = {col: (row[i] if i < len(row) else None) for i, col in enumerate(header)}
            records.append(RawRecord(start, data))
    except csv.Error as exc:
        raise InvalidInputError(
            f"{name}: malformed CSV near line {reader.line_num}: {exc}",
            problems=[Problem("csv", str(exc), line=reader.line_num)],
        ) from exc
    if header is None:
        raise EmptyInputError(f"{name} holds no rows (no header)")
    if total == 0:
        raise EmptyInputError(f"{name} has a header ({', '.join(header)}) but no data rows")
    return ReadResult(fmt, records, errors, total, columns=header)


def _header(cells: list[Any], name: str, line: int) -> list[str]:
    """Turn a header row into column names; blanks get a placeholder, duplicates are an error."""
    header = [
        str(c).strip() if c is not None and str(c).strip() else f"column_{i + 1}" for i, c in enumerate(cells)
    ]
    dups = sorted(col for col, count in Counter(header).items() if count > 1)
    if dups:
        raise InvalidInputError(
            f"{name}: duplicate column names in the header (line {line}): {', '.join(dups)}",
            problems=[Problem("header", f"duplicate column {d!r}", line=line) for d in dups],
        )
    return header


def _read_tsv(text: str, name: str) -> ReadResult:
    return _read_csv(text, name, delimiter="\t", fmt="tsv")


def _read_txt(text: str, name: str) -> ReadResult:
    records = [
        RawRecord(number, {"text": line.rstrip("\r")})
        for number, line in enumerate(text.split("\n"), start=1)
        if line.strip()
    ]
    return ReadResult("txt", records, [], len(records))


_TEXT_READERS = {
    "jsonl": _read_jsonl,
    "json": _read_json,
    "csv": _read_csv,
    "tsv": _read_tsv,
    "txt": _read_txt,
}


def _read_parquet(path: Path) -> ReadResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InvalidInputError(
            f"{path.name} is not a readable Parquet file: {exc}",
            problems=[Problem("parquet", str(exc))],
        ) from exc
    rows = table.to_pylist()
    records = [RawRecord(i + 1, row) for i, row in enumerate(rows)]
    return ReadResult("parquet", records, [], len(rows), columns=list(table.column_names))


def _read_xlsx(path: Path) -> ReadResult:
    import openpyxl

    from onebox.security.archives import DOCUMENT_LIMITS, scan_zip

    with contextlib.suppress(zipfile.BadZipFile), zipfile.ZipFile(path) as zf:
        scan_zip(zf, DOCUMENT_LIMITS, path.name)  # a workbook is a zip: no bombs, no odd members
    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many unrelated types for a corrupt file
        raise InvalidInputError(
            f"{path.name} is not a readable XLSX workbook: {exc}",
            problems=[Problem("xlsx", str(exc) or type(exc).__name__)],
        ) from exc
    try:
        if not workbook.worksheets:
            raise EmptyInputError(f"{path.name} has no worksheets")
        sheet = workbook.worksheets[0]
        header: list[str] | None = None
        records: list[RawRecord] = []
        errors: list[RowError] = []
        total = 0
        try:
            rows = list(sheet.iter_rows(min_row=1, values_only=True))
        except Exception as exc:
            raise InvalidInputError(
                f"{path.name}: cannot read the first sheet: {exc}", problems=[Problem("xlsx", str(exc))]
            ) from exc
        for number, row in enumerate(rows, start=1):
            if all(c is None or (isinstance(c, str) and not c.strip()) for c in row):
                continue
            if header is None:
                header = _header(_trim(list(row)), path.name, number)
                continue
            total += 1
            extra = row[len(header) :]
            if any(c is not None and not (isinstance(c, str) and not c.strip()) for c in extra):
                errors.append(
                    RowError(number, f"row has values beyond the {len(header)} header columns", None)
                )
                continue
            data = {col: (row[i] if i < len(row) else None) for i, col in enumerate(header)}
            records.append(RawRecord(number, data))
    finally:
        workbook.close()
    if header is None:
        raise EmptyInputError(f"{path.name}: the first sheet is empty")
    if total == 0:
        raise EmptyInputError(
            f"{path.name}: the first sheet has a header ({', '.join(header)}) but no data rows"
        )
    return ReadResult("xlsx", records, errors, total, columns=header)


def _trim(cells: list[Any]) -> list[Any]:
    """Drop trailing empty header cells (sheets often carry formatting far to the right)."""
    while cells and (cells[-1] is None or (isinstance(cells[-1], str) and not cells[-1].strip())):
        cells.pop()
    return cells
