"""``onebox eval``: evaluate model versions (perplexity, held-out questions), side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from onebox.cli.output import console, print_json
from onebox.cli.state import JsonOpt, get_app, settings


def print_eval_result(result: dict[str, Any]) -> None:
    """Aggregates per model (and per language), then the first questions side by side."""
    table = Table("model", "perplexity", "accuracy", "zh", "en", "contains", "ROUGE-L", "BLEU", "gen s")
    for ref, r in result["models"].items():
        ppl = r.get("perplexity") or {}
        held = r.get("heldout") or {}
        overall = held.get("overall") or {}
        by_lang = held.get("by_lang") or {}

        def acc(agg: dict[str, Any] | None) -> str:
            return f"{agg['correct']}/{agg['n']} ({agg['accuracy']:.0%})" if agg else "-"

        table.add_row(
            ref,
            f"{ppl['perplexity']:.2f}" if ppl else "-",
            acc(overall or None),
            acc(by_lang.get("zh")),
            acc(by_lang.get("en")),
            f"{overall['contains']:.0%}" if overall else "-",
            f"{overall['rouge_l']:.3f}" if overall else "-",
            f"{overall['corpus_bleu']:.3f}" if overall else "-",
            f"{r['timings'].get('generation_s', 0):.0f}",
        )
    console.print(table)
    sbs = result.get("side_by_side")
    if sbs:
        from onebox.evaluate.report import render_text

        console.print(render_text(sbs, max_questions=8), highlight=False, markup=False)


def eval_command(
    models: Annotated[
        list[str], typer.Argument(help="Model versions (name, name:V, name@alias); first = baseline.")
    ],
    data: Annotated[
        str | None, typer.Option(help="Dataset version whose validation split gives perplexity.")
    ] = None,
    heldout: Annotated[
        Path | None, typer.Option(help="Held-out questions JSONL (id, lang, question, answer, keywords).")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest generated answer.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Questions generated together.")] = 8,
    priority: Annotated[int, typer.Option(help="Queue priority (higher first).")] = 0,
    detach: Annotated[bool, typer.Option("--detach", help="Queue the job and return at once.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Evaluate model versions on a dataset's validation split and/or held-out questions."""
    from onebox.cli.jobs import raise_for_outcome, watch
    from onebox.jobs.executor import LocalExecutor
    from onebox.services import evaluation, jobs

    app = get_app()
    job = evaluation.submit_eval(
        app,
        models,
        data=data,
        heldout=heldout,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        priority=priority,
    )
    if detach:
        info = jobs.job_dict(job)
        print_json(info) if json_out else console.print(f"queued {job.id}; watch it with `onebox jobs show`")
        return
    info = watch(app, job.id, LocalExecutor(settings()), enabled=not json_out, cancel_on_interrupt=True)
    raise_for_outcome(info)
    result = jobs.full_result(app, info["id"], info["result"]) or {}  # opens a sealed result
    if json_out:
        print_json({"job": info["id"], **result})
    else:
        print_eval_result(result)
