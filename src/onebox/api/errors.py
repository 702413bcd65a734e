"""The one table from onebox errors to HTTP responses, and the handlers that apply it.

Under the OpenAI prefix (``/v1``) errors take OpenAI's shape, because OpenAI clients parse it
(``{"error": {"message", "type", "param", "code"}}``); elsewhere they take onebox's own shape
(``{"error": err.as_dict()}``), which keeps every problem with its field and fix.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from onebox import errors as e

log = logging.getLogger(__name__)
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.]*): (.+)$", re.S)

STATUS: dict[type[e.OneboxError], int] = {
    e.InputTooLargeError: 413,
    e.InvalidInputError: 400,
    e.ConfigError: 400,
    e.AuthenticationError: 401,
    e.PermissionDeniedError: 403,
    e.KeyUnavailableError: 503,
    e.NotFoundError: 404,
    e.ConflictError: 409,
    e.OverloadedError: 429,
    e.DependencyMissingError: 501,
    e.UnavailableError: 503,
    e.OneboxError: 500,
}
"""Status per error class; a subclass takes the status of its nearest listed ancestor."""

OPENAI_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    501: "not_implemented_error",
    503: "service_unavailable_error",
}
"""OpenAI's ``error.type`` per status (``server_error`` for anything else)."""


def status_for(exc: BaseException) -> int:
    """HTTP status of an exception: the table for onebox errors, 500 for anything else."""
    for klass in type(exc).__mro__:
        if klass in STATUS:
            return STATUS[klass]  # type: ignore[index]
    return 500


def _retry_after(exc: BaseException) -> str | None:
    if not isinstance(exc, e.OverloadedError):
        return None
    value = exc.details.get("retry_after", 1)
    try:
        seconds = max(1, math.ceil(float(value)))
    except (TypeError, ValueError):
        seconds = 1
    return str(seconds)


def openai_error_body(exc: BaseException, status: int | None = None) -> dict[str, Any]:
    """``{"error": {...}}`` in OpenAI's shape; ``param`` is the first problem's field."""
    status = status if status is not None else status_for(exc)
    if isinstance(exc, e.OneboxError):
        message = exc.message
        if exc.problems:  # one line: clients show ``message`` as is
            message += ": " + "; ".join(str(p) for p in exc.problems)
        param = exc.problems[0].field if exc.problems else exc.details.get("param")
        code: str | None = exc.details.get("openai_code") or exc.code
    else:
        message, param, code = "internal server error", None, "internal_error"
    return {
        "error": {
            "message": message,
            "type": OPENAI_TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }


def onebox_error_body(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, e.OneboxError):
        return {"error": exc.as_dict()}
    return {"error": {"code": "internal_error", "message": "internal server error"}}


def error_response(exc: BaseException, *, openai: bool) -> JSONResponse:
    """The response for an exception: status from the table, body in the requested shape,
    ``Retry-After`` for overload."""
    status = status_for(exc)
    body = openai_error_body(exc, status) if openai else onebox_error_body(exc)
    headers = {}
    if (retry := _retry_after(exc)) is not None:
        headers["Retry-After"] = retry
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="onebox"'
    return JSONResponse(body, status_code=status, headers=headers)


def validation_error(exc: RequestValidationError) -> e.InvalidInputError:
    """FastAPI's validation error as an ``InvalidInputError`` whose problems name each field
    as the client wrote it (``messages.0.role``, not ``body -> messages -> 0 -> role``)."""
    problems = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        # Union members show up in the location (``str``, ``list[int]``); they mean nothing to users.
        loc = [x for x in loc if not _is_type_tag(x)]
        msg = str(err.get("msg", "invalid value"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        field = ".".join(loc)
        if not field and (m := _FIELD_PREFIX.match(msg)):  # model-level checks say "field: why"
            field, msg = m.group(1), m.group(2)
        problems.append(e.Problem(field or "body", msg))
    if not problems:
        problems.append(e.Problem("body", "invalid request body"))
    return e.InvalidInputError("invalid request", problems=problems)


def _is_type_tag(part: str) -> bool:
    return part in {"str", "int", "float", "bool", "list", "dict", "function-after", "function-before"} or (
        "[" in part and part.endswith("]")
    )


def install_error_handlers(app: FastAPI, openai_shape_prefix: str = "/v1") -> None:
    """Route every error through :func:`error_response`: OpenAI shape under the prefix."""

    def is_openai(request: Request) -> bool:
        path = request.url.path
        return bool(openai_shape_prefix) and (
            path == openai_shape_prefix or path.startswith(openai_shape_prefix.rstrip("/") + "/")
        )

    @app.exception_handler(e.OneboxError)
    async def _onebox(request: Request, exc: e.OneboxError) -> JSONResponse:
        return error_response(exc, openai=is_openai(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc), openai=is_openai(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        message = str(exc.detail) if exc.detail else "error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        if is_openai(request):
            body: dict[str, Any] = {
                "error": {
                    "message": message,
                    "type": OPENAI_TYPES.get(status, "server_error"),
                    "param": None,
                    "code": code,
                }
            }
        else:
            body = {"error": {"code": code, "message": message}}
        return JSONResponse(body, status_code=status, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(exc, openai=is_openai(request))
