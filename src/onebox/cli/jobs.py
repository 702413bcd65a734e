"""``onebox jobs ...``: the job queue, its local executor, logs, cancel/retry/resume.

``watch`` is also used by commands that submit a job and wait for it (``onebox train``): it drives
an executor in this process and draws the job's progress until the job ends.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from onebox.cli.output import console, err_console, human_count, print_json
from onebox.cli.state import JsonOpt, get_app, settings
from onebox.errors import ExecutorBusyError, InvalidInputError, JobFailedError, Problem
from onebox.jobs import state
from onebox.jobs.executor import LocalExecutor, TickReport
from onebox.jobs.resources import Resources, machine_capacity
from onebox.services import jobs
from onebox.services.context import App

app = typer.Typer(help="Jobs: queue, local executor, logs, cancel, retry, resume.", no_args_is_help=True)

STATUS_STYLE = {
    state.QUEUED: "cyan",
    state.RUNNING: "yellow",
    state.CANCELLING: "magenta",
    state.SUCCEEDED: "green",
    state.FAILED: "red",
    state.CANCELLED: "dim",
}


def _styled(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _resources_text(r: dict[str, Any]) -> str:
    try:
        return str(Resources.parse(r))
    except InvalidInputError:
        return json.dumps(r)


def _metric_text(metrics: dict[str, Any]) -> str:
    """``loss 0.123 · 1.2K tok/s`` from a job's latest metrics (names used by the trainers)."""
    parts = []
    loss = metrics.get("loss")
    if isinstance(loss, int | float):
        parts.append(f"loss {loss:.4g}")
    elif "loss" in metrics:
        parts.append("loss nan")
    for key in ("tokens_per_s", "tokens_per_sec", "tok_s"):
        if isinstance(metrics.get(key), int | float):
            parts.append(f"{human_count(int(metrics[key]))} tok/s")
            break
    return " · ".join(parts)


@app.command("list")
def list_(
    status: Annotated[
        list[str] | None, typer.Option("--status", "-s", help="Only these statuses (repeatable).")
    ] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Only jobs of this type.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first); 0 for all.")] = 50,
    json_out: JsonOpt = False,
) -> None:
    """List jobs, newest first, with status, progress and attempts."""
    rows = [jobs.job_dict(j) for j in jobs.list_jobs(get_app(), status, type=type_, limit=limit or None)]
    if json_out:
        print_json(rows)
        return
    table = Table(
        Column("id", no_wrap=True),
        "name",
        "type",
        Column("status", no_wrap=True),
        "pri",
        "progress",
        "tries",
        "resources",
        "created",
        "time",
    )
    for r in rows:
        table.add_row(
            r["id"],
            r["name"],
            r["type"],
            _styled(r["status"]),
            str(r["priority"]),
            f"{r['progress'] * 100:.0f}%",
            f"{r['attempts']}/{r['max_attempts']}",
            _resources_text(r["resources"]),
            r["created_at"][:19].replace("T", " "),
            _duration(r["duration_s"]),
        )
    console.print(table)
    if not rows:
        console.print("no jobs; submit one with `onebox jobs submit sleep`")


@app.command()
def show(
    job: Annotated[str, typer.Argument(help="Job id or unique prefix.")], json_out: JsonOpt = False
) -> None:
    """Show a job: status, progress, metrics, result or error, and its events."""
    info = jobs.show(get_app(), job)
    if json_out:
        print_json(info)
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("id", info["id"])
    table.add_row("name / type", f"{info['name']} / {info['type']}")
    table.add_row("status", _styled(info["status"]))
    table.add_row("progress", f"{info['progress'] * 100:.1f}%  {_metric_text(info['metrics'])}")
    table.add_row("attempts", f"{info['attempts']} of {info['max_attempts']}")
    table.add_row(
        "resources",
        _resources_text(info["resources"]) + (f"  GPUs {info['devices']}" if info["devices"] else ""),
    )
    table.add_row("priority", str(info["priority"]))
    table.add_row("checkpoint", "-" if info["checkpoint_step"] is None else f"step {info['checkpoint_step']}")
    table.add_row("worker", f"pid {info['pid']} on {info['host']}" if info["pid"] else "-")
    table.add_row("created / started", f"{info['created_at'][:19]} / {(info['started_at'] or '-')[:19]}")
    table.add_row("finished", f"{(info['finished_at'] or '-')[:19]}  ({_duration(info['duration_s'])})")
    table.add_row("spec", json.dumps(info["spec"], ensure_ascii=False))
    for name, m in info["metric_series"].items():
        table.add_row(f"metric {name}", f"{m['last_value']} at step {m['last_step']} ({m['points']} points)")
    if info["result"]:
        table.add_row("result", json.dumps(info["result"], ensure_ascii=False))
    if info["error"]:
        table.add_row("error", f"[red]{info['error']}[/]")
    table.add_row("log", info["log_path"] or "-")
    console.print(table)
    events = Table("time", "event", "message")
    for e in info["events"]:
        events.add_row(e["created_at"][11:19], e["kind"], e["message"])
    console.print(events)


@app.command()
def logs(
    job: Annotated[str, typer.Argument(help="Job id or unique prefix.")],
    tail: Annotated[int | None, typer.Option("--tail", "-n", help="Only the last N lines.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
) -> None:
    """Print a job's log (all attempts); ``--follow`` streams it until the job ends."""
    a = get_app()
    text = jobs.logs(a, job, tail=tail)
    console.out(text, end="", highlight=False)
    if follow:
        for chunk in jobs.follow(a, job, start_at_end=True):
            console.out(chunk, end="", highlight=False)


def _print_job_line(verb: str, info: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(info)
    else:
        console.print(f"{verb} {info['id']} ({info['name']}): {_styled(info['status'])}")


@app.command()
def cancel(
    job: Annotated[str, typer.Argument(help="Job id or unique prefix.")],
    force: Annotated[
        bool, typer.Option("--force", help="Kill at once instead of asking it to stop.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Cancel a job: queued ones at once, running ones gracefully (or at once with --force)."""
    _print_job_line("cancel", jobs.job_dict(jobs.cancel(get_app(), job, force=force)), json_out)


@app.command()
def retry(
    job: Annotated[str, typer.Argument(help="Job id or unique prefix.")],
    fresh: Annotated[bool, typer.Option("--fresh", help="Discard its checkpoints and start over.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Queue a failed or cancelled job again (it continues from its checkpoint unless --fresh)."""
    _print_job_line("re-queued", jobs.job_dict(jobs.retry(get_app(), job, fresh=fresh)), json_out)


@app.command()
def resume(
    job: Annotated[str, typer.Argument(help="Job id or unique prefix.")], json_out: JsonOpt = False
) -> None:
    """Queue a failed or cancelled job to continue from its last checkpoint (error if it has none)."""
    _print_job_line("resuming", jobs.job_dict(jobs.resume(get_app(), job)), json_out)


def _parse_spec(spec: str | None, spec_file: Path | None) -> dict[str, Any]:
    if spec is not None and spec_file is not None:
        raise InvalidInputError("give --spec or --spec-file, not both")
    text = spec_file.read_text(encoding="utf-8") if spec_file is not None else spec
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            "invalid spec", problems=[Problem("spec", f"not JSON: {exc.msg} (column {exc.colno})")]
        ) from exc
    if not isinstance(value, dict):
        raise InvalidInputError("invalid spec", problems=[Problem("spec", "must be a JSON object")])
    return value


def _capacity(cpus: float | None, gpus: int | None, memory_mb: int | None) -> Resources | None:
    if cpus is None and gpus is None and memory_mb is None:
        return None
    machine = machine_capacity()
    return Resources.parse(
        {
            "cpus": machine.cpus if cpus is None else cpus,
            "gpus": machine.gpus if gpus is None else gpus,
            "memory_mb": machine.memory_mb if memory_mb is None else memory_mb,
        },
        "capacity",
    )


@app.command()
def submit(
    type_: Annotated[str, typer.Argument(metavar="TYPE", help="Job type, e.g. sleep, train, eval.")],
    spec: Annotated[str | None, typer.Option(help="Job spec as a JSON object.")] = None,
    spec_file: Annotated[Path | None, typer.Option(help="Read the spec from a JSON file.")] = None,
    name: Annotated[str | None, typer.Option(help="A name to recognise it by.")] = None,
    priority: Annotated[int, typer.Option(help="Higher runs first.")] = 0,
    cpus: Annotated[float, typer.Option(help="CPUs it needs.")] = 1.0,
    gpus: Annotated[int, typer.Option(help="GPUs it needs.")] = 0,
    memory_mb: Annotated[int, typer.Option(help="Memory it needs (MiB; 0 = not declared).")] = 0,
    max_attempts: Annotated[int, typer.Option(help="Runs allowed when its worker dies.")] = 3,
    watch_: Annotated[bool, typer.Option("--watch", help="Run it here and show its progress.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Queue a job (run queued jobs with `onebox jobs run`, or pass --watch)."""
    a = get_app()
    job = jobs.submit(
        a,
        type_,
        _parse_spec(spec, spec_file),
        name=name,
        priority=priority,
        resources={"cpus": cpus, "gpus": gpus, "memory_mb": memory_mb},
        max_attempts=max_attempts,
    )
    if not watch_:
        _print_job_line("queued", jobs.job_dict(job), json_out)
        return
    with LocalExecutor(a.settings) as ex:
        info = watch(a, job.id, ex, enabled=not json_out)
    if json_out:
        print_json(info)
    raise_for_outcome(info)


def follow(app: App, job: Any, *, detach: bool, json_out: bool) -> dict[str, Any] | None:
    """What a submitting command does next: with ``detach``, say how to run and track the queued
    job and return None; otherwise run it here with live progress (Ctrl-C cancels it) and return its
    result, raising when it failed or was cancelled."""
    if detach:
        if json_out:
            print_json(jobs.job_dict(job))
        else:
            console.print(
                f"queued {job.id}; `onebox jobs run` executes it, `onebox jobs show {job.id}` tracks it"
            )
        return None
    info = watch(app, job.id, LocalExecutor(settings()), enabled=not json_out, cancel_on_interrupt=True)
    raise_for_outcome(info)
    return {"id": info["id"], "result": info["result"] or {}}


def raise_for_outcome(info: dict[str, Any]) -> None:
    """Turn a job that did not succeed into an error (exit code 1) for commands that waited on it."""
    if info["status"] == state.FAILED:
        raise JobFailedError(f"job {info['id']} failed: {info['error']}", job=info["id"])
    if info["status"] == state.CANCELLED:
        raise JobFailedError(f"job {info['id']} was cancelled", job=info["id"])


def _report_tick(report: TickReport, out: Console) -> None:
    for job_id in report.reattached:
        out.print(f"re-attached to running job {job_id}")
    for job_id in report.started:
        out.print(f"started {job_id}")
    for job_id, reason in report.killed:
        out.print(f"[red]killed[/] {job_id}: {reason}")
    for job_id, status in report.finished:
        out.print(f"{job_id} {_styled(status)}")


@app.command()
def run(
    forever: Annotated[bool, typer.Option("--forever", help="Keep waiting for new jobs.")] = False,
    poll: Annotated[float, typer.Option(help="Seconds between scheduling passes.")] = 0.5,
    cpus: Annotated[float | None, typer.Option(help="CPUs to hand out (default: all).")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs to hand out (default: all).")] = None,
    memory_mb: Annotated[int | None, typer.Option(help="Memory to hand out (MiB; default: all).")] = None,
    heartbeat_timeout: Annotated[float, typer.Option(help="Kill a worker silent this long (s).")] = 60.0,
    cancel_grace: Annotated[float, typer.Option(help="Seconds a cancelled job gets before SIGKILL.")] = 30.0,
) -> None:
    """Run the local executor in the foreground until the queue is empty (or --forever).

    Ctrl+C stops supervising; running workers go on and the next `onebox jobs run` re-attaches."""
    get_app()  # the store exists and is migrated before the executor looks at it
    if poll <= 0:
        raise InvalidInputError("invalid poll", problems=[Problem("poll", "must be > 0")])
    ex = LocalExecutor(
        settings(),
        _capacity(cpus, gpus, memory_mb),
        heartbeat_timeout=heartbeat_timeout,
        cancel_grace=cancel_grace,
    )
    err_console.print(f"executor on {ex.host}: {ex.capacity} (Ctrl+C stops supervising)")
    try:
        ex.run_until(
            (lambda: False) if forever else ex.idle, poll=poll, on_tick=lambda r: _report_tick(r, err_console)
        )
    except KeyboardInterrupt:
        if ex.workers:
            err_console.print(
                f"stopped supervising; {len(ex.workers)} running job(s) go on and are re-attached by the "
                "next `onebox jobs run`"
            )
        raise
    finally:
        ex.close()
    err_console.print("queue is empty")


class _Watcher:
    """The rich progress bar of one job, fed from its latest metrics."""

    def __init__(self, progress: Progress, description: str) -> None:
        self.progress = progress
        self.task: TaskID = progress.add_task(description, total=None, step="", stats="", eta="", status="")
        self.last_status: str | None = None
        self.last_attempt = 0

    def update(self, info: dict[str, Any]) -> None:
        m = info["metrics"] or {}
        done, total = m.get("done"), m.get("total")
        step = ""
        if isinstance(done, int | float):
            step = f"{done:g}/{total:g}" if isinstance(total, int | float) else f"{done:g}"
        eta = m.get("eta_s")
        if info["status"] != self.last_status or info["attempts"] != self.last_attempt:
            if info["status"] == state.QUEUED and info["error"]:
                self.progress.console.print(f"[yellow]{info['error']}[/]; re-queued")
            elif info["status"] == state.RUNNING:
                self.progress.console.print(
                    f"{info['id']} running (attempt {info['attempts']} of {info['max_attempts']})"
                )
            self.last_status, self.last_attempt = info["status"], info["attempts"]
        self.progress.update(
            self.task,
            total=total if isinstance(total, int | float) and total > 0 else None,
            completed=done if isinstance(done, int | float) else 0,
            step=step,
            stats=_metric_text(m),
            eta=f"ETA {_duration(eta)}"
            if isinstance(eta, int | float) and info["status"] == state.RUNNING
            else "",
            status=_styled(info["status"]),
        )


def watch(
    app: App,
    job_id: str,
    executor: LocalExecutor | None,
    *,
    poll: float = 0.5,
    enabled: bool = True,
    cancel_on_interrupt: bool = False,
    out: Console | None = None,
) -> dict[str, Any]:
    """Drive ``executor`` (if given) and show the job's progress until it ends; returns ``job_dict``.

    The bar shows step/total, loss and tokens/s from the job's latest metrics (``ctx.progress(step,
    total, loss=..., tokens_per_s=...)``) and the ETA the job context derives. If another executor
    already runs this home's jobs, this one steps aside and the job is only watched. Ctrl+C
    detaches (the job goes on), or with ``cancel_on_interrupt`` cancels it gracefully first and
    keeps watching until it has stopped (a second Ctrl+C detaches).
    """
    job = jobs.get(app, job_id)
    out = out or err_console
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[step]}"),
        TextColumn("{task.fields[stats]}"),
        TextColumn("{task.fields[eta]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=out,
        disable=not enabled,
    )
    watcher = _Watcher(progress, f"{job.name} {job.id}")
    ex = executor
    interrupted = False
    with progress:
        while True:
            try:
                if ex is not None:
                    try:
                        ex.tick()
                    except ExecutorBusyError as exc:
                        progress.console.print(f"{exc.message}; watching only")
                        ex = None
                info = jobs.job_dict(jobs.get(app, job.id))
                watcher.update(info)
                if info["status"] in state.TERMINAL and (ex is None or ex.is_finished(job.id)):
                    break  # ended, and our worker was reaped so its resources are free again
                time.sleep(poll)
            except KeyboardInterrupt:
                if not cancel_on_interrupt or interrupted:
                    progress.console.print(
                        f"detached; {job.id} goes on (`onebox jobs run` supervises it, "
                        f"`onebox jobs cancel {job.id}` stops it)"
                    )
                    raise
                interrupted = True
                progress.console.print(f"cancelling {job.id}; Ctrl+C again to detach")
                jobs.cancel(app, job.id)
    if enabled:
        colour = STATUS_STYLE.get(info["status"], "white")
        tail = f": {info['error']}" if info["error"] else ""
        out.print(f"[{colour}]{info['id']} {info['status']}[/]{tail}", highlight=False)
    return info
