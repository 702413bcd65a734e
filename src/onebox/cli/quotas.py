"""``onebox quotas show|set``: per-project and per-key limits (requests and tokens per minute on
``/v1``, concurrent jobs, storage) and what is used of them."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from onebox.cli.output import console, human_size, print_json
from onebox.cli.state import JsonOpt, get_app
from onebox.errors import InvalidInputError, Problem
from onebox.security.storage import parse_bytes
from onebox.services import quotas

app = typer.Typer(help="Quotas: requests/tokens per minute, concurrent jobs, storage.", no_args_is_help=True)

NONE_WORDS = {"none", "unlimited", "off", "-"}

ProjectOpt = Annotated[
    str | None, typer.Option("--project", "-p", help="Project (default: the current one).")
]


def _limit(value: str | None, field: str, *, size: bool = False) -> quotas.Setting:
    """``None`` (option not given): unchanged; ``none``/``unlimited``: no limit; else a number."""
    if value is None:
        return quotas.UNCHANGED
    text = value.strip().lower()
    if text in NONE_WORDS:
        return None
    try:
        return parse_bytes(text) if size else int(text.replace("_", ""))
    except ValueError:
        fix = "write e.g. 10GiB, 500MB, or none" if size else "write a whole number, or none for unlimited"
        raise InvalidInputError(
            f"invalid {field}", problems=[Problem(field, f"{value!r} is not a limit", fix)]
        ) from None


def _fmt(value: int | None, *, size: bool = False) -> str:
    if value is None:
        return "[dim]unlimited[/]"
    return human_size(value) if size else f"{value:,}"


def _used(value: Any, *, size: bool = False) -> str:
    if value is None:
        return "[dim]-[/]"
    return human_size(int(value)) if size else f"{value:,}"


@app.command("show")
def show_command(project: ProjectOpt = None, json_out: JsonOpt = False) -> None:
    """Show a project's limits, what is in use now, and its API keys' limits.

    Requests and tokens per minute are counted inside the running gateway only; here they show
    as "-"."""
    out = quotas.show(get_app(), project)
    if json_out:
        print_json(out)
        return
    lim, use = out["limits"], out["usage"]
    table = Table(title=f"quotas of project {out['project']}", title_justify="left")
    table.add_column("quota")
    table.add_column("limit", justify="right")
    table.add_column("used", justify="right")
    table.add_row("requests / minute (/v1)", _fmt(lim["rpm"]), _used(use.get("rpm")))
    table.add_row("tokens / minute (/v1)", _fmt(lim["tpm"]), _used(use.get("tpm")))
    table.add_row("concurrent jobs", _fmt(lim["jobs"]), _used(use["jobs"]))
    table.add_row("storage", _fmt(lim["storage"], size=True), _used(use["storage"], size=True))
    console.print(table)
    detail = use["storage_detail"]
    console.print(
        f"  storage: models {human_size(detail['models'])}, datasets {human_size(detail['datasets'])}, "
        f"documents {human_size(detail['documents'])}",
        highlight=False,
    )
    if out["keys"]:
        keys = Table(title="API keys (the project's limits apply too)", title_justify="left")
        for col in ("id", "prefix", "name", "requests / minute", "tokens / minute"):
            keys.add_column(col)
        for k in out["keys"]:
            keys.add_row(k["id"], k["prefix"], k["name"], _fmt(k["limits"]["rpm"]), _fmt(k["limits"]["tpm"]))
        console.print(keys)


@app.command("set")
def set_command(
    project: ProjectOpt = None,
    key: Annotated[
        str | None, typer.Option("--key", help="Set an API key's limits (id key_... or prefix obx_...).")
    ] = None,
    rpm: Annotated[str | None, typer.Option(help="Requests per minute on /v1; 'none' removes it.")] = None,
    tpm: Annotated[str | None, typer.Option(help="Tokens per minute on /v1; 'none' removes it.")] = None,
    jobs: Annotated[str | None, typer.Option(help="Queued + running jobs of the project at once.")] = None,
    storage: Annotated[
        str | None, typer.Option(help="Bytes of models, datasets and documents, e.g. 10GiB.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Set limits of a project (default) or of one API key (--key). 0 blocks; 'none' is unlimited.
    Only system administrators may set quotas; the gateway applies a change within seconds."""
    app_ = get_app()
    if key is not None:
        if project is not None or jobs is not None or storage is not None:
            raise InvalidInputError(
                "invalid options",
                problems=[
                    Problem("--key", "a key has only --rpm and --tpm", "set --jobs/--storage on its project")
                ],
            )
        out = quotas.set_key_quota(app_, key, rpm=_limit(rpm, "--rpm"), tpm=_limit(tpm, "--tpm"))
        label = f"API key {out['key']} ({out['prefix']}, project {out['project']})"
    else:
        out = quotas.set_project_quota(
            app_,
            project or app_.settings.project,
            rpm=_limit(rpm, "--rpm"),
            tpm=_limit(tpm, "--tpm"),
            jobs=_limit(jobs, "--jobs"),
            storage=_limit(storage, "--storage", size=True),
        )
        label = f"project {out['project']}"
    if json_out:
        print_json(out)
        return
    lim = out["limits"]
    parts = [f"rpm {_fmt(lim['rpm'])}", f"tpm {_fmt(lim['tpm'])}"]
    if "jobs" in lim:
        parts += [f"jobs {_fmt(lim['jobs'])}", f"storage {_fmt(lim['storage'], size=True)}"]
    console.print(f"[green]quotas of {label}[/]: " + ", ".join(parts))
