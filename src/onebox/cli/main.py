"""``onebox``: entry point, error handling and the top-level commands (init, gc, verify).

Exit codes: 0 success, 1 unexpected error, 2 usage error, 3 not found, 4 invalid input,
5 conflict (duplicate, in use), 6 integrity (corrupted or missing artifact), 7 missing optional
dependency, 8 metadata store unreachable, 9 model could not be loaded, 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import click
import typer
from rich.table import Table

from onebox import __version__
from onebox.cli import audit as audit_cli
from onebox.cli import data as data_cli
from onebox.cli import encryption as encryption_cli
from onebox.cli import events as events_cli
from onebox.cli import host as host_cli
from onebox.cli import identity as identity_cli
from onebox.cli import jobs as jobs_cli
from onebox.cli import kb as kb_cli
from onebox.cli import metrics as metrics_cli
from onebox.cli import models as models_cli
from onebox.cli import policies as policies_cli
from onebox.cli import quotas as quotas_cli
from onebox.cli import serve as serve_cli
from onebox.cli import topology as topology_cli
from onebox.cli.evaluate import eval_command
from onebox.cli.output import console, err_console, human_size, print_json, progress_bar
from onebox.cli.search import search_command
from onebox.cli.state import JsonOpt, get_app, settings
from onebox.cli.top import top_command
from onebox.cli.train import train_command
from onebox.errors import OneboxError

app = typer.Typer(
    name="onebox",
    help="onebox: train, register, serve and watch LLMs on one box (训推一体机).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(models_cli.app, name="models")
app.add_typer(data_cli.app, name="data")
app.add_typer(jobs_cli.app, name="jobs")
app.add_typer(kb_cli.app, name="kb")
app.add_typer(policies_cli.app, name="policies")
app.add_typer(host_cli.app, name="host")
app.add_typer(identity_cli.users_app, name="users")
app.add_typer(identity_cli.projects_app, name="projects")
app.add_typer(identity_cli.keys_app, name="keys")
app.add_typer(audit_cli.app, name="audit")
app.add_typer(encryption_cli.app, name="encryption")
app.add_typer(quotas_cli.app, name="quotas")
app.add_typer(metrics_cli.app, name="metrics")
app.add_typer(topology_cli.app, name="topology")
app.add_typer(events_cli.app, name="events")
app.command("top")(top_command)
app.command("search")(search_command)
app.command("eval")(eval_command)
app.command("train")(train_command)
app.command("serve")(serve_cli.serve_command)
app.command("deploy")(serve_cli.deploy_command)
app.command("undeploy")(serve_cli.undeploy_command)
app.command("chat")(serve_cli.chat_command)
app.add_typer(serve_cli.deployments_app, name="deployments")


@app.command()
def version() -> None:
    """Print the onebox version."""
    console.print(__version__)


@app.command()
def init(
    builtins: Annotated[bool, typer.Option(help="Install the built-in models (converted once).")] = True,
    json_out: JsonOpt = False,
) -> None:
    """Create the home folder, migrate the metadata store and install the built-in models."""
    from onebox.services import system

    with progress_bar(enabled=not json_out) as progress:
        prefixed = {}

        def progress_for(key: str):  # type: ignore[no-untyped-def]
            return prefixed.setdefault(key, lambda st, d, t: progress(f"{key} {st}", d, t))

        app_, info = system.init(settings(), builtins=builtins, progress_for=progress_for)
    app_.close()
    if json_out:
        print_json(info)
        return
    console.print(f"[green]onebox is ready[/] at {info['home']}")
    console.print(f"  database   {info['database']} (schema {info['schema_revision']})")
    console.print(f"  artifacts  {info['artifacts']}")
    for b in info["builtins"]:
        state = "installed" if b["created"] else "already installed"
        console.print(f"  model      {b['name']}:{b['version']} {state}")
    admin = info["admin"]
    if admin["created"]:
        console.print(f"  admin      {admin['username']} created")
        if admin["password"]:
            console.print(
                f"             generated password [bold]{admin['password']}[/] (shown once; "
                "change it at first login, or set ONEBOX_ADMIN_PASSWORD before `onebox init`)"
            )


@app.command()
def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would be freed.")] = False,
    grace: Annotated[
        int | None, typer.Option(help="Keep unreferenced blobs younger than this many seconds.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Delete blobs that no model or dataset version references any more."""
    from onebox.services import artifacts

    report = artifacts.gc(get_app(), dry_run=dry_run, grace_seconds=grace)
    if json_out:
        print_json(report.as_dict())
        return
    verb = "would free" if dry_run else "freed"
    console.print(
        f"{verb} {human_size(report.bytes_freed)}: {report.blobs_deleted} unreferenced blobs, "
        f"{report.orphans_deleted} orphan objects, {report.checkouts_deleted} stale checkouts; "
        f"kept {report.blobs_kept} blobs"
    )


@app.command()
def verify(json_out: JsonOpt = False) -> None:
    """Re-hash every stored blob and report any that are missing or corrupted (exit 6 if so)."""
    from onebox.services import artifacts

    with progress_bar(enabled=not json_out) as progress:
        result = artifacts.verify_all(get_app(), progress)
    if json_out:
        print_json(result)
    else:
        table = Table("blob", "problem")
        for d, code in result["bad"].items():
            table.add_row(d, code)
        if result["bad"]:
            console.print(table)
        console.print(f"checked {result['checked']} blobs, {len(result['bad'])} bad")
    if result["bad"]:
        raise typer.Exit(6)


def _report_error(exc: OneboxError) -> None:
    if "--json" in sys.argv:
        print_json({"error": exc.as_dict()})
        return
    err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
    for p in exc.problems:
        err_console.print(f"  - {p}", highlight=False)


def main() -> None:
    try:
        # Without standalone mode click returns the code of typer.Exit instead of exiting.
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except OneboxError as exc:
        _report_error(exc)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug or an unwrapped library error: one line, traceback on request
        if os.environ.get("ONEBOX_DEBUG"):
            raise
        err_console.print(
            f"[bold red]unexpected error:[/] {type(exc).__name__}: {exc} "
            "(set ONEBOX_DEBUG=1 for the traceback)",
            highlight=False,
        )
        sys.exit(1)
