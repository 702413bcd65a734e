"""Users, projects and memberships: who exists and what role they have where.

Every change is made by ``app.actor()`` (the API's caller or the local operator), checked against
its permissions, and audited.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from onebox.errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    Problem,
)
from onebox.security.passwords import check_strength, hash_password, verify_password
from onebox.security.principal import validate_role
from onebox.services.context import App
from onebox.services.names import name_key, validate_name, validate_text
from onebox.services.projects import ensure_project, get_project
from onebox.store.tables import ApiKey, Membership, Project, User, WebSession, new_id


def _get_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == name_key(username)))
    if user is None:
        raise NotFoundError(f"user {username!r} does not exist")
    return user


def user_dict(session: Session, user: User) -> dict[str, Any]:
    rows = session.execute(
        select(Project.name, Membership.role)
        .join(Membership, Membership.project_id == Project.id)
        .where(Membership.user_id == user.id)
        .order_by(Project.name)
    ).all()
    return {
        "id": user.id,
        "username": user.username,
        "display_name": user.display_name,
        "is_admin": user.is_admin,
        "status": user.status,
        "must_change_password": user.must_change_password,
        "projects": {name: role for name, role in rows},
        "last_login_at": user.last_login_at.isoformat() if user.last_login_at else None,
        "created_at": user.created_at.isoformat(),
    }


def _validate_username(username: str) -> str:
    name = validate_name(username, "username")
    if len(name) > 64:
        raise InvalidInputError("invalid username", problems=[Problem("username", "is longer than 64")])
    return name_key(name)


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def bootstrap_admin(app: App, username: str = "admin", password: str | None = None) -> dict[str, Any]:
    """Create the first admin once. With no password given (argument or ``ONEBOX_ADMIN_PASSWORD``)
    a random one is generated, returned once, and must be changed at first login: no default
    password ever exists. Does nothing when an admin exists."""
    with app.db.session() as s:
        if s.scalar(select(func.count()).select_from(User).where(User.is_admin.is_(True))):
            return {"created": False}
        password = password or app.settings.admin_password
        generated = password is None
        if password is None:
            password = generate_password()
        else:
            check_strength(password, username, "admin_password")
        user = User(
            id=new_id("usr"),
            username=_validate_username(username),
            display_name="Administrator",
            password_hash=hash_password(password),
            is_admin=True,
            status="active",
            must_change_password=generated,
        )
        s.add(user)
        project = ensure_project(s, app.settings.project)
        s.flush()
        s.add(Membership(user_id=user.id, project_id=project.id, role="admin"))
        s.flush()
        out = {"created": True, "user": user_dict(s, user), "password": password if generated else None}
    app.audit("user.bootstrap", resource_type="user", resource_id=user.id, username=user.username)
    return out


def create_user(
    app: App,
    username: str,
    password: str,
    *,
    project: str | None = None,
    role: str = "developer",
    is_admin: bool = False,
    display_name: str = "",
) -> dict[str, Any]:
    actor = app.actor()
    actor.require("admin", "create users")
    if is_admin and not actor.is_admin:
        raise PermissionDeniedError("only a system administrator may create another one")
    username = _validate_username(username)
    problems = []
    try:
        check_strength(password, username)
    except InvalidInputError as exc:
        problems += exc.problems
    try:
        validate_role(role)
    except InvalidInputError as exc:
        problems += exc.problems
    if problems:
        raise InvalidInputError("invalid user", problems=problems)
    display_name = validate_text(display_name, "display_name", 128) or ""
    with app.db.session() as s:
        if s.scalar(select(User).where(User.username == username)) is not None:
            raise AlreadyExistsError(f"user {username!r} already exists")
        target = _project_for(s, app, project)
        user = User(
            id=new_id("usr"),
            username=username,
            display_name=display_name,
            password_hash=hash_password(password),
            is_admin=is_admin,
            status="active",
        )
        s.add(user)
        s.flush()
        s.add(Membership(user_id=user.id, project_id=target.id, role=role))
        s.flush()
        out = user_dict(s, user)
    app.audit("user.created", resource_type="user", resource_id=out["id"], username=username, role=role)
    return out


def _project_for(session: Session, app: App, project: str | None) -> Project:
    """A project the actor administers: its own unless a system admin names another."""
    actor = app.actor()
    name = project or actor.project
    target = get_project(session, name)
    if target.id != actor.project_id and not actor.is_admin:
        raise NotFoundError(f"project {name!r} does not exist")  # never confirm other projects exist
    return target


def list_users(app: App) -> list[dict[str, Any]]:
    """System admins see everyone; project admins see their project's members."""
    actor = app.actor()
    actor.require("admin", "list users")
    with app.db.session() as s:
        q = select(User).order_by(User.username)
        if not actor.is_admin:
            q = q.join(Membership, Membership.user_id == User.id).where(
                Membership.project_id == actor.project_id
            )
        return [user_dict(s, u) for u in s.scalars(q)]


def show_user(app: App, username: str) -> dict[str, Any]:
    actor = app.actor()
    with app.db.session() as s:
        user = _get_user(s, username)
        if user.id != actor.user_id:
            actor.require("admin", "see other users")
            if not actor.is_admin and not _member(s, user.id, actor.project_id):
                raise NotFoundError(f"user {username!r} does not exist")
        return user_dict(s, user)


def _member(session: Session, user_id: str, project_id: str) -> Membership | None:
    return session.scalar(
        select(Membership).where(Membership.user_id == user_id, Membership.project_id == project_id)
    )


def set_member(app: App, username: str, role: str, project: str | None = None) -> dict[str, Any]:
    """Add a user to a project or change their role there."""
    app.actor().require("admin", "change memberships")
    validate_role(role)
    with app.db.session() as s:
        user = _get_user(s, username)
        target = _project_for(s, app, project)
        m = _member(s, user.id, target.id)
        if m is None:
            s.add(Membership(user_id=user.id, project_id=target.id, role=role))
        else:
            m.role = role
        s.flush()
        out = user_dict(s, user)
    app.audit("member.set", resource_type="user", resource_id=out["id"], project=target.name, role=role)
    return out


def remove_member(app: App, username: str, project: str | None = None) -> dict[str, Any]:
    app.actor().require("admin", "change memberships")
    with app.db.session() as s:
        user = _get_user(s, username)
        target = _project_for(s, app, project)
        m = _member(s, user.id, target.id)
        if m is None:
            raise NotFoundError(f"{username!r} is not a member of {target.name!r}")
        s.delete(m)
        # keys and sessions of that membership stop working at once
        now = datetime.now(UTC)
        for k in s.scalars(select(ApiKey).where(ApiKey.user_id == user.id, ApiKey.project_id == target.id)):
            k.revoked_at = k.revoked_at or now
        for w in s.scalars(
            select(WebSession).where(WebSession.user_id == user.id, WebSession.project_id == target.id)
        ):
            s.delete(w)
        s.flush()
        out = user_dict(s, user)
    app.audit("member.removed", resource_type="user", resource_id=out["id"], project=target.name)
    return out


def set_status(app: App, username: str, status: str) -> dict[str, Any]:
    """Disable (every key and session stops at once) or re-enable a user."""
    actor = app.actor()
    actor.require("admin", "disable users")
    if status not in ("active", "disabled"):
        raise InvalidInputError("invalid status", problems=[Problem("status", "must be active or disabled")])
    with app.db.session() as s:
        user = _get_user(s, username)
        if user.id == actor.user_id and status == "disabled":
            raise ConflictError("you cannot disable yourself")
        if user.is_admin and not actor.is_admin:
            raise NotFoundError(f"user {username!r} does not exist")
        user.status = status
        if status == "disabled":
            for w in s.scalars(select(WebSession).where(WebSession.user_id == user.id)):
                s.delete(w)
        user.failed_logins, user.locked_until = 0, None
        s.flush()
        out = user_dict(s, user)
    app.audit(f"user.{status}", resource_type="user", resource_id=out["id"], username=out["username"])
    return out


def change_password(
    app: App, new_password: str, old_password: str | None = None, username: str | None = None
) -> None:
    """Users change their own password (old one required); admins reset others' (which then must
    be changed at next login)."""
    actor = app.actor()
    with app.db.session() as s:
        user = _get_user(s, username) if username else s.get(User, actor.user_id)
        if user is None:
            raise NotFoundError("the acting identity is not a user (the local operator has no password)")
        own = user.id == actor.user_id
        if own:
            if old_password is None or not verify_password(user.password_hash, old_password):
                raise InvalidInputError(
                    "the current password is wrong", problems=[Problem("old_password", "does not match")]
                )
        else:
            actor.require("admin", "reset passwords")
            if not actor.is_admin and (user.is_admin or not _member(s, user.id, actor.project_id)):
                raise NotFoundError(f"user {username!r} does not exist")
        check_strength(new_password, user.username, "new_password")
        if old_password is not None and new_password == old_password:
            raise InvalidInputError(
                "the new password equals the old one", problems=[Problem("new_password", "is unchanged")]
            )
        user.password_hash = hash_password(new_password)
        user.must_change_password = not own
        user.failed_logins, user.locked_until = 0, None
        # other sessions end: whoever knew the old password is logged out
        for w in s.scalars(select(WebSession).where(WebSession.user_id == user.id)):
            s.delete(w)
        uid = user.id
    app.audit("user.password_changed", resource_type="user", resource_id=uid, reset=not own)


# -- projects --------------------------------------------------------------------------------------


def project_dict(p: Project) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "description": p.description,
        "status": p.status,
        "quotas": {
            "rpm": p.rpm_limit,
            "tpm": p.tpm_limit,
            "jobs": p.max_concurrent_jobs,
            "storage_bytes": p.storage_limit_bytes,
        },
        "created_at": p.created_at.isoformat(),
    }


def create_project(app: App, name: str, description: str = "") -> dict[str, Any]:
    actor = app.actor()
    if not actor.is_admin:
        raise PermissionDeniedError("only a system administrator may create projects")
    name = validate_name(name, "name")
    description = validate_text(description, "description", 4000) or ""
    with app.db.session() as s:
        if s.scalar(select(Project).where(func.lower(Project.name) == name.lower())) is not None:
            raise AlreadyExistsError(f"project {name!r} already exists")
        p = Project(id=new_id("prj"), name=name, description=description, status="active")
        s.add(p)
        s.flush()
        if actor.user_id != "local":
            s.add(Membership(user_id=actor.user_id, project_id=p.id, role="admin"))
        out = project_dict(p)
    app.audit("project.created", resource_type="project", resource_id=out["id"], name=name)
    return out


def list_projects(app: App) -> list[dict[str, Any]]:
    """The projects the actor belongs to (all of them for a system admin)."""
    actor = app.actor()
    with app.db.session() as s:
        q = select(Project).order_by(Project.name)
        if not actor.is_admin:
            q = q.join(Membership, Membership.project_id == Project.id).where(
                Membership.user_id == actor.user_id
            )
        return [project_dict(p) for p in s.scalars(q)]
