"""``onebox models ...``: the model registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from onebox.cli.output import console, human_count, human_size, print_json, progress_bar
from onebox.cli.state import JsonOpt, get_app
from onebox.services import models

app = typer.Typer(help="Model registry: built-in models, versions, aliases, lineage.", no_args_is_help=True)


@app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """List models with their latest version, aliases and size (built-ins included)."""
    rows = models.list_models(get_app())
    if json_out:
        print_json(rows)
        return
    table = Table("name", "kind", "status", "latest", "aliases", "format", "params", "size", "license")
    for r in rows:
        aliases = " ".join(f"@{a}→{v}" for a, v in r["aliases"].items())
        status = "[green]ready[/]" if r["status"] == "ready" else f"[yellow]{r['status']}[/]"
        table.add_row(
            r["name"],
            r["kind"],
            status,
            str(r["latest_version"] or "-"),
            aliases,
            r["format"] or "-",
            human_count(r["parameters"]),
            human_size(r["size_bytes"]),
            r["license"] or "-",
        )
    console.print(table)


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="name, name:VERSION or name@ALIAS")],
    json_out: JsonOpt = False,
) -> None:
    """Show a model with all its versions, or one version with its lineage."""
    info = models.show(get_app(), ref)
    if json_out:
        print_json(info)
        return
    versions = info.get("versions", [info])
    head = info.get("name") or info["model"]
    console.print(f"[bold]{head}[/] ({versions[0]['kind'] if versions else info.get('kind')})")
    columns = ("version", "aliases", "format", "arch", "params", "size", "sha256", "base", "data", "created")
    table = Table(*columns)
    for v in versions:
        table.add_row(
            str(v["version"]),
            " ".join("@" + a for a in v["aliases"]),
            v["format"],
            v["architecture"] or "-",
            human_count(v["parameters"]),
            human_size(v["size_bytes"]),
            (v["checksum"] or "")[:12],
            v["lineage"]["base_version"] or "-",
            v["lineage"]["dataset_version"] or "-",
            v["created_at"][:19],
        )
    console.print(table)


@app.command()
def register(
    name: Annotated[str, typer.Argument(help="Registry name for the model.")],
    source: Annotated[str, typer.Argument(help="HF model directory, GGUF file, or hub id owner/name.")],
    kind: Annotated[str | None, typer.Option(help="chat, embedding or other (detected by default).")] = None,
    license: Annotated[str | None, typer.Option(help="Licence identifier, e.g. Apache-2.0.")] = None,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    new_version: Annotated[
        bool, typer.Option("--new-version", help="Add a version to an existing model.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Register a model directory, GGUF file (converted to safetensors) or hub id as a new version."""
    with progress_bar(enabled=not json_out) as progress:
        reg = models.register(
            get_app(),
            name,
            source,
            kind=kind,
            license=license,
            description=description,
            new_version=new_version,
            progress=progress,
        )
    info = models.show(get_app(), f"{reg.model.name}:{reg.version.version}")
    if json_out:
        print_json({**info, "created": reg.created})
        return
    if reg.created:
        console.print(
            f"[green]registered[/] {info['ref']} ({info['format']}, {human_size(info['size_bytes'])})"
        )
    else:
        console.print(f"identical content is already registered as {info['ref']}; nothing new was stored")


@app.command()
def alias(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS", help="Alias such as prod or staging.")],
    version: Annotated[
        str | None, typer.Argument(help="Version to point at (3, v3 or another @alias).")
    ] = None,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Move the alias back to its previous version.")
    ] = False,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the alias.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Point NAME@ALIAS at a version, roll it back, or delete it."""
    from onebox.errors import InvalidInputError

    chosen = sum([version is not None, rollback, delete])
    if chosen != 1:
        raise InvalidInputError("give exactly one of VERSION, --rollback or --delete")
    a = get_app()
    if delete:
        models.delete_alias(a, name, alias_name)
        result = {"model": name, "alias": alias_name, "deleted": True}
    elif rollback:
        result = models.rollback_alias(a, name, alias_name)
    else:
        assert version is not None
        target = f"{name}{version}" if version.startswith("@") else version
        result = models.set_alias(a, name, alias_name, target)
    if json_out:
        print_json(result)
    elif result.get("deleted"):
        console.print(f"removed {name}@{alias_name}")
    else:
        prev = f" (was {result['previous']})" if result["previous"] is not None else ""
        console.print(f"{result['model']}@{result['alias']} → version {result['version']}{prev}")


@app.command()
def delete(
    ref: Annotated[str, typer.Argument(help="name:VERSION, name@ALIAS, or name for the whole model.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Delete a version (or a whole model) unless an alias, deployment or derived version uses it."""
    if not yes and not json_out:
        typer.confirm(f"Delete {ref}?", abort=True)
    gone = models.delete(get_app(), ref)
    if json_out:
        print_json({"deleted": gone})
    else:
        console.print(f"deleted {', '.join(gone)}; run `onebox gc` to free the space")


@app.command()
def export(
    ref: Annotated[str, typer.Argument(help="name:VERSION, name@ALIAS or name (latest).")],
    to: Annotated[Path, typer.Option("--to", help="Folder to write into (created; must be empty).")],
    sealed_: Annotated[
        bool, typer.Option("--sealed", help="Write an encrypted package and a signed licence for one host.")
    ] = False,
    to_host: Annotated[
        str | None,
        typer.Option(help="With --sealed: the target's host id (`onebox host fingerprint` there)."),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(help="With --sealed: last day of use, 2026-12-31 (UTC), or an ISO date-time."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Export a version: plaintext files (a download), or --sealed for one host until a date."""
    from onebox.errors import InvalidInputError, Problem
    from onebox.services import sealed

    if sealed_:
        missing = [
            Problem(f, "is required with --sealed", hint)
            for f, v, hint in (
                ("to_host", to_host, "pass --to-host <host id from `onebox host fingerprint` on the target>"),
                ("expires", expires, "pass --expires 2026-12-31"),
            )
            if not v
        ]
        if missing:
            raise InvalidInputError("a sealed export needs a target host and an expiry", problems=missing)
        assert to_host is not None and expires is not None
        with progress_bar(enabled=not json_out) as progress:
            out = sealed.export_sealed(
                get_app(), ref, to_host=to_host, expires=expires, dest_dir=to, progress=progress
            )
        if json_out:
            print_json(out)
            return
        console.print(f"[green]sealed[/] {out['ref']} for {out['to_host'][:48]}… until {out['expires']}")
        console.print(f"  package  {out['package']} ({human_size(out['size_bytes'])})", highlight=False)
        console.print(f"  licence  {out['licence']} ({out['licence_id']})", highlight=False)
        console.print(f"  issuer   {out['issuer']}  (the importer must trust this key)", highlight=False)
        return
    if to_host or expires:
        raise InvalidInputError(
            "--to-host and --expires apply to sealed exports",
            problems=[Problem("sealed", "not given", "add --sealed, or drop --to-host/--expires")],
        )
    with progress_bar(enabled=not json_out) as progress:
        out = models.export(get_app(), ref, to, progress=progress)
    if json_out:
        print_json(out)
        return
    console.print(
        f"exported {out['ref']}: {out['files']} files, {human_size(out['size_bytes'])} to {out['to']}",
        highlight=False,
    )


@app.command("import-sealed")
def import_sealed(
    package: Annotated[Path, typer.Argument(help="The .obxpkg file.")],
    licence: Annotated[
        Path | None, typer.Option(help="The licence (default: <package>.licence.json beside it).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Register under this name (default: the exported one).")
    ] = None,
    trust_issuer: Annotated[
        str | None, typer.Option(help="Accept this issuer key for this import only (ed25519:...).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Import a sealed package for this host; it stays usable here only, until its licence expires."""
    from onebox.services import sealed

    with progress_bar(enabled=not json_out) as progress:
        out = sealed.import_sealed(
            get_app(), package, licence, name=name, trust_issuer=trust_issuer, progress=progress
        )
    if json_out:
        print_json(out)
        return
    if out["created"]:
        console.print(
            f"[green]imported[/] {out['ref']} (from {out['source']}), usable here until {out['expires']}"
        )
    elif out["licence_renewed"]:
        console.print(f"{out['ref']} was already here; its licence now runs until {out['expires']}")
    else:
        console.print(f"identical content is already registered as {out['ref']}; nothing new was stored")
