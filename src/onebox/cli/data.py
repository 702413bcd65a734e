"""``onebox data ...``: dataset import, cleaning reports, previews and versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from onebox.cli.output import console, err_console, human_size, print_json, progress_bar
from onebox.cli.state import JsonOpt, get_app, settings
from onebox.services import datasets

app = typer.Typer(help="Datasets: import, validate, clean, version, preview.", no_args_is_help=True)


def _options(**kw: Any) -> Any:
    from onebox.data.clean import CleanConfig
    from onebox.data.importer import ImportOptions

    clean = CleanConfig(
        near_duplicate_threshold=None if kw["no_near_dedupe"] else kw["near_dup"],
        redact_pii=kw["redact_pii"],
        pii_allow=list(kw["pii_allow"] or []),
        max_chars=kw["max_chars"],
    )
    opts = ImportOptions(
        format=kw["fmt"],
        max_bytes=settings().max_import_bytes,
        max_bad_fraction=kw["max_bad_fraction"],
        clean=clean,
        validation_fraction=kw["validation_fraction"],
        seed=kw["seed"],
    )
    opts.validate()
    return opts


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="JSONL, JSON, CSV/TSV, Parquet, XLSX or TXT file.")],
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Dataset name (default: file stem).")
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="Override the format detected from the suffix.")
    ] = None,
    validation_fraction: Annotated[float, typer.Option(help="Share of rows held out for validation.")] = 0.1,
    max_bad_fraction: Annotated[
        float, typer.Option(help="Import nothing if more rows than this are bad.")
    ] = 0.1,
    redact_pii: Annotated[
        bool, typer.Option("--redact-pii", help="Mask emails, phones, ID and card numbers.")
    ] = False,
    pii_allow: Annotated[
        list[str] | None, typer.Option("--pii-allow", help="A string never redacted (repeatable).")
    ] = None,
    near_dup: Annotated[
        float, typer.Option(help="Jaccard similarity above which rows are near-duplicates.")
    ] = 0.9,
    no_near_dedupe: Annotated[bool, typer.Option("--no-near-dedupe", help="Keep near-duplicates.")] = False,
    max_chars: Annotated[
        int, typer.Option(help="Rows longer than this (characters) are quarantined.")
    ] = 32000,
    seed: Annotated[int, typer.Option(help="Seed of the train/validation split.")] = 0,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Import a file as a new dataset version: validate, clean, split, store (atomic)."""
    opts = _options(
        fmt=fmt,
        validation_fraction=validation_fraction,
        max_bad_fraction=max_bad_fraction,
        redact_pii=redact_pii,
        pii_allow=pii_allow,
        near_dup=near_dup,
        no_near_dedupe=no_near_dedupe,
        max_chars=max_chars,
        seed=seed,
    )
    ds_name = name or path.stem
    with progress_bar(enabled=not json_out) as progress:
        dv, created = datasets.import_file(
            get_app(), path, ds_name, opts, description=description, progress=progress
        )
    info = datasets.show(get_app(), f"{ds_name}:{dv.version}")
    if json_out:
        print_json({**info, "created": created})
        return
    if created:
        console.print(
            f"[green]imported[/] {info['ref']}: {info['num_train']} train, "
            f"{info['num_validation']} validation, {info['num_quarantined']} quarantined "
            f"({info['schema']} from {info['source_format']})"
        )
        invalid = datasets.report(get_app(), info["ref"]).get("invalid_rows", [])
        if invalid:
            err_console.print(
                f"[yellow]warning:[/] {len(invalid)} invalid row(s) were quarantined, not imported:",
                highlight=False,
            )
            for row in invalid[:10]:
                err_console.print(
                    f"  line {row['line']}: {row.get('detail') or row.get('reason')}", highlight=False
                )
        console.print(f"see the report with `onebox data report {info['ref']}`")
    else:
        console.print(f"identical data is already {info['ref']}; no new version was made")


@app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """List datasets with their latest version."""
    rows = datasets.list_datasets(get_app())
    if json_out:
        print_json(rows)
        return
    table = Table("name", "versions", "latest", "schema", "train", "validation", "quarantined", "size")
    for r in rows:
        v = r["latest"] or {}
        table.add_row(
            r["name"],
            str(r["versions"]),
            str(v.get("version", "-")),
            v.get("schema", "-"),
            str(v.get("num_train", "-")),
            str(v.get("num_validation", "-")),
            str(v.get("num_quarantined", "-")),
            human_size(v.get("size_bytes")),
        )
    console.print(table)


@app.command()
def show(ref: Annotated[str, typer.Argument(help="name or name:VERSION")], json_out: JsonOpt = False) -> None:
    """Show a dataset's versions, or one version."""
    info = datasets.show(get_app(), ref)
    if json_out:
        print_json(info)
        return
    versions = info.get("versions", [info])
    table = Table("ref", "schema", "source", "train", "validation", "quarantined", "hash", "created")
    for v in versions:
        table.add_row(
            v["ref"],
            v["schema"],
            v["source_name"],
            str(v["num_train"]),
            str(v["num_validation"]),
            str(v["num_quarantined"]),
            v["content_hash"][:12],
            v["created_at"][:19],
        )
    console.print(table)


@app.command()
def preview(
    ref: Annotated[str, typer.Argument(help="name or name:VERSION")],
    split: Annotated[str, typer.Option(help="train, validation or quarantine.")] = "train",
    limit: Annotated[int, typer.Option("--limit", "-n", help="Rows to show.")] = 5,
    json_out: JsonOpt = False,
) -> None:
    """Show the first rows of a split (quarantine shows removed rows with their reasons)."""
    rows = datasets.preview(get_app(), ref, split, limit)
    if json_out:
        print_json(rows)
        return
    for r in rows:
        console.print(
            f"[bold]line {r.get('line')}[/]"
            + (f"  [red]{r['reason']}[/] {r.get('detail') or ''}" if "reason" in r else "")
        )
        body = r.get("content") or r.get("original") or r  # quarantine rows keep what was removed
        if isinstance(body, dict) and body.get("messages"):
            for m in body["messages"]:
                console.print(f"  [cyan]{m.get('role')}[/]: {m.get('content')}", highlight=False)
        elif isinstance(body, dict) and body.get("text") is not None:
            console.print(f"  {body['text']}", highlight=False)
        else:
            raw = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
            console.print(f"  {raw[:500]}", highlight=False)


@app.command()
def report(
    ref: Annotated[str, typer.Argument(help="name or name:VERSION")], json_out: JsonOpt = False
) -> None:
    """Print the validation and cleaning report of a version."""
    rep = datasets.report(get_app(), ref)
    if json_out:
        print_json(rep)
        return
    _print_report(rep)


def _print_report(rep: dict[str, Any]) -> None:
    console.print(f"[bold]{rep['ref']}[/]  format={rep.get('format')} schema={rep.get('schema')}")
    table = Table("step", "value")
    for key, val in _flatten(rep):
        table.add_row(key, val)
    console.print(table)


def _flatten(rep: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, v in rep.items():
        if k in ("ref", "options") and not prefix:
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(_flatten(v, key + "."))
        elif isinstance(v, list):
            shown = "; ".join(_item(x) for x in v[:10])
            more = f" (+{len(v) - 10} more)" if len(v) > 10 else ""
            out.append((key, (shown + more) or "-"))
        else:
            out.append((key, str(v)))
    return out


def _item(x: Any) -> str:
    if not isinstance(x, dict):
        return str(x)
    if "line" in x:
        return f"line {x['line']}: {x.get('detail') or x.get('reason')}"
    if "step" in x:
        return f"{x['step']} {x.get('rows_in')}→{x.get('rows_out')}"
    return json.dumps(x, ensure_ascii=False)


@app.command()
def delete(
    ref: Annotated[str, typer.Argument(help="name:VERSION, or name for the whole dataset")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Delete a version (or dataset) unless a model version or running job was built from it."""
    if not yes and not json_out:
        typer.confirm(f"Delete {ref}?", abort=True)
    gone = datasets.delete(get_app(), ref)
    if json_out:
        print_json({"deleted": gone})
    else:
        console.print(f"deleted {', '.join(gone)}; run `onebox gc` to free the space")
