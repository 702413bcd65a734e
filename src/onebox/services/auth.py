"""Authentication: API keys, console logins (rate-limited) and console sessions.

Every failure raises the same :class:`AuthenticationError` wording for "no such key/user" and
"wrong secret", so answers never reveal which identities exist; failures are audited.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from onebox.errors import AuthenticationError, PermissionDeniedError, QuotaExceededError
from onebox.security import apikeys
from onebox.security.passwords import DUMMY_HASH, hash_password, needs_rehash, verify_password
from onebox.security.principal import Principal
from onebox.services.context import App
from onebox.services.names import name_key
from onebox.store.tables import ApiKey, Membership, Project, User, WebSession

KEY_USE_EVERY = timedelta(minutes=1)
"""A key's ``last_used_at`` and its ``key.used`` audit record are written at most this often."""

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _principal(user: User, project: Project, role: str, *, key: ApiKey | None, source: str) -> Principal:
    return Principal(
        user_id=user.id,
        username=user.username,
        project_id=project.id,
        project=project.name,
        role="admin" if user.is_admin else role,
        is_admin=user.is_admin,
        key_id=key.id if key is not None else None,
        scopes=frozenset(key.scopes or []) if key is not None else frozenset(),
        source=source,
        password_change_required=user.must_change_password and key is None,
    )


def _role_in(session: Session, user: User, project_id: str) -> str | None:
    m = session.scalar(
        select(Membership).where(Membership.user_id == user.id, Membership.project_id == project_id)
    )
    if m is not None:
        return m.role
    return "admin" if user.is_admin else None


def authenticate_key(app: App, key: str, *, source: str = "", now: datetime | None = None) -> Principal:
    now = now or datetime.now(UTC)
    prefix = apikeys.parse_prefix(key)
    if prefix is None:
        raise AuthenticationError("malformed API key: expected obx_<12 hex>_<secret>")
    used = False
    with app.db.session() as s:
        k = s.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
        # hash and compare even when the prefix is unknown: same work either way
        ok = apikeys.matches(key, k.secret_hash if k is not None else "0" * 64) and k is not None
        reason = None
        if not ok or k is None:
            reason = "invalid API key"
        elif k.revoked_at is not None:
            reason = "this API key was revoked"
        elif k.expires_at is not None and k.expires_at <= now:
            reason = "this API key has expired"
        user = s.get(User, k.user_id) if k is not None and reason is None else None
        project = s.get(Project, k.project_id) if k is not None and reason is None else None
        role = None
        if reason is None:
            if user is None or user.status != "active" or project is None or project.status != "active":
                reason = "this API key's user or project is disabled"
            else:
                role = _role_in(s, user, project.id)
                if role is None:
                    reason = "this API key's user is no longer a member of its project"
        if reason is not None:
            key_id = k.id if k is not None else ""
        else:
            assert k is not None and user is not None and project is not None and role is not None
            principal = _principal(user, project, role, key=k, source=source)
            if k.last_used_at is None or now - k.last_used_at >= KEY_USE_EVERY:
                k.last_used_at = now
                used = True
    if reason is not None:
        app.audit_log_denied("auth.key", key_id, source, reason, prefix=f"obx_{prefix}")
        raise AuthenticationError(reason)
    if used:
        app.audit(
            "key.used", resource_type="api_key", resource_id=principal.key_id or "", principal=principal
        )
    return principal


def login(
    app: App,
    username: str,
    password: str,
    *,
    project: str | None = None,
    source: str = "",
    now: datetime | None = None,
) -> tuple[str, str, Principal]:
    """Check a password and open a console session: (cookie token, CSRF token, principal).

    After ``login_max_failures`` wrong passwords in a row the user is locked for
    ``login_lockout_seconds`` (HTTP 429 with Retry-After), whatever password is tried."""
    now = now or datetime.now(UTC)
    st = app.settings
    with app.db.session() as s:
        user = s.scalar(select(User).where(User.username == name_key(username)))
        if user is not None and user.locked_until is not None and user.locked_until > now:
            wait = int((user.locked_until - now).total_seconds()) + 1
            locked = True
        else:
            locked = False
            good = verify_password(user.password_hash if user else DUMMY_HASH, password) and user is not None
            if user is not None and not good:
                user.failed_logins += 1
                if user.failed_logins >= st.login_max_failures:
                    user.locked_until = now + timedelta(seconds=st.login_lockout_seconds)
                    user.failed_logins = 0
        if locked or user is None or not good or user.status != "active":
            uid = user.id if user is not None else ""
            why = "locked" if locked else "bad credentials" if user is None or not good else "disabled"
        else:
            why = None
            uid = user.id
            target = s.scalar(select(Project).where(Project.name == project)) if project else None
            if target is None and project is None:
                target = s.scalar(select(Project).where(Project.name == st.project))
                if target is not None and _role_in(s, user, target.id) is None:
                    target = s.scalar(
                        select(Project)
                        .join(Membership, Membership.project_id == Project.id)
                        .where(Membership.user_id == user.id)
                        .order_by(Project.name)
                    )
            role = _role_in(s, user, target.id) if target is not None else None
            if target is None or role is None:
                why = "not a member of the project"
            else:
                user.failed_logins, user.locked_until, user.last_login_at = 0, None, now
                if needs_rehash(user.password_hash):
                    user.password_hash = hash_password(password)
                token, token_digest = apikeys.new_token()
                csrf, _ = apikeys.new_token()
                s.add(
                    WebSession(
                        id=token_digest,
                        user_id=user.id,
                        project_id=target.id,
                        csrf_token=csrf,
                        created_at=now,
                        expires_at=now + timedelta(seconds=st.session_ttl_seconds),
                        source=source[:255],
                    )
                )
                principal = _principal(user, target, role, key=None, source=source)
    if why is not None:
        app.audit_log_denied("auth.login", uid, source, why, username=name_key(username)[:64])
        if why == "locked":
            raise QuotaExceededError(
                f"too many failed logins; try again in {wait} s", retry_after=wait, param="password"
            )
        if why == "not a member of the project":
            raise PermissionDeniedError(f"you are not a member of project {project or st.project!r}")
        raise AuthenticationError("wrong user name or password")
    app.audit("auth.login", resource_type="user", resource_id=uid, principal=principal)
    return token, csrf, principal


def authenticate_session(
    app: App,
    token: str,
    *,
    method: str = "GET",
    csrf: str | None = None,
    source: str = "",
    now: datetime | None = None,
) -> Principal:
    """The principal of a console session cookie; unsafe methods must echo the CSRF token."""
    now = now or datetime.now(UTC)
    with app.db.session() as s:
        w = s.get(WebSession, apikeys.token_hash(token))
        if w is None or w.expires_at <= now:
            raise AuthenticationError("not logged in (or the session expired); log in again")
        if method.upper() in UNSAFE_METHODS and not (csrf and hmac.compare_digest(csrf, w.csrf_token)):
            raise PermissionDeniedError("missing or wrong CSRF token (send the X-CSRF-Token header)")
        user = s.get(User, w.user_id)
        project = s.get(Project, w.project_id)
        role = _role_in(s, user, project.id) if user is not None and project is not None else None
        if user is None or user.status != "active" or project is None or role is None:
            s.delete(w)
            raise AuthenticationError("this session is no longer valid; log in again")
        return _principal(user, project, role, key=None, source=source)


def session_csrf(app: App, token: str) -> str | None:
    with app.db.session() as s:
        w = s.get(WebSession, apikeys.token_hash(token))
        return w.csrf_token if w is not None else None


def logout(app: App, token: str) -> None:
    with app.db.session() as s:
        w = s.get(WebSession, apikeys.token_hash(token))
        if w is not None:
            s.delete(w)
