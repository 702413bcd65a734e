"""``onebox events``: the event log with its alerts (firing, resolved, acknowledged),
``onebox events ack <id>`` to acknowledge an alert, ``onebox events rules`` for the alert rules
in force (and to check a rules file before ``onebox serve`` reads it).

``onebox serve`` evaluates the rules after every monitoring pass; these commands read and write
the store, so they work while it runs and after it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from onebox.cli.output import console, print_json
from onebox.cli.state import JsonOpt, get_app, settings
from onebox.monitor.rules import load_rules
from onebox.monitor.signals import SIGNALS
from onebox.services import events

app = typer.Typer(
    help="Events and alerts: list them, acknowledge an alert, show the alert rules.",
    invoke_without_command=True,
)

SEVERITY_STYLE = {"info": "dim", "warning": "yellow", "error": "red", "critical": "bold red"}
STATE_STYLE = {"firing": "bold red", "resolved": "green"}


def _time(iso: str | None) -> str:
    return iso[:19].replace("T", " ") if iso else "-"


def _state(e: dict[str, Any]) -> str:
    state = e.get("state")
    if state is None:
        return "-"
    text = f"[{STATE_STYLE[state]}]{state}[/]"
    return text + (" [cyan]ack[/]" if e.get("acknowledged") else "")


def _resource(e: dict[str, Any]) -> str:
    out = e["resource_type"] + (f":{e['resource_id']}" if e.get("resource_id") else "")
    if e.get("level") == "component" and e.get("resource"):
        out = f"{e['resource']} on {e.get('node')}"
    if e.get("project"):
        out += f" [{e['project']}]"
    return escape(out)


@app.callback()
def list_command(
    ctx: typer.Context,
    severity: Annotated[
        str | None, typer.Option(help="The least severity shown: info, warning, error, critical.")
    ] = None,
    state: Annotated[str, typer.Option(help="firing, resolved (alerts only) or all (every event).")] = "all",
    alerts: Annotated[bool, typer.Option("--alerts", help="Only alerts (with --state all).")] = False,
    resource: Annotated[str | None, typer.Option(help="A type (job) or type:id (job:job_ab12).")] = None,
    since: Annotated[str | None, typer.Option(help="-1h, -7d, Unix seconds or ISO 8601.")] = None,
    limit: Annotated[int, typer.Option(help="Most events shown (1-1000).")] = 50,
    all_projects: Annotated[
        bool, typer.Option("--all-projects", help="Every project's events (default: the current one).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Events newest first: alerts with their state and acknowledgement, and what happened to
    jobs, deployments and models. Node and cluster alerts are shown to operators."""
    if ctx.invoked_subcommand is not None:
        return
    rows = events.list_events(
        get_app(),
        severity=severity,
        state=state,
        alerts_only=alerts,
        resource=resource,
        since=since,
        limit=limit,
        all_projects=all_projects,
    )
    if json_out:
        print_json(rows)
        return
    table = Table("time (UTC)", "severity", "state", "resource", "message", "id")
    for e in rows:
        sev = e["severity"]
        message = escape(e["message"])
        ack = e.get("acknowledged")
        if ack:
            note = f": {ack['note']}" if ack.get("note") else ""
            message += f"\n[cyan]acknowledged by {escape(ack['by'] + ' at ' + _time(ack['at']) + note)}[/]"
        if e.get("resolution"):
            message += f"\n[green]resolved {_time(e.get('resolved_at'))}: {escape(e['resolution'])}[/]"
        table.add_row(
            _time(e["time"]),
            f"[{SEVERITY_STYLE.get(sev, 'white')}]{sev}[/]",
            _state(e),
            _resource(e),
            message,
            e["id"],
        )
    console.print(table)
    if not rows:
        console.print("no events matched")


@app.command("ack")
def ack_command(
    event_id: Annotated[str, typer.Argument(help="The alert's id (from `onebox events`).")],
    note: Annotated[str, typer.Option(help="What is being done about it.")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Acknowledge an alert: it keeps firing until its condition clears, but everyone sees who is on it."""
    out = events.acknowledge(get_app(), event_id, note)
    if json_out:
        print_json(out)
        return
    console.print(f"acknowledged {out['id']} ({out.get('rule')}): {out['message']}")


@app.command("rules")
def rules_command(
    file: Annotated[
        Path | None,
        typer.Option("--file", help="Check this rules file instead of ONEBOX_ALERT_RULES_FILE."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """The alert rules in force: shipped ones merged with the operator's file (exit 4 listing every
    problem when the file is invalid)."""
    s = settings()
    ruleset = load_rules(file or s.alert_rules_file, s.alert_webhooks)
    if json_out:
        print_json(
            {
                "sources": list(ruleset.sources),
                "rules": [r.as_dict() for r in ruleset.rules],
                "webhooks": [{"webhook": h.label, "min_severity": h.min_severity} for h in ruleset.webhooks],
            }
        )
        return
    table = Table("rule", "condition", "for", "clears", "severity", "on", title=" + ".join(ruleset.sources))
    for r in ruleset.rules:
        cond = f"{r.metric} {r.op} {r.threshold:g}"
        derived = " (derived)" if r.metric in SIGNALS else ""
        clears = (f"{r.clear:g}" if r.clear is not None else "-") + (
            f" for {r.as_dict()['clear_for']}" if r.clear_for_s else ""
        )
        table.add_row(
            r.name,
            cond + derived,
            r.as_dict()["for"],
            clears,
            r.severity,
            "[green]yes[/]" if r.enabled else "[dim]off[/]",
        )
    console.print(table)
    for h in ruleset.webhooks:
        console.print(f"webhook {h.label} (severity {h.min_severity} and above)")
