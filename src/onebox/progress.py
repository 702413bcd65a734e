"""A progress callback type shared by long operations.

Core packages report progress through a plain callable so they never depend on rich or on
a CLI; the CLI turns calls into progress bars and jobs turn them into stored progress.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[str, int, int | None], None]
"""``progress(stage, done, total)``: ``stage`` names the step, ``total`` is None when unknown."""


def null_progress(stage: str, done: int, total: int | None) -> None:
    """Default progress sink that ignores every report."""
