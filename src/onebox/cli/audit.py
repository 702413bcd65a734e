"""``onebox audit list|verify``: read and check the hash-chained audit log."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import typer
from rich.table import Table

from onebox.cli.output import console, print_json
from onebox.cli.state import JsonOpt, get_app
from onebox.security.audit_query import AuditFilter, list_records

app = typer.Typer(
    help="The audit log: list records with filters, verify the hash chain.", no_args_is_help=True
)


@app.command("list")
def list_(
    actor: Annotated[str | None, typer.Option(help="Actor (prefix), e.g. admin or local:.")] = None,
    action: Annotated[str | None, typer.Option(help="Action, or a prefix ending in '.', e.g. auth.")] = None,
    outcome: Annotated[str | None, typer.Option(help="ok, denied or failed.")] = None,
    since: Annotated[datetime | None, typer.Option(help="From this time (UTC unless it says).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Before this time.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    json_out: JsonOpt = False,
) -> None:
    """List audit records, newest first."""
    rows = list_records(
        get_app().db,
        AuditFilter(actor=actor, action=action, outcome=outcome, since=since, until=until, limit=limit),
    )
    if json_out:
        print_json(rows)
        return
    table = Table("seq", "time (UTC)", "actor", "action", "outcome", "resource", "source", "details")
    style = {"denied": "red", "failed": "yellow"}
    for r in rows:
        table.add_row(
            str(r["seq"]), r["at"][:19].replace("T", " "), r["actor"], r["action"],
            f"[{style.get(r['outcome'], 'green')}]{r['outcome']}[/]",
            f"{r['resource_type']} {r['resource_id']}".strip(), r["source"],
            json.dumps(r["details"], ensure_ascii=False)[:80],
        )  # fmt: skip
    console.print(table)


@app.command("verify")
def verify(json_out: JsonOpt = False) -> None:
    """Check every record's hash and link; exit 6 if any was edited or deleted."""
    report = get_app().audit_log.verify()
    if json_out:
        print_json(report.as_dict())
    elif report.ok:
        console.print(f"[green]audit log intact[/]: {report.checked} records, head {report.head_seq}")
    else:
        console.print(
            f"[red]audit log damaged[/]: {len(report.problems)} problems in {report.checked} records"
        )
        for p in report.problems:
            console.print(f"  record {p.seq}: {p.kind}: {p.message}")
    if not report.ok:
        raise typer.Exit(6)
