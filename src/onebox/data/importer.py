"""The dataset import pipeline: read -> validate -> clean -> split -> write, file in, files out.

:func:`prepare` is pure and file-based so the service layer, a job worker or a test can run it
alike; storing the outputs as a dataset version is the caller's business. Everything that can
fail on the input fails before the first byte is written to ``out_dir``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from onebox.data._validate import from_dict, is_int, is_number
from onebox.data.clean import CleanConfig, Quarantined, clean
from onebox.data.parquet import content_digest, write_examples
from onebox.data.pii import redact
from onebox.data.readers import FORMATS, TABULAR_FORMATS, RawRecord, RowError, normalise_format, read_records
from onebox.data.schema import Example, detect_schema, normalize, scalar_to_text
from onebox.data.split import split
from onebox.errors import EmptyInputError, ErrorList, Problem, TooManyBadRowsError
from onebox.fsutil import atomic_path, atomic_write_bytes
from onebox.progress import ProgressFn, null_progress

PIPELINE_VERSION = 1
"""Bumped when a change to reading, normalising, cleaning or splitting changes the output, so
:attr:`Prepared.content_hash` of old imports no longer matches."""

DEFAULT_MAX_IMPORT_BYTES = 512 * 1024 * 1024
"""Default file size limit; the ``ONEBOX_MAX_IMPORT_BYTES`` setting overrides it."""

MAX_PROBLEMS = 20
"""Bad rows listed in a :class:`TooManyBadRowsError`."""

MAX_REPORTED_INVALID = 1000
"""Invalid rows listed in report.json (quarantine.jsonl always holds all of them)."""

FILES = {
    "train": "train.parquet",
    "validation": "validation.parquet",
    "quarantine": "quarantine.jsonl",
    "report": "report.json",
}


@dataclass
class ImportOptions:
    """How :func:`prepare` imports a file."""

    format: str | None = None
    """File format (jsonl, json, csv, tsv, parquet, xlsx, txt); None detects it from the suffix."""

    max_bytes: int = DEFAULT_MAX_IMPORT_BYTES
    """Largest file accepted, in bytes (setting ``ONEBOX_MAX_IMPORT_BYTES``)."""

    max_bad_fraction: float = 0.1
    """Largest share of invalid rows tolerated; above it nothing is imported and the first bad
    rows are listed. Invalid rows below it are skipped and reported."""

    clean: CleanConfig = field(default_factory=CleanConfig)
    """Cleaning steps and thresholds."""

    validation_fraction: float = 0.1
    """Share of rows held out for validation, in [0, 1); 0 disables the validation split."""

    seed: int = 0
    """Seed of the train/validation split."""

    def validate(self) -> None:
        """Raise :class:`~onebox.errors.ConfigError` listing every invalid field at once."""
        errors = ErrorList()
        if self.format is not None and normalise_format(self.format) not in FORMATS:
            errors.add(
                "format", f"unknown format {self.format!r}", f"use one of {', '.join(FORMATS)} or null"
            )
        if not is_int(self.max_bytes) or self.max_bytes < 1:
            errors.add("max_bytes", f"must be a positive integer, got {self.max_bytes!r}")
        if not is_number(self.max_bad_fraction) or not 0 <= self.max_bad_fraction <= 1:
            errors.add("max_bad_fraction", f"must be in [0, 1], got {self.max_bad_fraction!r}")
        if isinstance(self.clean, CleanConfig):
            errors.problems.extend(self.clean.problems(prefix="clean."))
        else:
            errors.add("clean", f"must be cleaning options, got {type(self.clean).__name__}")
        if not is_number(self.validation_fraction) or not 0 <= self.validation_fraction < 1:
            errors.add("validation_fraction", f"must be in [0, 1), got {self.validation_fraction!r}")
        if not is_int(self.seed) or self.seed < 0:
            errors.add("seed", f"must be an integer >= 0, got {self.seed!r}")
        errors.raise_if_any("invalid import options")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def result_options(self) -> dict[str, Any]:
        """The options that change the prepared data (and so enter the content hash)."""
        return {
            "clean": self.clean.as_dict(),
            "validation_fraction": self.validation_fraction,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImportOptions:
        """Build from plain data (CLI/API), rejecting unknown keys; call :meth:`validate` after."""
        data = dict(data)
        if isinstance(data.get("clean"), dict):
            data["clean"] = from_dict(CleanConfig, data["clean"], prefix="clean.")
        return from_dict(cls, data)


@dataclass
class Prepared:
    """What :func:`prepare` produced; ``files`` maps train/validation/quarantine/report to paths."""

    schema: str
    format: str
    content_hash: str
    """sha256 of the valid normalised rows (before cleaning) and the result-changing options:
    the same data and options give the same hash whatever the file's format or name."""
    num_train: int
    num_validation: int
    num_quarantined: int
    report: dict[str, Any]
    files: dict[str, Path]


def prepare(
    path: Path, out_dir: Path, options: ImportOptions | None = None, progress: ProgressFn = null_progress
) -> Prepared:
    """Import ``path`` into ``out_dir`` (train/validation Parquet, quarantine.jsonl, report.json).

    Raises :class:`TooManyBadRowsError` when invalid rows exceed ``max_bad_fraction`` and
    :class:`EmptyInputError` when no usable row is left; ``out_dir`` is untouched in both cases.
    Progress stages: read, validate, clean, split, write.
    """
    options = options or ImportOptions()
    options.validate()
    path = Path(path)

    progress("read", 0, None)
    result = read_records(path, fmt=options.format, max_bytes=options.max_bytes)
    total = result.total_rows
    progress("read", total, total)

    progress("validate", 0, total)
    schema = None
    examples: list[Example] = []
    bad: list[RowError] = list(result.errors)
    if result.records:
        schema = detect_schema(result.records, columns=result.columns)
        examples, row_errors = normalize(
            result.records, schema, coerce_scalars=result.format in TABULAR_FORMATS
        )
        bad.extend(row_errors)
    bad.sort(key=lambda e: e.line)
    _check_bad_rows(bad, total, options.max_bad_fraction, path.name)
    if schema is None or not examples:
        raise EmptyInputError(f"{path.name}: none of its {total} rows is valid")
    progress("validate", total, total)

    content_hash = _content_hash(examples, options)
    cleaned = clean(examples, options.clean, progress)
    if not cleaned.kept:
        reasons = ", ".join(f"{k} {v}" for k, v in cleaned.report.removed.items() if v)
        raise EmptyInputError(
            f"{path.name}: cleaning removed all {len(examples)} valid rows ({reasons})",
            problems=[
                Problem("clean", f"{v} rows removed as {k}") for k, v in cleaned.report.removed.items() if v
            ],
        )

    progress("split", 0, len(cleaned.kept))
    train, validation = split(cleaned.kept, options.validation_fraction, options.seed)
    progress("split", len(cleaned.kept), len(cleaned.kept))

    quarantine = _quarantine_rows(bad, cleaned.quarantined, result.records, options.clean.redact_pii)
    report = {
        "source": {"name": path.name, "bytes": path.stat().st_size},
        "format": result.format,
        "schema": schema,
        "rows": {"read": total, "valid": len(examples), "invalid": len(bad)},
        "invalid_rows": [e.as_dict() for e in bad[:MAX_REPORTED_INVALID]],
        "invalid_rows_truncated": len(bad) > MAX_REPORTED_INVALID,
        "cleaning": cleaned.report.as_dict(),
        "pii": dict(cleaned.report.pii),
        "split": {"train": len(train), "validation": len(validation)},
        "quarantined": len(quarantine),
        "content_hash": content_hash,
        "pipeline_version": PIPELINE_VERSION,
        "options": options.as_dict(),
    }

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {name: out_dir / filename for name, filename in FILES.items()}
    progress("write", 0, len(files))
    write_examples(files["train"], train)
    progress("write", 1, len(files))
    write_examples(files["validation"], validation)
    progress("write", 2, len(files))
    with atomic_path(files["quarantine"]) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in quarantine:
            fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
    progress("write", 3, len(files))
    atomic_write_bytes(
        files["report"], (json.dumps(report, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    )
    progress("write", 4, len(files))

    return Prepared(
        schema=schema,
        format=result.format,
        content_hash=content_hash,
        num_train=len(train),
        num_validation=len(validation),
        num_quarantined=len(quarantine),
        report=report,
        files=files,
    )


def _check_bad_rows(bad: list[RowError], total: int, max_fraction: float, name: str) -> None:
    if not bad or len(bad) / total <= max_fraction:
        return
    share = len(bad) / total
    problems = [Problem(e.field or "row", e.reason, line=e.line) for e in bad[:MAX_PROBLEMS]]
    more = f" (first {MAX_PROBLEMS} listed)" if len(bad) > MAX_PROBLEMS else ""
    raise TooManyBadRowsError(
        f"{name}: {len(bad)} of {total} rows ({share:.1%}) are invalid, more than max_bad_fraction "
        f"{max_fraction:.1%}; nothing was imported{more}",
        problems=problems,
        bad_rows=len(bad),
        total_rows=total,
        max_bad_fraction=max_fraction,
    )


def _content_hash(examples: list[Example], options: ImportOptions) -> str:
    canonical = json.dumps(
        {"pipeline": PIPELINE_VERSION, "data": content_digest(examples), "options": options.result_options()},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _quarantine_rows(
    bad: list[RowError], removed: list[Quarantined], records: list[RawRecord], redact_pii: bool
) -> list[dict[str, Any]]:
    """One JSON object per invalid or removed row, in line order, with its original content.

    With PII redaction on, the original content is redacted too, so personal data does not
    survive in the quarantine file.
    """
    lines = {q.example.line for q in removed}
    originals = {r.line: r.data for r in records if r.line in lines}
    rows = [
        {
            "line": e.line,
            "stage": "validate",
            "reason": "invalid_row",
            "field": e.field,
            "detail": e.reason,
            "original": _jsonable(e.original, redact_pii),
        }
        for e in bad
    ]
    rows += [
        {
            "line": q.example.line,
            "stage": "clean",
            "reason": q.reason,
            "field": None,
            "detail": q.detail,
            "original": _jsonable(originals.get(q.example.line), redact_pii),
            "content": q.example.content(),
        }
        for q in removed
    ]
    rows.sort(key=lambda r: r["line"])
    return rows


def _jsonable(value: Any, redact_pii: bool) -> Any:
    """Make a raw cell value JSON-safe (NaN -> null, dates -> text) and optionally redact it."""
    if isinstance(value, str):
        return redact(value)[0] if redact_pii else value
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v, redact_pii) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, redact_pii) for v in value]
    if isinstance(value, Decimal | dt.date | dt.time):
        return scalar_to_text(value)
    if isinstance(value, bytes):
        return _jsonable(value.decode("utf-8", errors="replace"), redact_pii)
    return _jsonable(str(value), redact_pii)
