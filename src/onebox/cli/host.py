"""``onebox host ...``: this box's identity for sealed packages, and the issuers it trusts."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from onebox.cli.output import console, print_json
from onebox.cli.state import JsonOpt, get_app
from onebox.services import sealed

app = typer.Typer(
    help="This host's fingerprint and keys (to receive sealed models) and trusted licence issuers.",
    no_args_is_help=True,
)


@app.command()
def fingerprint(json_out: JsonOpt = False) -> None:
    """Print this host's id (give it to whoever seals a model for you) and its issuer key."""
    info = sealed.host_info(get_app())
    if json_out:
        print_json(info)
        return
    console.print(f"host id      {info['host_id']}", highlight=False, soft_wrap=True)
    console.print(
        f"machine      {info['machine_fingerprint']} (from {', '.join(info['fingerprint_sources'])})",
        highlight=False,
    )
    console.print(f"issuer key   {info['issuer_key']}", highlight=False, soft_wrap=True)
    console.print(
        "[dim]Use policies take the machine fingerprint (--host); `onebox models export --sealed "
        "--to-host` takes the host id; importers trust the issuer key.[/]"
    )


@app.command()
def trust(
    key: Annotated[
        str, typer.Argument(help="Issuer key ed25519:... (from `onebox host fingerprint` there).")
    ],
    name: Annotated[str, typer.Option(help="A label for the issuer.")] = "",
    remove: Annotated[bool, typer.Option("--remove", help="Stop trusting the key.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Accept (or with --remove, stop accepting) licences signed by an issuer key."""
    a = get_app()
    out = sealed.untrust(a, key) if remove else sealed.trust(a, key, name)
    if json_out:
        print_json(out)
    elif remove:
        console.print(f"no longer trusting {out['key']}", highlight=False)
    else:
        console.print(f"trusting licences signed by {out['key']}", highlight=False)


@app.command()
def trusted(json_out: JsonOpt = False) -> None:
    """List the issuer keys whose licences this box accepts."""
    rows = sealed.trusted(get_app())
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("no trusted issuers; add one with `onebox host trust <key>`")
        return
    table = Table("issuer key", "name", "added")
    for r in rows:
        table.add_row(r["key"], r.get("name") or "-", r.get("added_at") or "-")
    console.print(table)
