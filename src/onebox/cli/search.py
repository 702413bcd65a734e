"""``onebox search <query>``: one query over every resource and job log of the project."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from onebox.cli.output import console, print_json, progress_bar
from onebox.cli.state import JsonOpt, get_app
from onebox.errors import InvalidInputError, Problem
from onebox.services import search

TYPE_STYLE = {"log": "dim", "event": "yellow", "node": "cyan", "user": "magenta"}


def _related(rel: list[dict[str, Any]], width: int = 3) -> str:
    parts = [f"{r['relation']}: {r['name'] or r['id']}" for r in rel[:width]]
    if len(rel) > width:
        parts.append(f"+{len(rel) - width} more")
    return "\n".join(parts)


def search_command(
    query: Annotated[str | None, typer.Argument(help="What to search for (Chinese or English).")] = None,
    types: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            "-t",
            help="Only this type (repeatable): model, model_version, dataset, "
            "dataset_version, job, deployment, knowledge_base, kb_document, node, event, user, log.",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="Most hits shown (1-100).")] = 20,
    all_projects: Annotated[
        bool, typer.Option("--all-projects", help="Every project's resources (administrators).")
    ] = False,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Index everything again first (after a restore).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Find models, versions, datasets, jobs, deployments, knowledge bases and their documents, nodes,
    events, users and job log lines; ranked, each with its related resources."""
    app = get_app()
    if rebuild:
        with progress_bar(enabled=not json_out) as progress:
            done = search.rebuild(app, progress)
        if query is None:
            if json_out:
                print_json(done)
            else:
                console.print(f"indexed {done['documents']} documents in {done['seconds']} s")
            return
    if query is None:
        raise InvalidInputError(
            "no query given", problems=[Problem("query", "is missing", "onebox search <words>")]
        )
    result = search.search(app, query, types=types, limit=limit, all_projects=all_projects)
    if json_out:
        print_json(result)
        return
    hits = result["hits"]
    if not hits:
        console.print(f"no hits for {query!r} (searched for: {', '.join(result['terms']) or 'no words'})")
        return
    table = Table(
        "type",
        "name",
        "detail",
        "related",
        "score",
        title=f"{len(hits)} hit{'' if len(hits) == 1 else 's'} for {query!r}",
    )
    for h in hits:
        name = h["name"] + (f" #{h['line']}" if h.get("line") is not None else "")
        if h["status"]:
            name += f" [{h['status']}]"
        if all_projects and h["project"]:
            name += f" ({h['project']})"
        kind = Text(h["type"], style=TYPE_STYLE.get(h["type"], "bold"))
        table.add_row(kind, name, h["detail"], _related(h["related"]), f"{h['score']:.2f}")
    console.print(table)
    note = f"{result['took_ms']:.0f} ms"
    if result["approximate"]:
        note += "; very common words: the best and newest candidates were ranked"
    console.print(f"[dim]{note}[/]")
