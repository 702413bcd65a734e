"""Job types and their handlers, as import paths so that onebox.jobs never imports services.

A handler is ``run(ctx: JobContext) -> dict`` (the job's result). ``submit`` stores the resolved
path with the job, so a worker runs exactly the handler that was submitted, even when the type was
registered at run time in another process.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from onebox.errors import InvalidInputError, Problem, UnknownJobTypeError

if TYPE_CHECKING:
    from onebox.jobs.context import JobContext

Handler = Callable[["JobContext"], dict[str, Any] | None]

HANDLERS: dict[str, str] = {
    "train": "onebox.services.training:run_train_job",
    "eval": "onebox.services.evaluation:run_eval_job",
    "sleep": "onebox.jobs.builtin:sleep_job",
    "kb_ingest": "onebox.services.kbs:run_ingest_job",
}

_TYPE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def register_handler(job_type: str, path: str) -> None:
    """Map ``job_type`` to ``"package.module:function"`` (imported only when a job runs)."""
    problems = []
    if not _TYPE.match(job_type):
        problems.append(Problem("type", f"{job_type!r} is not a job type", "use 1-32 of a-z 0-9 _ . -"))
    if not _PATH.match(path):
        problems.append(
            Problem("handler", f"{path!r} is not an import path", "write package.module:function")
        )
    if problems:
        raise InvalidInputError("invalid job handler registration", problems=problems)
    HANDLERS[job_type] = path


def handler_path(job_type: str) -> str:
    """The import path registered for ``job_type``; a clear error naming the known types otherwise."""
    try:
        return HANDLERS[job_type]
    except KeyError:
        known = ", ".join(sorted(HANDLERS))
        raise UnknownJobTypeError(
            f"unknown job type {job_type!r}",
            problems=[Problem("type", f"no handler is registered for {job_type!r}", f"use one of {known}")],
        ) from None


def import_handler(path: str, job_type: str = "?") -> Handler:
    """Import ``package.module:function``; a missing module or function is a clear error."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UnknownJobTypeError(
                f"the handler of job type {job_type!r} ({path}) is not installed: no module {exc.name!r}"
            ) from exc
        raise  # a module that exists but fails to import is a bug: keep its traceback
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UnknownJobTypeError(f"the handler of job type {job_type!r} ({path}) has no function {attr!r}")
    return fn  # type: ignore[no-any-return]


def resolve_handler(job_type: str) -> Handler:
    """The handler function of ``job_type``, imported now."""
    return import_handler(handler_path(job_type), job_type)
