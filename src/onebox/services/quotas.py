"""Quota administration: set a project's or an API key's limits, and show limits with usage.

Only system administrators set quotas: a project admin who could raise their own project's limits
would make them pointless. Anyone who may read a project may see its quotas and usage. Every
change is audited. The gateway reads limits through ``LimitsCache`` (a few seconds' TTL), so a
change applies to ``/v1`` within seconds without a restart.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from onebox.errors import ErrorList, InvalidInputError, NotFoundError, PermissionDeniedError, Problem
from onebox.security.quotas import Limits as RateLimits
from onebox.security.quotas import LimitsCache, QuotaGate, active_jobs
from onebox.security.storage import project_usage
from onebox.services.context import App
from onebox.services.projects import get_project
from onebox.store.tables import ApiKey, Project


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()
"""Leave this limit as it is (``None`` removes the limit: unlimited)."""

Setting = int | None | _Unchanged

_PROJECT_FIELDS = {
    "rpm": "rpm_limit",
    "tpm": "tpm_limit",
    "jobs": "max_concurrent_jobs",
    "storage": "storage_limit_bytes",
}
_KEY_FIELDS = {"rpm": "rpm_limit", "tpm": "tpm_limit"}
_MAX = {"rpm": 10**9, "tpm": 10**12, "jobs": 10**6, "storage": 2**62}


def _require_admin(app: App, what: str) -> None:
    actor = app.actor()
    if not actor.is_admin:
        raise PermissionDeniedError(
            f"{actor.username} may not {what}: only system administrators set quotas", permission="admin"
        )


def _validate(values: dict[str, Setting]) -> dict[str, int | None]:
    errs = ErrorList()
    out: dict[str, int | None] = {}
    for name, value in values.items():
        if isinstance(value, _Unchanged):
            continue
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            errs.add(name, f"{value!r} is not a whole number", "give a number, or none for unlimited")
        elif value is not None and not 0 <= value <= _MAX[name]:
            errs.add(name, f"{value} is out of range", f"use 0 (blocked) to {_MAX[name]}, or none")
        else:
            out[name] = value
    errs.raise_if_any("invalid quota", InvalidInputError)
    if not out:
        raise InvalidInputError(
            "nothing to change",
            problems=[Problem("quota", "no limit given", f"pass at least one of {', '.join(values)}")],
        )
    return out


def _project_limits(p: Project) -> dict[str, int | None]:
    return {k: getattr(p, col) for k, col in _PROJECT_FIELDS.items()}


def _key_limits(k: ApiKey) -> dict[str, int | None]:
    return {k_: getattr(k, col) for k_, col in _KEY_FIELDS.items()}


def set_project_quota(
    app: App,
    project: str,
    *,
    rpm: Setting = UNCHANGED,
    tpm: Setting = UNCHANGED,
    jobs: Setting = UNCHANGED,
    storage: Setting = UNCHANGED,
    cache: LimitsCache | None = None,
) -> dict[str, Any]:
    """Change a project's limits (``None``: unlimited; 0 blocks); returns them all."""
    _require_admin(app, f"set the quotas of project {project!r}")
    changes = _validate({"rpm": rpm, "tpm": tpm, "jobs": jobs, "storage": storage})
    with app.db.session() as s:
        p = get_project(s, project)
        before = _project_limits(p)
        for name, value in changes.items():
            setattr(p, _PROJECT_FIELDS[name], value)
        after, pid = _project_limits(p), p.id
    if cache is not None:
        cache.invalidate("project", pid)
    app.audit(
        "quota.set", resource_type="project", resource_id=pid, project=project, before=before, after=after
    )
    return {"project": project, "limits": after}


def _find_key(s: Session, ref: str) -> ApiKey:
    ref = ref.strip()
    if ref.startswith("obx_"):
        key = s.scalar(select(ApiKey).where(ApiKey.prefix == ref.removeprefix("obx_").split("_")[0]))
    else:
        key = s.get(ApiKey, ref)
    if key is None:
        raise NotFoundError(f"API key {ref!r} does not exist; give its id (key_...) or prefix (obx_...)")
    return key


def set_key_quota(
    app: App,
    key_id: str,
    *,
    rpm: Setting = UNCHANGED,
    tpm: Setting = UNCHANGED,
    cache: LimitsCache | None = None,
) -> dict[str, Any]:
    """Change one API key's limits (by id or ``obx_`` prefix); the project's limits still apply."""
    _require_admin(app, f"set the quotas of API key {key_id!r}")
    changes = _validate({"rpm": rpm, "tpm": tpm})
    with app.db.session() as s:
        key = _find_key(s, key_id)
        before = _key_limits(key)
        for name, value in changes.items():
            setattr(key, _KEY_FIELDS[name], value)
        after, kid, prefix, project_id = _key_limits(key), key.id, key.prefix, key.project_id
        project = s.get(Project, project_id)
        project_name = project.name if project is not None else project_id
    if cache is not None:
        cache.invalidate("key", kid)
    app.audit(
        "quota.set",
        resource_type="api_key",
        resource_id=kid,
        prefix=f"obx_{prefix}",
        before=before,
        after=after,
    )
    return {"key": kid, "prefix": f"obx_{prefix}", "project": project_name, "limits": after}


def show(app: App, project: str | None = None, *, gate: QuotaGate | None = None) -> dict[str, Any]:
    """A project's limits with current usage (jobs, storage; rates too when given the gateway's
    ``gate``, which alone knows them), and the limits of the project's keys."""
    actor = app.actor()
    name = project or app.settings.project
    with app.db.session() as s:
        p = get_project(s, name)
        if p.id != actor.project_id and not actor.system_admin:
            raise PermissionDeniedError(f"{actor.username} may not see the quotas of project {name!r}")
        actor.require("read", "see quotas")
        limits = _project_limits(p)
        storage = project_usage(s, p.id, app.settings.home)
        jobs_now = active_jobs(s, p.id)
        keys = list(
            s.scalars(
                select(ApiKey)
                .where(ApiKey.project_id == p.id, ApiKey.revoked_at.is_(None))
                .order_by(ApiKey.created_at)
            )
        )
        key_rows = [
            {"id": k.id, "prefix": f"obx_{k.prefix}", "name": k.name, "limits": _key_limits(k)} for k in keys
        ]
        pid = p.id
    usage: dict[str, Any] = {"jobs": jobs_now, "storage": storage.total, "storage_detail": storage.as_dict()}
    if gate is not None:
        usage.update(gate.usage("project", pid, RateLimits(limits["rpm"], limits["tpm"])))
        for row in key_rows:
            lim = RateLimits(row["limits"]["rpm"], row["limits"]["tpm"])
            row["usage"] = gate.usage("key", row["id"], lim)
    return {"project": name, "id": pid, "limits": limits, "usage": usage, "keys": key_rows}
