"""``onebox policies ...``: who may use a model or dataset version, when, and on which machines."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from onebox.cli.output import console, print_json
from onebox.cli.state import JsonOpt, get_app
from onebox.errors import InvalidInputError, PolicyDeniedError, Problem
from onebox.services import policies

app = typer.Typer(
    help="Use policies on model and dataset versions: allowed projects, users and roles, validity "
    "dates, time-of-day windows and hosts. Enforced on deploy, load, train, export and download.",
    no_args_is_help=True,
)

RefArg = Annotated[str, typer.Argument(help="Version: name:N (or name@alias for models; name = latest).")]
KindOpt = Annotated[str, typer.Option("--kind", help="model or dataset.")]


def _rules_table(rules: dict[str, Any]) -> Table:
    table = Table("condition", "allowed")
    rows = [
        ("projects", ", ".join(rules.get("allowed_projects") or []) or "any"),
        ("users", ", ".join(rules.get("allowed_users") or []) or "any"),
        ("roles", ", ".join(rules.get("allowed_roles") or []) or "any"),
        ("valid from", rules.get("valid_from") or "-"),
        ("valid until", rules.get("valid_until") or "-"),
        (
            "windows",
            "; ".join(
                f"{','.join(w['days']) or 'daily'} {w['start']}-{w['end']} {w['timezone']}"
                for w in rules.get("windows") or []
            )
            or "any time",
        ),
        ("hosts", ", ".join(rules.get("hosts") or []) or "any"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def _print_policy(out: dict[str, Any]) -> None:
    pol = out["policy"]
    if pol is None:
        console.print(
            f"{out['resource']} has no use policy: anyone with access may use it, anywhere, any time"
        )
        return
    console.print(f"[bold]{out['resource']}[/] use policy (set by {pol['created_by'] or '-'})")
    console.print(_rules_table(pol["rules"]))


@app.command("set")
def set_(
    ref: RefArg,
    kind: KindOpt = "model",
    allow_project: Annotated[list[str] | None, typer.Option(help="Allowed project (repeatable).")] = None,
    allow_user: Annotated[
        list[str] | None, typer.Option(help="Allowed user name or id (repeatable).")
    ] = None,
    allow_role: Annotated[
        list[str] | None, typer.Option(help="Allowed role: viewer, developer, operator, admin (repeatable).")
    ] = None,
    valid_from: Annotated[
        str | None, typer.Option(help="Usable from: 2025-06-01 (UTC day) or ISO date-time.")
    ] = None,
    valid_until: Annotated[
        str | None, typer.Option(help="Usable until: 2025-06-30 (through that UTC day) or ISO date-time.")
    ] = None,
    window: Annotated[
        list[str] | None,
        typer.Option(
            help='Time window, e.g. "mon-fri 09:00-18:00 Asia/Shanghai" (repeatable; may cross midnight).'
        ),
    ] = None,
    host: Annotated[
        list[str] | None, typer.Option(help="Allowed machine fingerprint or host id (repeatable).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Set (replace) the use policy of a version; every condition left out is unrestricted."""
    rules: dict[str, Any] = {
        "allowed_projects": allow_project or [],
        "allowed_users": allow_user or [],
        "allowed_roles": allow_role or [],
        "valid_from": valid_from,
        "valid_until": valid_until,
        "windows": window or [],
        "hosts": host or [],
    }
    out = policies.set_policy(get_app(), kind, ref, rules)
    if json_out:
        print_json(out)
        return
    _print_policy(out)


@app.command()
def show(ref: RefArg, kind: KindOpt = "model", json_out: JsonOpt = False) -> None:
    """Show the use policy of a version."""
    out = policies.show_policy(get_app(), kind, ref)
    if json_out:
        print_json(out)
        return
    _print_policy(out)


@app.command()
def clear(ref: RefArg, kind: KindOpt = "model", json_out: JsonOpt = False) -> None:
    """Remove the use policy of a version (it becomes unrestricted)."""
    out = policies.clear_policy(get_app(), kind, ref)
    if json_out:
        print_json(out)
        return
    console.print(
        f"cleared the use policy of {out['resource']}" if out["cleared"] else f"{out['resource']} had none"
    )


@app.command()
def check(
    ref: RefArg,
    kind: KindOpt = "model",
    action: Annotated[
        str | None, typer.Option(help="Action to try (default model.deploy / dataset.train).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Dry run: would you be allowed to use the version here and now? Exit 13 if not."""
    action = action or ("model.deploy" if kind == "model" else "dataset.train")
    if action not in policies.ACTIONS:
        raise InvalidInputError(
            "invalid action",
            problems=[
                Problem("action", f"{action!r} is not an action", f"use one of {', '.join(policies.ACTIONS)}")
            ],
        )
    out = policies.check(get_app(), kind, ref, action)
    if json_out:
        print_json(out)
    elif out["allowed"]:
        console.print(f"[green]allowed[/]: {action} of {out['resource']} at {out['at']} on {out['host']}")
    else:
        console.print(f"[red]denied[/] ({out['condition']}): {out['reason']}\n  fix: {out['fix']}")
    if not out["allowed"]:
        raise typer.Exit(PolicyDeniedError.exit_code)
