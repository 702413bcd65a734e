"""HTTP hardening for the gateway: a request-body size limit and security headers.

Both are plain ASGI middleware (not ``BaseHTTPMiddleware``), so streamed answers and client
disconnects pass through them untouched. :func:`install_middleware` adds them to an app.

The body limit answers 413 before the app runs when ``Content-Length`` is too large, and counts
bytes as they arrive for chunked bodies (which announce no length): once over, the app's read
fails and the client gets the same 413, in OpenAI's error shape under ``/v1`` and onebox's
elsewhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from onebox.api.errors import error_response
from onebox.config import Settings
from onebox.errors import InputTooLargeError, Problem

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPENAI_PREFIX = "/v1"
API_PREFIXES = ("/v1", "/api/", "/health", "/metrics", "/openapi.json")
"""Paths that answer JSON (or metrics) to programs; everything else is the console."""
DOCS_PREFIXES = ("/docs", "/redoc")
"""FastAPI's interactive docs load their own inline script; they get no page CSP."""

CONSOLE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
"""Console pages: scripts, styles, fonts and XHR from this server only; no inline script, no
plugins, no framing (clickjacking)."""
API_CSP = "default-src 'none'; frame-ancestors 'none'"
"""API answers are data, never documents: nothing in them may load or run."""
HSTS = "max-age=31536000"


def _under(path: str, prefix: str) -> bool:
    return path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/")


def is_openai_path(path: str) -> bool:
    return _under(path, OPENAI_PREFIX)


def is_api_path(path: str) -> bool:
    return any(_under(path, p) for p in API_PREFIXES)


class _BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when the body passes the limit. An HTTPException because FastAPI
    turns any other error while reading a body into a 400; the middleware replaces whatever
    response that produces with its own 413."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail="request body too large")


def too_large_error(limit: int, length: int | None = None) -> InputTooLargeError:
    size = f" ({length} bytes)" if length is not None else ""
    return InputTooLargeError(
        f"request body{size} is larger than the limit of {limit} bytes",
        problems=[
            Problem(
                "body", f"larger than {limit} bytes", "send a smaller body, or raise ONEBOX_MAX_UPLOAD_BYTES"
            )
        ],
        limit=limit,
    )


class BodySizeLimitMiddleware:
    """413 for request bodies over ``max_bytes`` (0: no limit), announced or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        openai = is_openai_path(scope.get("path", ""))
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            await self._reject(scope, receive, send, openai, length)
            return
        state = {"seen": 0, "over": False, "started": False}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.max_bytes:
                    state["over"] = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:
                return  # the app's answer to the failed read is replaced by ours
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await self._reject(scope, receive, send, openai, None)

    async def _reject(
        self, scope: Scope, receive: Receive, send: Send, openai: bool, length: int | None
    ) -> None:
        response = error_response(too_large_error(self.max_bytes, length), openai=openai)
        response.status_code = 413
        response.headers["connection"] = "close"  # the rest of the body is not read
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class SecurityHeadersMiddleware:
    """Adds security headers to every HTTP response without replacing ones the app set:
    nosniff, no framing, no referrer, a CSP (strict for console pages, deny-all for API data),
    ``Cache-Control: no-store`` on API answers (they may carry keys and tokens), and HSTS only
    when the request came over TLS (HSTS over plain HTTP is ignored by browsers and misleading)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = security_headers(scope.get("path", ""), tls=scope.get("scheme") == "https")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in extra if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def security_headers(path: str, *, tls: bool) -> list[tuple[bytes, bytes]]:
    """The headers :class:`SecurityHeadersMiddleware` adds for ``path``."""
    out = {
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
        "cross-origin-opener-policy": "same-origin",
        "permissions-policy": "camera=(), microphone=(), geolocation=()",
    }
    if is_api_path(path):
        out["content-security-policy"] = API_CSP
        out["cache-control"] = "no-store"
    elif not any(_under(path, p) for p in DOCS_PREFIXES):
        out["content-security-policy"] = CONSOLE_CSP
    if tls:
        out["strict-transport-security"] = HSTS
    return [(k.encode(), v.encode()) for k, v in out.items()]


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """Add the body limit (``settings.max_upload_bytes``; 0 disables it) and security headers.
    Call once from ``create_app`` before the app starts; the headers also cover the 413s."""
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(SecurityHeadersMiddleware)  # added last = outermost
