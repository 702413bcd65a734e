"""Output helpers shared by commands: JSON for scripts, rich tables and progress bars for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from onebox.progress import ProgressFn

console = Console()
err_console = Console(stderr=True)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def human_count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


BYTE_STAGES = ("store", "checkout", "hash")
"""Stages whose counts are bytes (shown as sizes rather than N/M)."""


class _CountColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        total = task.total
        if task.fields.get("bytes"):
            return Text(f"{human_size(int(task.completed))}/{human_size(int(total or 0))}")
        return Text(f"{int(task.completed)}/{int(total) if total is not None else '?'}")


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[ProgressFn]:
    """Yield a ProgressFn drawing one bar per stage on stderr (stdout stays clean for --json)."""
    if not enabled:
        yield lambda *_: None
        return
    bar = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description:<30}"),
        BarColumn(),
        _CountColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    )
    tasks: dict[str, TaskID] = {}

    def report(stage: str, done: int, total: int | None) -> None:
        if stage not in tasks:
            is_bytes = any(word in BYTE_STAGES for word in stage.split())
            tasks[stage] = bar.add_task(stage, total=total, bytes=is_bytes)
        bar.update(tasks[stage], completed=done, total=total)

    with bar:
        yield report
