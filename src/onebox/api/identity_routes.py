"""Identity and audit under ``/api/v1``: login/logout, users, projects, API keys, the audit log.
Thin over ``services/identity``, ``services/apikeys``, ``services/auth`` and the audit log."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from onebox.api.auth import SESSION_COOKIE, client_address, onebox_for, principal_of
from onebox.security.audit_query import AuditFilter, list_records
from onebox.services import apikeys, auth, identity

router = APIRouter(prefix="/api/v1")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(Strict):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    project: str | None = Field(
        default=None, max_length=128, description="Project to work in (default: yours)."
    )


class MeOut(BaseModel):
    user_id: str
    username: str
    project: str
    project_id: str
    role: str
    is_admin: bool
    permissions: list[str]
    key_id: str | None = Field(description="The API key used, if any.")
    must_change_password: bool
    csrf_token: str | None = Field(
        default=None, description="Console sessions: send it back as X-CSRF-Token on POST/PUT/PATCH/DELETE."
    )


class PasswordIn(Strict):
    new_password: str = Field(min_length=1, max_length=1024)
    old_password: str | None = Field(default=None, max_length=1024, description="Required for your own.")
    username: str | None = Field(
        default=None, max_length=64, description="An admin resetting someone else's."
    )


class UserIn(Strict):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    role: str = Field(default="developer", description="admin, operator, developer or viewer.")
    project: str | None = Field(default=None, max_length=128)
    is_admin: bool = False
    display_name: str = Field(default="", max_length=128)


class UserOut(BaseModel):
    id: str
    username: str
    display_name: str
    is_admin: bool
    status: str
    must_change_password: bool
    projects: dict[str, str] = Field(description="Project name -> role.")
    last_login_at: str | None
    created_at: str


class UserPatch(Strict):
    status: str = Field(description="active or disabled.")


class MemberIn(Strict):
    project: str | None = Field(default=None, max_length=128)
    role: str


class ProjectIn(Strict):
    name: str = Field(min_length=1, max_length=128)
    description: str = Field(default="", max_length=4000)


class ProjectOut(BaseModel):
    id: str
    name: str
    description: str
    status: str
    quotas: dict[str, int | None]
    created_at: str


class KeyIn(Strict):
    name: str = Field(default="", max_length=128)
    user: str | None = Field(default=None, max_length=64, description="Owner (admins only; default: you).")
    project: str | None = Field(default=None, max_length=128)
    scopes: list[str] = Field(default_factory=list, description="Narrow the key (empty: the role's rights).")
    expires_days: float | None = Field(default=90, description="Days until it expires; null: never.")
    rpm: int | None = Field(default=None, description="Requests per minute on /v1 for this key.")
    tpm: int | None = Field(default=None, description="Tokens per minute on /v1 for this key.")


class KeyOut(BaseModel):
    id: str
    prefix: str
    name: str
    user: str
    project: str
    scopes: list[str]
    state: str = Field(description="active, expired or revoked.")
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None
    quotas: dict[str, int | None]
    created_at: str


class NewKeyOut(KeyOut):
    secret: str = Field(description="The key itself. Shown this once; store it now.")


class AuditOut(BaseModel):
    seq: int
    at: str
    actor: str
    project_id: str | None
    action: str
    resource_type: str
    resource_id: str
    outcome: str
    source: str
    details: dict[str, Any]


class VerifyOut(BaseModel):
    ok: bool
    checked: int
    head_seq: int
    problems: list[dict[str, Any]]


async def _call(request: Request, fn: Any, *args: Any, **kw: Any) -> Any:
    return await asyncio.to_thread(fn, onebox_for(request), *args, **kw)


def _me(request: Request, csrf: str | None = None) -> dict[str, Any]:
    p = principal_of(request)
    return {
        "user_id": p.user_id,
        "username": p.username,
        "project": p.project,
        "project_id": p.project_id,
        "role": p.role,
        "is_admin": p.is_admin,
        "permissions": sorted(p.permissions),
        "key_id": p.key_id,
        "must_change_password": p.password_change_required,
        "csrf_token": csrf,
    }


# -- sessions ----------------------------------------------------------------------------------------


@router.post("/auth/login", response_model=MeOut, tags=["auth"], summary="Log in (console session cookie)")
async def login(request: Request, response: Response, body: LoginIn) -> dict[str, Any]:
    onebox = request.app.state.onebox
    token, csrf, principal = await asyncio.to_thread(
        auth.login, onebox, body.username, body.password, project=body.project, source=client_address(request)
    )
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=onebox.settings.session_ttl_seconds,
        httponly=True,
        secure=request.url.scheme == "https",
        samesite="strict",
        path="/",
    )
    request.state.principal = principal
    return _me(request, csrf)


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT, tags=["auth"], summary="Log out")
async def logout(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await asyncio.to_thread(auth.logout, request.app.state.onebox, token)
    resp = Response(status_code=status.HTTP_204_NO_CONTENT)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


@router.get("/auth/me", response_model=MeOut, tags=["auth"], summary="Who am I")
async def me(request: Request) -> dict[str, Any]:
    token = request.cookies.get(SESSION_COOKIE)
    csrf = None
    if token and principal_of(request).key_id is None:
        csrf = await asyncio.to_thread(auth.session_csrf, request.app.state.onebox, token)
    return _me(request, csrf)


@router.post(
    "/auth/password", status_code=status.HTTP_204_NO_CONTENT, tags=["auth"], summary="Change a password"
)
async def password(request: Request, body: PasswordIn) -> Response:
    await _call(request, identity.change_password, body.new_password, body.old_password, body.username)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- users and projects --------------------------------------------------------------------------------


@router.get("/users", response_model=list[UserOut], tags=["users"], summary="List users")
async def list_users(request: Request) -> Any:
    return await _call(request, identity.list_users)


@router.post("/users", response_model=UserOut, status_code=201, tags=["users"], summary="Create a user")
async def create_user(request: Request, body: UserIn) -> Any:
    return await _call(
        request, identity.create_user, body.username, body.password, project=body.project, role=body.role,
        is_admin=body.is_admin, display_name=body.display_name,
    )  # fmt: skip


@router.get("/users/{username}", response_model=UserOut, tags=["users"], summary="Show a user")
async def show_user(request: Request, username: str) -> Any:
    return await _call(request, identity.show_user, username)


@router.patch("/users/{username}", response_model=UserOut, tags=["users"], summary="Disable or enable a user")
async def patch_user(request: Request, username: str, body: UserPatch) -> Any:
    return await _call(request, identity.set_status, username, body.status)


@router.post("/users/{username}/memberships", response_model=UserOut, tags=["users"], summary="Set a role")
async def set_member(request: Request, username: str, body: MemberIn) -> Any:
    return await _call(request, identity.set_member, username, body.role, body.project)


@router.delete(
    "/users/{username}/memberships/{project}",
    response_model=UserOut,
    tags=["users"],
    summary="Remove from a project",
)
async def remove_member(request: Request, username: str, project: str) -> Any:
    return await _call(request, identity.remove_member, username, project)


@router.get("/projects", response_model=list[ProjectOut], tags=["projects"], summary="Projects you belong to")
async def list_projects(request: Request) -> Any:
    return await _call(request, identity.list_projects)


@router.post(
    "/projects", response_model=ProjectOut, status_code=201, tags=["projects"], summary="Create a project"
)
async def create_project(request: Request, body: ProjectIn) -> Any:
    return await _call(request, identity.create_project, body.name, body.description)


# -- API keys --------------------------------------------------------------------------------------------


@router.get("/keys", response_model=list[KeyOut], tags=["keys"], summary="List API keys you may see")
async def list_keys(
    request: Request, all: bool = Query(False, description="Include revoked and expired.")
) -> Any:
    return await _call(request, apikeys.list_keys, include_inactive=all)


@router.post("/keys", response_model=NewKeyOut, status_code=201, tags=["keys"], summary="Create an API key")
async def create_key(request: Request, body: KeyIn) -> Any:
    return await _call(
        request, apikeys.create_key, name=body.name, username=body.user, project=body.project,
        scopes=body.scopes, expires_days=body.expires_days, rpm=body.rpm, tpm=body.tpm,
    )  # fmt: skip


@router.delete("/keys/{key}", response_model=KeyOut, tags=["keys"], summary="Revoke an API key")
async def revoke_key(request: Request, key: str) -> Any:
    return await _call(request, apikeys.revoke_key, key)


# -- audit ------------------------------------------------------------------------------------------------


@router.get("/audit", response_model=list[AuditOut], tags=["audit"], summary="Audit records, newest first")
async def audit(
    request: Request,
    actor: str | None = Query(None, max_length=128),
    action: str | None = Query(None, max_length=64, description="Exact action or a prefix ending in '.'."),
    outcome: str | None = Query(None, pattern="^(ok|denied|failed)$"),
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> Any:
    onebox = onebox_for(request)
    p = principal_of(request)
    flt = AuditFilter(
        actor=actor, action=action, outcome=outcome, since=since, until=until, limit=limit,
        project_id=None if p.is_admin else p.project_id,
    )  # fmt: skip
    return await asyncio.to_thread(list_records, onebox.db, flt)


@router.get("/audit/verify", response_model=VerifyOut, tags=["audit"], summary="Verify the audit hash chain")
async def audit_verify(request: Request) -> Any:
    onebox = onebox_for(request)
    return (await asyncio.to_thread(onebox.audit_log.verify)).as_dict()
