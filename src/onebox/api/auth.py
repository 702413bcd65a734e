"""Authentication and authorization for every route, in one place.

:class:`AuthenticationMiddleware` authenticates each request (``Authorization: Bearer <API key>``
or the console's session cookie) before anything else looks at it, so an anonymous client learns
nothing from routing, body parsing or validation: it gets 401 for every path except the few public
routes. The app-level dependency :func:`authorize` then decides the permission the matched route
needs from :data:`PERMISSIONS` (by method and route template), checks it, and leaves the caller on
``request.state``: ``principal`` and ``onebox`` (the store acting as that principal, so services
only ever see the caller's project).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request, Security
from fastapi.security import APIKeyCookie, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from onebox.errors import AuthenticationError, OneboxError, PermissionDeniedError
from onebox.security.principal import Principal
from onebox.services import auth
from onebox.services.context import App

SESSION_COOKIE = "onebox_session"
CSRF_HEADER = "x-csrf-token"

PUBLIC: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/health"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/docs/oauth2-redirect"),
        ("GET", "/redoc"),
        ("POST", "/api/v1/auth/login"),
    }
)
"""Routes that need no identity (``/metrics`` joins them when ``metrics_public`` is set); literal
paths only, so the middleware can decide before routing."""

PERMISSIONS: dict[tuple[str, str], str | None] = {
    ("POST", "/api/v1/kbs/{kb}/search"): "infer",
    ("POST", "/api/v1/kbs/{kb}/ask"): "infer",
    ("GET", "/metrics"): "read",
    ("GET", "/api/v1/metrics/query"): "read",
    ("GET", "/api/v1/nodes"): "read",
    ("GET", "/api/v1/topology/jobs/{id}"): "read",
    ("GET", "/api/v1/topology/deployments/{name}"): "read",
    ("GET", "/api/v1/search"): "read",
    ("POST", "/api/v1/search/rebuild"): "admin",
    ("GET", "/api/v1/events"): "read",
    ("POST", "/api/v1/events/{event_id}/ack"): "operate",
    ("GET", "/api/v1/audit"): "audit",
    ("GET", "/api/v1/audit/verify"): "audit",
    ("GET", "/api/v1/auth/me"): None,
    ("POST", "/api/v1/auth/logout"): None,
    ("POST", "/api/v1/auth/password"): None,
    ("GET", "/api/v1/keys"): None,
    ("POST", "/api/v1/keys"): None,
    ("DELETE", "/api/v1/keys/{key}"): None,
    ("GET", "/api/v1/projects"): None,
    ("GET", "/api/v1/users/{username}"): None,
}
"""Exceptions to the defaults (services check finer rules, e.g. whose keys one may revoke).
``None``: any authenticated identity."""

PREFIX_PERMISSIONS: tuple[tuple[str, str, str], ...] = (
    ("/v1/", "*", "infer"),
    ("/api/v1/deployments", "WRITE", "deploy"),
    ("/api/v1/users", "*", "admin"),
    ("/api/v1/projects", "WRITE", "admin"),
)
"""(path prefix, methods, permission): ``*`` any method, ``WRITE`` anything but GET/HEAD."""

PASSWORD_CHANGE_ALLOWED = frozenset({"/api/v1/auth/me", "/api/v1/auth/logout", "/api/v1/auth/password"})

_bearer = HTTPBearer(auto_error=False, description="An onebox API key: `Authorization: Bearer obx_...`.")
_cookie = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, description="Console session (web login).")


def permission_for(method: str, path: str) -> str | None:
    """The permission a route needs: explicit entry, then prefix rule, then read/write by method."""
    method = method.upper()
    if (method, path) in PERMISSIONS:
        return PERMISSIONS[(method, path)]
    write = method not in ("GET", "HEAD")
    for prefix, methods, perm in PREFIX_PERMISSIONS:
        if path.startswith(prefix) and (methods == "*" or (methods == "WRITE" and write)):
            return perm
    return "write" if write else "read"


def is_public(request: Request, method: str, path: str) -> bool:
    if (method, path) in PUBLIC:
        return True
    return path == "/metrics" and bool(request.app.state.onebox.settings.metrics_public)


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def bearer_key(request: Request) -> str | None:
    """The API key of an ``Authorization`` header; a header that is there but malformed is an
    error, not an anonymous request."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip() or " " in value.strip():
        raise AuthenticationError("malformed Authorization header: expected 'Bearer <API key>'")
    return value.strip()


async def authenticate(request: Request) -> Principal:
    onebox: App = request.app.state.onebox
    source = client_address(request)
    key = bearer_key(request)
    if key is not None:
        return await asyncio.to_thread(auth.authenticate_key, onebox, key, source=source)
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        return await asyncio.to_thread(
            auth.authenticate_session, onebox, token, method=request.method,
            csrf=request.headers.get(CSRF_HEADER), source=source,
        )  # fmt: skip
    raise AuthenticationError("authentication required: send 'Authorization: Bearer <API key>'")


class AuthenticationMiddleware:
    """Authenticate before routing, body parsing and validation run (pure ASGI, streams untouched)."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["app"] = self.fastapi_app  # Request.app before the router sets it
        request = Request(scope)
        # PUBLIC holds literal paths, so the raw path decides without matching routes twice
        if not is_public(request, request.method.upper(), scope["path"]):
            try:
                principal = await authenticate(request)
            except OneboxError as exc:
                from onebox.api.errors import error_response

                openai = scope["path"] == "/v1" or scope["path"].startswith("/v1/")
                await error_response(exc, openai=openai)(scope, receive, send)
                return
            scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def install_auth(app: FastAPI) -> None:
    """Add the authentication middleware (the dependency is set on the app at construction)."""
    app.add_middleware(AuthenticationMiddleware, fastapi_app=app)


async def authorize(
    request: Request,
    _bearer_doc: Any = Security(_bearer),
    _cookie_doc: Any = Security(_cookie),
) -> None:
    """App-level dependency: every route passes here after the middleware authenticated."""
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    method = request.method.upper()
    if is_public(request, method, path):
        return
    principal = getattr(request.state, "principal", None) or await authenticate(request)
    if principal.password_change_required and path not in PASSWORD_CHANGE_ALLOWED:
        raise PermissionDeniedError(
            "change your password first (POST /api/v1/auth/password): it was generated or reset"
        )
    permission = permission_for(method, path)
    if permission is not None:
        principal.require(permission, f"{method} {path}")
    request.state.principal = principal
    request.state.onebox = request.app.state.onebox.acting_as(principal)


def principal_of(request: Request) -> Principal:
    return request.state.principal  # type: ignore[no-any-return]


def onebox_for(request: Request) -> App:
    """The store as the authenticated caller sees it."""
    return request.state.onebox  # type: ignore[no-any-return]
