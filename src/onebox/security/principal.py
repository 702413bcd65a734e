"""Who is acting, in which project, with which permissions.

Roles are fixed sets of permissions; an API key may narrow its user's role further with scopes.
Every check goes through :meth:`Principal.require`, so the rule is in one place.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field

from onebox.errors import InvalidInputError, PermissionDeniedError, Problem

PERMISSIONS: tuple[str, ...] = ("read", "infer", "write", "train", "deploy", "operate", "admin", "audit")
"""read: list and show; infer: /v1 and KB questions; write: create/import/delete data, models, KBs;
train: submit training and evaluation jobs; deploy: deploy, scale, undeploy; operate: cancel and
retry jobs, policies; admin: users, keys and projects; audit: read the audit log."""

ROLES: dict[str, frozenset[str]] = {
    "viewer": frozenset({"read", "infer"}),
    "developer": frozenset({"read", "infer", "write", "train"}),
    "operator": frozenset({"read", "infer", "write", "train", "deploy", "operate"}),
    "admin": frozenset(PERMISSIONS),
}
"""Project roles, least to most powerful."""


def validate_role(role: str, field_name: str = "role") -> str:
    if role not in ROLES:
        raise InvalidInputError(
            f"unknown role {role!r}",
            problems=[Problem(field_name, f"{role!r} is not a role", f"use one of {', '.join(ROLES)}")],
        )
    return role


def validate_scopes(scopes: list[str] | None, field_name: str = "scopes") -> list[str]:
    """Scopes a key is limited to (empty: everything its user's role allows)."""
    bad = [s for s in scopes or [] if s not in PERMISSIONS]
    if bad:
        raise InvalidInputError(
            "unknown scopes",
            problems=[
                Problem(field_name, f"{s!r} is not a scope", f"use some of {', '.join(PERMISSIONS)}")
                for s in bad
            ],
        )
    return sorted(set(scopes or []))


@dataclass(frozen=True)
class Principal:
    """An authenticated identity acting in one project."""

    user_id: str
    username: str
    project_id: str
    project: str
    role: str
    is_admin: bool = False
    key_id: str | None = None
    """The API key used, if any (None for console sessions and the local CLI)."""
    scopes: frozenset[str] = field(default_factory=frozenset)
    """Key scopes; empty means the role's full permissions."""
    source: str = ""
    """Where the request came from (client address, ``local``)."""
    password_change_required: bool = False
    """A console login with a generated or reset password: nothing else is allowed until it changes."""

    @property
    def permissions(self) -> frozenset[str]:
        perms = frozenset(PERMISSIONS) if self.is_admin else ROLES.get(self.role, frozenset())
        return perms & self.scopes if self.scopes else perms

    def can(self, permission: str) -> bool:
        return permission in self.permissions

    @property
    def system_admin(self) -> bool:
        """A system administrator acting with the admin permission in hand: sees every project.
        A system admin's key narrowed by scopes (say to ``read`` for a dashboard) does not."""
        return self.is_admin and self.can("admin")

    def require(self, permission: str, action: str = "") -> None:
        if not self.can(permission):
            why = (
                "the key's scopes exclude it"
                if self.scopes and permission not in self.scopes
                else (f"role {self.role!r} lacks it")
            )
            raise PermissionDeniedError(
                f"{self.username} may not {action or permission} in project {self.project!r}: "
                f"needs permission {permission!r}, {why}",
                permission=permission,
            )

    @property
    def actor(self) -> str:
        """How the audit log names this identity."""
        return f"{self.username}/{self.key_id}" if self.key_id else self.username


def local_principal(project_id: str, project: str) -> Principal:
    """The operator at the box's own shell: the CLI talks to the store directly, so whoever can
    run it can read the store's files anyway. Policies (when, where) still apply to it."""
    try:
        who = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        who = "unknown"
    return Principal(
        user_id="local",
        username=f"local:{who}",
        project_id=project_id,
        project=project,
        role="admin",
        is_admin=True,
        source="local",
    )
