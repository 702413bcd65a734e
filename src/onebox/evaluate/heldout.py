"""Held-out question sets (the demo's JSONL schema) and their scoring.

A question file is input from outside, so every bad row is reported with its line number at
once, and nothing is scored from a file that has any. Accuracy is :func:`keywords_hit`: the
reference answers are one phrasing among many, so a right answer worded differently must still
count; contains / exact match / ROUGE-L / BLEU against the reference are reported beside it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onebox.errors import EmptyInputError, EncodingError, InvalidInputError, NotFoundError, Problem
from onebox.evaluate.metrics import bleu, contains, corpus_bleu, exact_match, keywords_hit, rouge_l

METRICS: tuple[str, ...] = ("accuracy", "accuracy_strict", "contains", "exact_match", "rouge_l", "bleu")
"""Per-question scores, averaged in aggregates. ``accuracy`` is the keywords hit as the demo set
defines it (substring); ``accuracy_strict`` also requires word boundaries, so "last 12 years"
does not count as the keyword "2 years"."""

MAX_PROBLEMS = 50
"""Bad rows listed in the error (the count says how many there were in all)."""


@dataclass(frozen=True, slots=True)
class Question:
    """One held-out question with its reference answer and the keywords a correct answer holds."""

    id: str
    lang: str
    question: str
    answer: str
    keywords: tuple[str, ...]
    fact_ids: tuple[str, ...] = ()
    line: int | None = None


def load_questions(path: Path) -> list[Question]:
    """Read a held-out JSONL file; any bad row raises :class:`InvalidInputError` listing them all.

    Each line is an object with ``id``, ``lang``, ``question``, ``answer`` (non-empty strings),
    ``keywords`` (a non-empty list of non-empty strings) and optionally ``fact_ids`` (strings).
    Blank lines are skipped; ids must be unique.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{path} does not exist or is not a file", path=str(path))
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EncodingError(
            f"{path.name} is not UTF-8 text (byte {exc.start})",
            problems=[Problem("encoding", str(exc), fix="save the file as UTF-8")],
        ) from exc
    questions: list[Question] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            question = _parse_row(raw, number)
        except _BadRow as bad:
            problems.append(Problem(bad.field, bad.reason, line=number))
            continue
        if question.id in seen:
            problems.append(
                Problem(
                    "id", f"duplicate id {question.id!r} (first on line {seen[question.id]})", line=number
                )
            )
            continue
        seen[question.id] = number
        questions.append(question)
    if problems:
        raise InvalidInputError(
            f"{path.name}: {len(problems)} bad row(s); fix them and retry",
            problems=problems[:MAX_PROBLEMS],
            bad_rows=len(problems),
        )
    if not questions:
        raise EmptyInputError(f"{path.name} holds no questions")
    return questions


class _BadRow(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def _parse_row(raw: str, line: int) -> Question:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _BadRow("row", f"invalid JSON: {exc.msg} (column {exc.colno})") from exc
    if not isinstance(data, dict):
        raise _BadRow("row", f"expected a JSON object, got {type(data).__name__}")
    values: dict[str, str] = {}
    for name in ("id", "lang", "question", "answer"):
        value = data.get(name)
        if value is None:
            raise _BadRow(name, f"{name} is missing")
        if not isinstance(value, str):
            raise _BadRow(name, f"{name} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise _BadRow(name, f"{name} is empty")
        values[name] = value.strip() if name in ("id", "lang") else value
    keywords = _string_list(data.get("keywords"), "keywords", required=True)
    fact_ids = _string_list(data.get("fact_ids", []), "fact_ids", required=False)
    return Question(
        id=values["id"],
        lang=values["lang"],
        question=values["question"],
        answer=values["answer"],
        keywords=keywords,
        fact_ids=fact_ids,
        line=line,
    )


def _string_list(value: Any, name: str, *, required: bool) -> tuple[str, ...]:
    if value is None:
        if required:
            raise _BadRow(name, f"{name} is missing")
        return ()
    if not isinstance(value, list):
        raise _BadRow(name, f"{name} must be a list of strings, got {type(value).__name__}")
    if required and not value:
        raise _BadRow(name, f"{name} is empty; a question needs at least one keyword to be scored")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise _BadRow(f"{name}[{i}]", f"{name}[{i}] must be a non-empty string")
    return tuple(value)


@dataclass(slots=True)
class EvalReport:
    """Scores of one model's answers: one row per question plus aggregates overall and by language.

    An aggregate holds ``n``, the mean of each of :data:`METRICS` and ``corpus_bleu``.
    """

    rows: list[dict[str, Any]]
    overall: dict[str, Any]
    by_lang: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        """Rebuild a report stored as JSON (e.g. an evaluation job's result)."""
        return cls(
            rows=list(data["rows"]), overall=dict(data["overall"]), by_lang=dict(data.get("by_lang", {}))
        )


def score(questions: Sequence[Question], answers: Sequence[str]) -> EvalReport:
    """Score ``answers[i]`` against ``questions[i]``."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    rows = [
        {
            "id": q.id,
            "lang": q.lang,
            "question": q.question,
            "reference": q.answer,
            "keywords": list(q.keywords),
            "fact_ids": list(q.fact_ids),
            "prediction": a,
            "accuracy": keywords_hit(a, q.keywords),
            "accuracy_strict": keywords_hit(a, q.keywords, word_boundaries=True),
            "contains": contains(a, q.answer),
            "exact_match": exact_match(a, q.answer),
            "rouge_l": rouge_l(a, q.answer),
            "bleu": bleu(a, q.answer),
        }
        for q, a in zip(questions, answers, strict=True)
    ]
    langs = sorted({r["lang"] for r in rows})
    return EvalReport(
        rows=rows,
        overall=aggregate(rows),
        by_lang={lang: aggregate([r for r in rows if r["lang"] == lang]) for lang in langs},
    )


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means of the per-question metrics (booleans count as 0/1), ``correct`` counts and corpus BLEU."""
    n = len(rows)
    out: dict[str, Any] = {
        "n": n,
        "correct": sum(1 for r in rows if r["accuracy"]),
        "correct_strict": sum(1 for r in rows if r["accuracy_strict"]),
    }
    for metric in METRICS:
        out[metric] = sum(float(r[metric]) for r in rows) / n if n else 0.0
    out["corpus_bleu"] = (
        corpus_bleu([r["prediction"] for r in rows], [r["reference"] for r in rows]) if n else 0.0
    )
    return out
