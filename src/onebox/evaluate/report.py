"""Side-by-side comparison of several models' held-out reports (e.g. base vs tuned).

The first model given is the baseline; each other model gets wins (it is right where the
baseline is wrong) and losses (the reverse), overall and by language, with the question ids,
so a user sees not just that accuracy moved but which questions moved it. The result is plain
JSON-serialisable data: the CLI renders it with rich, the API returns it, :func:`render_text`
prints it plainly.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from onebox.evaluate.heldout import METRICS, EvalReport

AGGREGATE_METRICS: tuple[str, ...] = (*METRICS, "corpus_bleu")
_PERCENT = ("accuracy", "accuracy_strict", "contains", "exact_match")


def side_by_side(reports: dict[str, EvalReport]) -> dict[str, Any]:
    """Compare reports on the same questions; raises ValueError if their question ids differ.

    Returns ``{models, baseline, metrics, aggregates, comparisons, questions}``:
    ``aggregates[scope][model]`` for scope ``overall`` and each language; ``comparisons[model]``
    with wins/losses against the baseline; ``questions`` one row per question with every
    model's answer, correctness and per-model outcome.
    """
    if not reports:
        raise ValueError("side_by_side needs at least one report")
    names = list(reports)
    baseline = names[0]
    ids = [r["id"] for r in reports[baseline].rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"report {baseline!r} has duplicate question ids")
    for name in names[1:]:
        other = [r["id"] for r in reports[name].rows]
        if sorted(other) != sorted(ids):
            missing = sorted(set(ids) ^ set(other))[:5]
            raise ValueError(
                f"reports {baseline!r} and {name!r} are on different questions (e.g. {', '.join(missing)})"
            )
    by_id = {name: {r["id"]: r for r in rep.rows} for name, rep in reports.items()}
    langs = list(reports[baseline].by_lang)
    aggregates: dict[str, dict[str, Any]] = {"overall": {n: reports[n].overall for n in names}}
    for lang in langs:
        aggregates[lang] = {n: reports[n].by_lang.get(lang, {}) for n in names}

    questions: list[dict[str, Any]] = []
    for qid in ids:
        base_row = by_id[baseline][qid]
        correct = {n: bool(by_id[n][qid]["accuracy"]) for n in names}
        questions.append(
            {
                "id": qid,
                "lang": base_row["lang"],
                "question": base_row["question"],
                "reference": base_row["reference"],
                "keywords": base_row.get("keywords", []),
                "answers": {n: by_id[n][qid]["prediction"] for n in names},
                "correct": correct,
                "rouge_l": {n: by_id[n][qid]["rouge_l"] for n in names},
                "outcome": {n: _outcome(correct[baseline], correct[n]) for n in names[1:]},
            }
        )
    comparisons = {
        n: {
            "against": baseline,
            **_tally(questions, n),
            "by_lang": {lang: _tally([q for q in questions if q["lang"] == lang], n) for lang in langs},
        }
        for n in names[1:]
    }
    return {
        "models": names,
        "baseline": baseline,
        "metrics": list(AGGREGATE_METRICS),
        "aggregates": aggregates,
        "comparisons": comparisons,
        "questions": questions,
    }


def _outcome(base_correct: bool, model_correct: bool) -> str:
    if model_correct and not base_correct:
        return "win"
    if base_correct and not model_correct:
        return "loss"
    return "both_correct" if model_correct else "both_wrong"


def _tally(questions: list[dict[str, Any]], name: str) -> dict[str, Any]:
    out: dict[str, Any] = {"wins": 0, "losses": 0, "both_correct": 0, "both_wrong": 0}
    out["win_ids"], out["loss_ids"] = [], []
    for q in questions:
        outcome = q["outcome"][name]
        key = {"win": "wins", "loss": "losses"}.get(outcome, outcome)
        out[key] += 1
        if outcome in ("win", "loss"):
            out[f"{outcome}_ids"].append(q["id"])
    return out


def _width(text: str) -> int:
    """Columns a string takes in a terminal: CJK and full-width characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int, right: bool = False) -> str:
    gap = " " * max(width - _width(text), 0)
    return gap + text if right else text + gap


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    if _width(text) <= width:
        return text
    out, used = "", 0
    for c in text:
        w = _width(c)
        if used + w > width - 1:
            break
        out, used = out + c, used + w
    return out + "…"


def _fmt(metric: str, agg: dict[str, Any]) -> str:
    if metric not in agg:
        return "-"
    value = agg[metric]
    if metric in ("accuracy", "accuracy_strict"):
        correct = agg.get("correct" if metric == "accuracy" else "correct_strict", 0)
        return f"{value * 100:.1f}% ({correct}/{agg.get('n', 0)})"
    if metric in _PERCENT:
        return f"{value * 100:.1f}%"
    return f"{value:.3f}"


def _no_negative_zero(value: float, digits: int) -> float:
    """Round so that a tiny negative difference prints as +0.000, not -0.000."""
    return round(value, digits) + 0.0


def render_text(sbs: dict[str, Any], *, max_questions: int = 10, answer_width: int = 60) -> str:
    """A plain-text table of :func:`side_by_side` output, then each model's wins and losses.

    Up to ``max_questions`` changed questions are listed per model with both answers clipped
    to ``answer_width`` columns (CJK-aware).
    """
    names: list[str] = sbs["models"]
    baseline: str = sbs["baseline"]
    header = ["scope", "metric", *names]
    if len(names) > 1:
        header += [f"Δ {n}" for n in names[1:]]
    table: list[list[str]] = []
    for scope, per_model in sbs["aggregates"].items():
        n = per_model[baseline].get("n", 0)
        for i, metric in enumerate(sbs["metrics"]):
            row = [f"{scope} (n={n})" if i == 0 else "", metric]
            row += [_fmt(metric, per_model[m]) for m in names]
            for m in names[1:]:
                a, b = per_model[baseline].get(metric), per_model[m].get(metric)
                if a is None or b is None:
                    row.append("-")
                elif metric in _PERCENT:
                    row.append(f"{_no_negative_zero((b - a) * 100, 1):+.1f} pts")
                else:
                    row.append(f"{_no_negative_zero(b - a, 3):+.3f}")
            table.append(row)
    widths = [max(_width(r[c]) for r in [header, *table]) for c in range(len(header))]
    lines = ["  ".join(_pad(h, w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in table:
        cells = [_pad(c, w, right=j >= 2) for j, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    for name, cmp in sbs.get("comparisons", {}).items():
        lines.append("")
        lines.append(
            f"{name} vs {cmp['against']}: {cmp['wins']} wins, {cmp['losses']} losses, "
            f"{cmp['both_correct']} both correct, {cmp['both_wrong']} both wrong"
        )
        changed = [q for q in sbs["questions"] if q["outcome"][name] in ("win", "loss")][:max_questions]
        for q in changed:
            mark = "+" if q["outcome"][name] == "win" else "-"
            lines.append(f"  {mark} {q['id']} [{q['lang']}] {_clip(q['question'], answer_width)}")
            label_width = max(_width(baseline), _width(name))
            for m in (baseline, name):
                ok = "ok " if q["correct"][m] else "no "
                answer = _clip(q["answers"][m], answer_width)
                lines.append(f"      {ok}{_pad(m, label_width)}  {answer}")
        hidden = cmp["wins"] + cmp["losses"] - len(changed)
        if hidden > 0:
            lines.append(f"  ... and {hidden} more")
    return "\n".join(lines)
