"""``onebox encryption status|rotate|encrypt-existing``: encryption at rest of the artifact store
and of knowledge bases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from onebox.cli.output import console, human_size, print_json, progress_bar
from onebox.cli.state import JsonOpt, get_app
from onebox.services import encryption

app = typer.Typer(
    help="Encryption at rest: status, master-key rotation, sealing older blobs.", no_args_is_help=True
)


@app.command("status")
def status_command(json_out: JsonOpt = False) -> None:
    """Whether new artifacts are encrypted, the master key id, and blobs encrypted vs plaintext."""
    with progress_bar(not json_out) as progress:
        st = encryption.status(get_app(), progress)
    if json_out:
        print_json(st.as_dict())
        return
    table = Table(show_header=False, box=None)
    table.add_row("encryption of new artifacts", "[green]on[/]" if st.enabled else "[yellow]off[/]")
    table.add_row("master key", st.key_id or "[dim]none configured[/]")
    table.add_row("encrypted blobs", f"{st.encrypted:,}")
    table.add_row("plaintext blobs", f"{st.plaintext:,}")
    for key_id, n in sorted(st.key_records.items()):
        mark = (
            ""
            if key_id == st.key_id
            else "  [yellow](not the configured key: configure it, or finish the rotation)[/]"
        )
        table.add_row("data keys under", f"{key_id}: {n:,}{mark}")
    console.print(table)
    if st.enabled and st.plaintext:
        console.print("[dim]seal the plaintext blobs with `onebox encryption encrypt-existing`[/]")


@app.command("rotate")
def rotate_command(
    new_key_file: Annotated[
        Path | None, typer.Option("--new-key-file", help="0600 file holding the new key (64 hex digits).")
    ] = None,
    new_kms: Annotated[
        str | None, typer.Option("--new-kms", help="module:factory of a KMS provider to rotate to.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Re-wrap every data key under a new master key without re-encrypting any data.

    Safe to interrupt and run again. Afterwards point ONEBOX_MASTER_KEY_FILE (or
    ONEBOX_KMS_PROVIDER) at the new key and restart running services."""
    app_ = get_app()
    new = encryption.load_new_key(new_key_file, new_kms, app_)
    with progress_bar(not json_out) as progress:
        report = encryption.rotate(app_, new, progress)
    if json_out:
        print_json(report.as_dict())
    else:
        console.print(
            f"re-wrapped {report.rewrapped:,} data keys from {report.old_key_id} to {report.new_key_id} "
            f"({report.already:,} already done)"
        )
        for line in report.failed:
            console.print(f"[red]failed:[/] {line}", highlight=False)
        if not report.failed:
            console.print("now configure the new master key and restart running services")
    if report.failed:
        raise typer.Exit(6)


@app.command("encrypt-existing")
def encrypt_existing_command(json_out: JsonOpt = False) -> None:
    """Encrypt blobs stored before encryption was switched on (digests verified; resumable), then
    knowledge bases created before it (sources, index, caches; restart running services after)."""
    from onebox.services import kbs

    app_ = get_app()
    with progress_bar(not json_out) as progress:
        report = encryption.encrypt_existing(app_, progress)
        kb_report = kbs.encrypt_existing(app_, progress)
    failed = [*report.failed, *kb_report["failed"]]
    if json_out:
        print_json({**report.as_dict(), "knowledge_bases": kb_report})
    else:
        console.print(
            f"encrypted {report.encrypted:,} blobs ({human_size(report.bytes)}), "
            f"{report.already:,} were already encrypted"
        )
        console.print(
            f"encrypted {len(kb_report['encrypted']):,} knowledge bases, "
            f"{kb_report['already']:,} were already encrypted"
        )
        for line in kb_report["skipped"]:
            console.print(f"[yellow]skipped:[/] {line}", highlight=False)
        for line in failed:
            console.print(f"[red]failed:[/] {line}", highlight=False)
    if failed:
        raise typer.Exit(6)
