"""``onebox kb ...``: knowledge bases: create, add documents (an ingestion job), search, ask with sources."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from onebox.cli.output import console, err_console, human_size, print_json
from onebox.cli.state import JsonOpt, get_app
from onebox.errors import InvalidInputError, Problem
from onebox.services import kbs

app = typer.Typer(
    help="Knowledge bases: index your documents and ask questions answered with sources.",
    no_args_is_help=True,
)

KbArg = Annotated[str, typer.Argument(help="Knowledge base name.")]
UrlOpt = Annotated[str, typer.Option(help="Gateway address, used when a deployment serves the model.")]
LocalOpt = Annotated[
    bool, typer.Option("--local", help="Load the model in this process even if it is deployed.")
]
ApiKeyOpt = Annotated[
    str | None, typer.Option(envvar="ONEBOX_API_KEY", help="API key for the gateway; env ONEBOX_API_KEY.")
]
K = Annotated[int, typer.Option("-k", "--k", help="How many passages to retrieve.")]
ModeOpt = Annotated[str, typer.Option(help="hybrid (lexical + dense), lexical or dense.")]
SourceOpt = Annotated[
    list[str] | None, typer.Option("--source", help="Only this document (repeatable; as `kb show` lists it).")
]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="Only documents with this tag (repeatable).")]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="Only files modified on or after (YYYY-MM-DD).")
]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Only files modified before (YYYY-MM-DD).")]


def _filter(source: list[str] | None, tag: list[str] | None, since: str | None, until: str | None) -> Any:
    return kbs.search_filter(source or (), tag or (), since, until)


def _where(hit: dict[str, Any]) -> str:
    return f"{hit['source']} {hit['locator']}".strip()


@app.command()
def create(
    name: KbArg,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    embedding: Annotated[
        str | None, typer.Option(help=f"Embedding model version (default {kbs.DEFAULT_EMBEDDING}).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help=f"Chat model `ask` answers with (default {kbs.DEFAULT_CHAT_MODEL}).")
    ] = None,
    chunk_tokens: Annotated[int | None, typer.Option(help="Chunk size in embedding tokens.")] = None,
    overlap_tokens: Annotated[int | None, typer.Option(help="Overlap between chunks in tokens.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an empty knowledge base."""
    info = kbs.create(
        get_app(),
        name,
        description=description,
        embedding=embedding,
        chat_model=model,
        chunk_tokens=chunk_tokens,
        overlap_tokens=overlap_tokens,
    )
    if json_out:
        print_json(info)
        return
    console.print(
        f"[green]created[/] knowledge base {info['name']} ({info['embedding']}, {info['dim']} dims); "
        f"add documents with `onebox kb add {info['name']} FOLDER_OR_FILES`"
    )


def _print_report(result: dict[str, Any]) -> None:
    counts = result.get("counts", {})
    console.print(
        f"[green]{counts.get('added', 0)} added[/], {counts.get('updated', 0)} updated, "
        f"{counts.get('unchanged', 0)} unchanged, {counts.get('deleted', 0)} deleted, "
        f"[{'red' if counts.get('failed') else 'green'}]{counts.get('failed', 0)} failed[/]; "
        f"{result.get('chunks', 0)} chunks, {result.get('pages', 0)} pages "
        f"in {result.get('seconds', 0):.1f} s",
        highlight=False,
    )
    changed = [*result.get("added", []), *result.get("updated", [])]
    if changed:
        table = Table("document", "outcome", "format", "pages", "chunks", "seconds")
        for r in changed:
            table.add_row(r["source"], r["outcome"], r["format"] or "-", str(r["pages"]), str(r["chunks"]),
                          f"{r['seconds']:.1f}")  # fmt: skip
        console.print(table)
    for r in result.get("failed", []):
        err_console.print(f"[yellow]failed[/] {r['source']}: {r['reason']}", highlight=False)
    for r in result.get("deleted", []):
        console.print(f"deleted {r['source']} (no longer in the folder)", highlight=False)


@app.command()
def add(
    name: KbArg,
    paths: Annotated[list[Path], typer.Argument(help="Files and/or folders (searched recursively).")],
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Tag the documents (repeatable).")] = None,
    sync: Annotated[
        bool,
        typer.Option("--sync", help="Make the KB hold exactly this folder: documents not in it are removed."),
    ] = False,
    ocr: Annotated[bool, typer.Option(help="OCR images and scanned PDF pages (slow).")] = True,
    priority: Annotated[int, typer.Option(help="Queue priority (higher first).")] = 0,
    detach: Annotated[
        bool, typer.Option("--detach", help="Queue the ingestion job and return at once.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Add or update documents: files are snapshotted, then an ingestion job indexes them.

    Unchanged files are skipped, so adding a folder again only re-indexes what changed. Exit code
    4 when no file could be ingested."""
    from onebox.cli.jobs import follow

    items, skipped, one_folder = kbs.collect(paths)
    if sync and not one_folder:
        raise InvalidInputError(
            "--sync needs exactly one folder", problems=[Problem("paths", "give one folder with --sync")]
        )
    for s in skipped:
        err_console.print(f"[dim]skipped {s} (not a supported document format)[/]", highlight=False)
    a = get_app()
    job = kbs.add(a, name, items, tags=tag, sync=sync, ocr=ocr, priority=priority)
    done = follow(a, job, detach=detach, json_out=json_out)
    if done is None:
        return
    result = done["result"]
    if json_out:
        print_json({"job": done["id"], **result})
    else:
        _print_report(result)
    counts = result.get("counts", {})
    if counts.get("failed") and not any(counts.get(k) for k in ("added", "updated", "unchanged")):
        raise typer.Exit(InvalidInputError.exit_code)


@app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """List knowledge bases with document and chunk counts."""
    rows = kbs.list_kbs(get_app())
    if json_out:
        print_json(rows)
        return
    table = Table("name", "documents", "chunks", "embedding", "size", "status", "description")
    for r in rows:
        table.add_row(
            r["name"], str(r["documents"] if r["documents"] is not None else "-"),
            str(r["chunks"] if r["chunks"] is not None else "-"), r["embedding"] or "-",
            human_size(r["bytes_on_disk"]), r["status"], r["description"],
        )  # fmt: skip
    console.print(table)
    if not rows:
        console.print("no knowledge bases yet; `onebox kb create NAME` makes one")


@app.command()
def show(name: KbArg, json_out: JsonOpt = False) -> None:
    """Show a knowledge base and its documents."""
    a = get_app()
    info = kbs.show(a, name)
    docs = kbs.documents(a, name)
    if json_out:
        print_json({**info, "document_list": docs})
        return
    head = Table(show_header=False, box=None)
    for key in ("name", "description", "embedding", "chat_model", "documents", "chunks", "index", "id"):
        head.add_row(key, str(info.get(key) if info.get(key) is not None else "-"))
    head.add_row("encrypted at rest", "yes" if info.get("encrypted") else "no")
    console.print(head)
    for j in info["jobs"]:
        console.print(f"  ingesting: {j['id']} {j['status']} {100 * (j['progress'] or 0):.0f}%")
    table = Table("document", "title", "format", "chunks", "size", "tags", "modified")
    for d in docs:
        table.add_row(
            d["source"], d["title"], d["format"], str(d["chunks"]), human_size(d["size_bytes"]),
            ", ".join(d["tags"]), (d["modified"] or "")[:10],
        )  # fmt: skip
    console.print(table)


@app.command()
def search(
    name: KbArg,
    query: Annotated[str, typer.Argument(help="What to look for (any language).")],
    k: K = 5,
    mode: ModeOpt = "hybrid",
    source: SourceOpt = None,
    tag: TagOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Find the passages that best match QUERY."""
    hits = kbs.search(get_app(), name, query, k=k, mode=mode, flt=_filter(source, tag, since, until))
    if json_out:
        print_json(hits)
        return
    if not hits:
        console.print("no matching passages")
        return
    for h in hits:
        console.print(f"[bold]{h['rank']}.[/] [cyan]{_where(h)}[/]  score {h['score']:.4f}", highlight=False)
        text = " ".join(h["text"].split())
        console.print(f"   {text[:300]}{'…' if len(text) > 300 else ''}", highlight=False)


@app.command()
def ask(
    name: KbArg,
    question: Annotated[str, typer.Argument(help="The question (any language).")],
    k: K = 5,
    mode: ModeOpt = "hybrid",
    model: Annotated[str | None, typer.Option(help="Chat model to answer with (default: the KB's).")] = None,
    url: UrlOpt = "http://127.0.0.1:8000",
    local: LocalOpt = False,
    api_key: ApiKeyOpt = None,
    max_tokens: Annotated[
        int, typer.Option(help="Longest answer in tokens.")
    ] = kbs.DEFAULT_MAX_ANSWER_TOKENS,
    source: SourceOpt = None,
    tag: TagOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Answer QUESTION from the knowledge base, citing numbered sources (or say it is not there)."""
    a = get_app()
    flt = _filter(source, tag, since, until)
    chosen = model or kbs.chat_model(a, name)
    generate = None
    if not local and kbs.served_by_gateway(a, chosen):
        generate = kbs.http_generator(url, chosen, max_tokens=max_tokens, api_key=api_key)
    elif not json_out:
        err_console.print(f"[dim]loading {chosen} in this process (no deployment serves it)…[/]")
    out = kbs.ask(
        a, name, question, k=k, mode=mode, flt=flt, generate=generate, model=chosen, max_tokens=max_tokens
    )
    out["via"] = "gateway" if generate is not None else "local"
    if json_out:
        print_json(out)
        return
    console.print(out["answer"], highlight=False)
    if out["not_found"] or not out["sources"]:
        return
    console.print("\n[bold]Sources[/]")
    for s in out["sources"]:
        mark = "" if s["cited"] else " [dim](not cited)[/]"
        if s.get("inferred"):
            mark = " [dim](matched to the answer; the model wrote no [n])[/]"
        console.print(f"  [{s['number']}] {_where(s)}  score {s['score']:.4f}{mark}", highlight=False)


@app.command("to-dataset")
def to_dataset(
    name: KbArg,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Dataset to add a version to (default <kb>-qa).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Chat model that writes the questions (default: the KB's).")
    ] = None,
    per_chunk: Annotated[int, typer.Option("--per-chunk", help="Questions per chunk (1-5).")] = 1,
    max_chunks: Annotated[
        int | None,
        typer.Option("--max-chunks", help="Ask about at most this many chunks (spread over documents)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for review.md, review.jsonl and retrieval_eval.jsonl."),
    ] = None,
    url: UrlOpt = "http://127.0.0.1:8000",
    local: LocalOpt = False,
    api_key: ApiKeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Generate question/answer pairs from the KB's chunks with a model, filter them, and register the
    kept ones as a chat dataset version (lineage: this KB), with a review report and a retrieval
    evaluation set (question -> gold chunk). Exit code 4 when no pair passes the filter."""
    from onebox.cli.output import progress_bar
    from onebox.rag.to_dataset import QAOptions, verdict

    a = get_app()
    chosen = model or kbs.chat_model(a, name)
    generate, via = None, "local"
    if not local and kbs.served_by_gateway(a, chosen):
        generate, via = (
            kbs.http_generator(url, chosen, max_tokens=QAOptions.max_new_tokens, api_key=api_key),
            "gateway",
        )
    elif not json_out:
        err_console.print(f"[dim]loading {chosen} in this process (no deployment serves it)…[/]")
    with progress_bar(enabled=not json_out) as progress:
        res = kbs.to_dataset(
            a, name, dataset=dataset, generate=generate, model=chosen, via=via,
            questions_per_chunk=per_chunk, max_chunks=max_chunks, out_dir=out, progress=progress,
        )  # fmt: skip
    if json_out:
        print_json(res)
        return
    s, ds = res["summary"], res["dataset"]
    verb = "registered" if res["created"] else "already registered (same content)"
    console.print(
        f"[green]{verb}[/] {ds['ref']}: {ds['num_train']} train, {ds['num_validation']} validation "
        f"({ds['schema']}), from knowledge base {res['kb']} with {res['lineage']['model']} via {via}",
        highlight=False,
    )
    reasons = ", ".join(f"{r} {n}" for r, n in s["rejected_by_reason"].items()) or "none"
    console.print(
        f"kept {s['kept']} of {s['generations']} generations ({100 * s['keep_rate']:.0f}%) from "
        f"{s['passages']} chunks in {s['seconds']:.0f} s; rejected: {reasons}",
        highlight=False,
    )
    r = res["retrieval"]
    if r.get("questions"):
        console.print(
            f"retrieval eval set: {r['questions']} questions; hybrid search finds the gold chunk first "
            f"for {100 * r['hit@1']:.0f}%, in the top 5 for {100 * r['hit@5']:.0f}%",
            highlight=False,
        )
    for q in res["kept"][:5]:
        console.print(f"  Q: {q['question']}\n  A: {q['answer']}  [dim]({q['source']})[/]", highlight=False)
    console.print(verdict(s), highlight=False)
    sealed = " [dim](sealed at rest: --out DIR writes readable copies)[/]" if res.get("sealed") else ""
    console.print(f"review: {res['files']['review.md']}{sealed}", highlight=False)


@app.command()
def remove(
    name: KbArg,
    sources: Annotated[list[str], typer.Argument(help="Documents to remove, as `kb show` lists them.")],
    json_out: JsonOpt = False,
) -> None:
    """Remove documents from a knowledge base."""
    out = kbs.remove(get_app(), name, sources)
    if json_out:
        print_json(out)
        return
    for s in out["removed"]:
        console.print(f"removed {s}", highlight=False)
    for s in out["missing"]:
        err_console.print(f"[yellow]not found[/] {s}", highlight=False)


@app.command()
def delete(
    name: KbArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Delete a knowledge base with its index and document snapshot."""
    if not yes and not json_out:
        typer.confirm(f"delete knowledge base {name!r} and all its documents?", abort=True)
    out = kbs.delete(get_app(), name)
    if json_out:
        print_json(out)
        return
    console.print(f"deleted knowledge base {out['name']} ({out['documents'] or 0} documents)")
