"""API keys: created for one user in one project, shown once, stored hashed, revocable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select

from onebox.errors import InvalidInputError, NotFoundError, PermissionDeniedError, Problem
from onebox.security import apikeys
from onebox.security.principal import validate_scopes
from onebox.services.context import App
from onebox.services.identity import _get_user, _member, _project_for
from onebox.services.names import validate_text
from onebox.store.tables import ApiKey, Project, User, new_id

MAX_DAYS = 3650


def key_dict(k: ApiKey, username: str, project: str, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    state = "active"
    if k.revoked_at is not None:
        state = "revoked"
    elif k.expires_at is not None and k.expires_at <= now:
        state = "expired"
    return {
        "id": k.id,
        "prefix": f"obx_{k.prefix}",
        "name": k.name,
        "user": username,
        "project": project,
        "scopes": list(k.scopes or []),
        "state": state,
        "expires_at": k.expires_at.isoformat() if k.expires_at else None,
        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
        "quotas": {"rpm": k.rpm_limit, "tpm": k.tpm_limit},
        "created_at": k.created_at.isoformat(),
    }


def create_key(
    app: App,
    *,
    name: str = "",
    username: str | None = None,
    project: str | None = None,
    scopes: list[str] | None = None,
    expires_days: float | None = 90,
    rpm: int | None = None,
    tpm: int | None = None,
) -> dict[str, Any]:
    """A new key; ``secret`` in the result is the only time the key is ever shown."""
    actor = app.actor()
    if actor.password_change_required:
        raise PermissionDeniedError("change your password before creating keys")
    problems: list[Problem] = []
    try:
        scopes = validate_scopes(scopes)
    except InvalidInputError as exc:
        problems += exc.problems
    if expires_days is not None and not (0 < expires_days <= MAX_DAYS):
        problems.append(Problem("expires_days", f"must be in (0, {MAX_DAYS}]", "or omit it for no expiry"))
    for field, v in (("rpm", rpm), ("tpm", tpm)):
        if v is not None and v < 1:
            problems.append(Problem(field, "must be >= 1", "or omit it for no per-key limit"))
    name = validate_text(name, "name", 128) or ""
    if problems:
        raise InvalidInputError("invalid API key request", problems=problems)
    now = datetime.now(UTC)
    with app.db.session() as s:
        user = s.get(User, actor.user_id) if username is None else _get_user(s, username)
        if user is None:
            raise InvalidInputError(
                "the local operator has no user to own a key",
                problems=[Problem("user", "is required here", "name the user who will own the key")],
            )
        if user.id != actor.user_id:
            actor.require("admin", "create keys for other users")
        target = _project_for(s, app, project)
        member = _member(s, user.id, target.id)
        if member is None and not user.is_admin:
            raise InvalidInputError(
                f"{user.username!r} is not a member of {target.name!r}",
                problems=[
                    Problem("project", "user is not a member", "add them with `onebox users add-member`")
                ],
            )
        secret, prefix, digest = apikeys.new_key()
        k = ApiKey(
            id=new_id("key"),
            prefix=prefix,
            secret_hash=digest,
            name=name,
            user_id=user.id,
            project_id=target.id,
            scopes=scopes,
            expires_at=now + timedelta(days=expires_days) if expires_days else None,
            rpm_limit=rpm,
            tpm_limit=tpm,
        )
        s.add(k)
        s.flush()
        out = key_dict(k, user.username, target.name, now)
    app.audit(
        "key.created", resource_type="api_key", resource_id=out["id"], prefix=out["prefix"], user=out["user"]
    )
    return {**out, "secret": secret}


def _visible(app: App) -> Any:
    """Keys the actor may see: its own; all of its project's for a project admin; all for a system admin."""
    actor = app.actor()
    q = select(ApiKey, User.username, Project.name).join(User, User.id == ApiKey.user_id)
    q = q.join(Project, Project.id == ApiKey.project_id)
    if actor.system_admin:
        return q
    if actor.can("admin"):
        return q.where(ApiKey.project_id == actor.project_id)
    return q.where(ApiKey.user_id == actor.user_id, ApiKey.project_id == actor.project_id)


def list_keys(app: App, *, include_inactive: bool = False) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    q = _visible(app).order_by(ApiKey.created_at)
    if not include_inactive:
        q = q.where(ApiKey.revoked_at.is_(None), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now))
    with app.db.session() as s:
        return [key_dict(k, u, p, now) for k, u, p in s.execute(q)]


def _find(app: App, ref: str) -> Any:
    ref = ref.strip()
    prefix = ref.removeprefix("obx_").split("_")[0] if ref.startswith("obx_") else None
    cond = ApiKey.prefix == prefix if prefix else ApiKey.id == ref
    return _visible(app).where(cond)


def revoke_key(app: App, ref: str) -> dict[str, Any]:
    """Revoke by id (``key_...``) or prefix (``obx_...``); takes effect on the next request."""
    with app.db.session() as s:
        row = s.execute(_find(app, ref)).first()
        if row is None:
            raise NotFoundError(f"API key {ref!r} does not exist")
        k, u, p = row
        k.revoked_at = k.revoked_at or datetime.now(UTC)
        s.flush()
        out = key_dict(k, u, p)
    app.audit("key.revoked", resource_type="api_key", resource_id=out["id"], prefix=out["prefix"])
    return out
