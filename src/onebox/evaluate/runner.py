"""The one call an evaluation job makes: load a model, score perplexity and held-out questions.

Inputs are read and validated before the model is loaded, so a bad file fails in milliseconds
instead of after a model load. The result is a JSON-serialisable dict; comparing two of them
(base vs tuned) is :func:`onebox.evaluate.report.side_by_side` on their ``heldout`` reports.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from onebox.data.schema import Example
from onebox.errors import InvalidInputError, Problem
from onebox.evaluate.heldout import EvalReport, load_questions, score
from onebox.progress import ProgressFn, null_progress

MAX_EVAL_FILE_BYTES = 512 * 1024 * 1024
"""Largest validation file read (matching the default import limit)."""


def load_examples(path: Path) -> list[Example]:
    """Examples from a dataset split (Parquet written by the importer) or any importable file.

    Files not written by the importer go through the importer's readers and schema detection;
    any invalid row is an error here (evaluation data should be clean: import it first).
    """
    from onebox.data.parquet import read_examples
    from onebox.data.readers import read_records
    from onebox.data.schema import detect_schema, normalize

    path = Path(path)
    if path.suffix.lower() == ".parquet":
        try:
            return read_examples(path)
        except InvalidInputError:
            pass  # a Parquet file of another shape: read it like any other table below
    result = read_records(path, max_bytes=MAX_EVAL_FILE_BYTES)
    schema = detect_schema(result.records, columns=result.columns)
    examples, errors = normalize(result.records, schema, coerce_scalars=result.columns is not None)
    errors = result.errors + errors
    if errors:
        raise InvalidInputError(
            f"{path.name}: {len(errors)} invalid row(s); import the file as a dataset to clean it, "
            "or fix the rows",
            problems=[Problem(e.field or "row", e.reason, line=e.line) for e in errors[:50]],
        )
    return examples


def evaluate_model(
    model_dir: Path,
    adapter_dir: Path | None = None,
    *,
    val_file: Path | None = None,
    heldout_file: Path | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    max_seq_len: int = 1024,
    system: str | None = None,
    dtype: str = "auto",
    threads: int | None = None,
    progress: ProgressFn = null_progress,
) -> dict[str, Any]:
    """Evaluate one model (with optional adapter); return a JSON-serialisable result.

    ``perplexity`` (on ``val_file``, assistant tokens only) and ``heldout`` (an
    :class:`EvalReport` as dict, on ``heldout_file``) are None when their file is not given.
    ``timings`` holds seconds for each stage. ``system`` is an optional system prompt for the
    held-out questions (None keeps the chat template's default). ``threads`` caps torch's CPU
    threads for this process (give the job's share of cores when other jobs share the machine).
    """
    import torch

    from onebox.evaluate.generation import generate_answers
    from onebox.evaluate.loading import load_for_eval
    from onebox.evaluate.perplexity import perplexity

    if val_file is None and heldout_file is None:
        raise InvalidInputError(
            "nothing to evaluate: give a validation file, a held-out question file, or both",
            problems=[Problem("val_file", "missing"), Problem("heldout_file", "missing")],
        )
    if threads is not None:
        if threads < 1:
            raise InvalidInputError("threads must be at least 1", problems=[Problem("threads", "< 1")])
        torch.set_num_threads(threads)
    started = time.perf_counter()
    examples = load_examples(Path(val_file)) if val_file is not None else None
    questions = load_questions(Path(heldout_file)) if heldout_file is not None else None

    timings: dict[str, float] = {}
    progress("load", 0, 1)
    t = time.perf_counter()
    model, tokenizer = load_for_eval(Path(model_dir), Path(adapter_dir) if adapter_dir else None, dtype)
    timings["load_s"] = time.perf_counter() - t
    progress("load", 1, 1)

    ppl: dict[str, Any] | None = None
    if examples is not None:
        t = time.perf_counter()
        ppl = perplexity(
            model, tokenizer, examples, max_seq_len=max_seq_len, batch_size=batch_size, progress=progress
        )
        timings["perplexity_s"] = time.perf_counter() - t

    report: EvalReport | None = None
    if questions is not None:
        t = time.perf_counter()
        answers = generate_answers(
            model,
            tokenizer,
            [q.question for q in questions],
            system=system,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress,
        )
        timings["generation_s"] = time.perf_counter() - t
        report = score(questions, answers)
    timings["total_s"] = time.perf_counter() - started

    first = next(model.parameters())
    return {
        "model_dir": str(model_dir),
        "adapter_dir": str(adapter_dir) if adapter_dir else None,
        "dtype": str(first.dtype).removeprefix("torch."),
        "device": str(first.device),
        "threads": torch.get_num_threads(),
        "settings": {
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "max_seq_len": max_seq_len,
            "system": system,
            "decoding": "greedy",
        },
        "perplexity": ppl,
        "heldout": report.as_dict() if report is not None else None,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
