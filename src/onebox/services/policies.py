"""Use policies on model and dataset versions: set, show, clear, and enforce where keys are released.

``enforce`` is called at the points where a version's bytes are handed out — deploy, load (every
checkout), train, export and download — with the real clock and machine fingerprint unless a
test injects them. Every decision on a version that has a policy is audited (``policy.denied``
with the failed condition, or the action with outcome ok); plaintext downloads and exports are
audited even without one. A version without a policy costs one indexed lookup.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from onebox.errors import InvalidInputError, PolicyDeniedError, Problem
from onebox.security import fingerprint as machine
from onebox.security.policy import Decision, PolicyRules, evaluate, validate_rules
from onebox.services.context import App
from onebox.services.projects import get_project
from onebox.store.tables import Dataset, DatasetVersion, Model, ModelVersion, UsePolicy, new_id

KINDS = {"model": "model_version", "dataset": "dataset_version"}
ACTIONS = (
    "model.deploy",
    "model.load",
    "model.export",
    "model.download",
    "model.train",
    "dataset.train",
    "dataset.load",
)


def _pid(session: Session, app: App) -> str:
    return get_project(session, app.settings.project).id


def resolve_resource(session: Session, app: App, kind: str, ref: str) -> tuple[str, str, str]:
    """(resource_type, resource_id, label ``name:N``) for ``ref`` of ``kind`` model|dataset."""
    from onebox.services import datasets, models

    if kind not in KINDS:
        raise InvalidInputError(
            "invalid kind",
            problems=[Problem("kind", f"{kind!r} is not model or dataset", "use model|dataset")],
        )
    pid = _pid(session, app)
    if kind == "model":
        mv = models.resolve(session, pid, ref)
        return KINDS[kind], mv.id, f"{session.get_one(Model, mv.model_id).name}:{mv.version}"
    dv = datasets.resolve(session, pid, ref)
    return KINDS[kind], dv.id, f"{session.get_one(Dataset, dv.dataset_id).name}:{dv.version}"


def _label(session: Session, resource_type: str, resource_id: str) -> str:
    if resource_type == "model_version":
        mv = session.get(ModelVersion, resource_id)
        return f"{session.get_one(Model, mv.model_id).name}:{mv.version}" if mv else resource_id
    dv = session.get(DatasetVersion, resource_id)
    return f"{session.get_one(Dataset, dv.dataset_id).name}:{dv.version}" if dv else resource_id


def policy_row(session: Session, resource_type: str, resource_id: str) -> UsePolicy | None:
    return session.scalar(
        select(UsePolicy).where(
            UsePolicy.resource_type == resource_type, UsePolicy.resource_id == resource_id
        )
    )


def rules_for(session: Session, resource_type: str, resource_id: str) -> PolicyRules | None:
    row = policy_row(session, resource_type, resource_id)
    return PolicyRules.model_validate(row.rules) if row is not None else None


def put_rules(
    session: Session,
    project_id: str,
    resource_type: str,
    resource_id: str,
    rules: PolicyRules,
    created_by: str,
) -> None:
    """Insert or replace a policy inside the caller's transaction (imports use this to register a
    version and its policy atomically)."""
    row = policy_row(session, resource_type, resource_id)
    if row is None:
        row = UsePolicy(
            id=new_id("pol"), project_id=project_id, resource_type=resource_type, resource_id=resource_id
        )
        session.add(row)
    row.rules = rules.as_json()
    row.created_by = created_by
    session.flush()


def _policy_dict(label: str, resource_type: str, resource_id: str, row: UsePolicy | None) -> dict[str, Any]:
    return {
        "resource": label,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "policy": None
        if row is None
        else {
            "id": row.id,
            "rules": row.rules,
            "created_by": row.created_by,
            "updated_at": row.updated_at.isoformat() if row.updated_at else None,
        },
    }


def set_policy(app: App, kind: str, ref: str, rules: dict[str, Any] | PolicyRules) -> dict[str, Any]:
    """Replace the policy of a version (validated first, all problems at once); audited."""
    actor = app.actor()
    actor.require("operate", "set use policies")
    checked = validate_rules(rules)
    with app.db.session() as s:
        rtype, rid, label = resolve_resource(s, app, kind, ref)
        if checked.is_unrestricted():
            raise InvalidInputError(
                "the policy restricts nothing",
                problems=[
                    Problem("rules", "every condition is empty", "give at least one condition, or use clear")
                ],
            )
        put_rules(s, _pid(s, app), rtype, rid, checked, actor.actor)
        out = _policy_dict(label, rtype, rid, policy_row(s, rtype, rid))
    app.audit("policy.set", resource_type=rtype, resource_id=rid, resource=label, rules=checked.as_json())
    return out


def show_policy(app: App, kind: str, ref: str) -> dict[str, Any]:
    with app.db.session() as s:
        rtype, rid, label = resolve_resource(s, app, kind, ref)
        return _policy_dict(label, rtype, rid, policy_row(s, rtype, rid))


def clear_policy(app: App, kind: str, ref: str) -> dict[str, Any]:
    """Remove a version's policy (it becomes unrestricted); audited."""
    actor = app.actor()
    actor.require("operate", "clear use policies")
    with app.db.session() as s:
        rtype, rid, label = resolve_resource(s, app, kind, ref)
        row = policy_row(s, rtype, rid)
        out = _policy_dict(label, rtype, rid, row)
        if row is not None:
            s.delete(row)
    if row is not None:
        app.audit("policy.cleared", resource_type=rtype, resource_id=rid, resource=label, rules=row.rules)
    return {**out, "cleared": row is not None}


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo else now.replace(tzinfo=UTC)


def _decide(
    rules: PolicyRules, principal: Any, action: str, now: datetime, fingerprint: str | None
) -> Decision:
    if rules.hosts and fingerprint is None:
        fingerprint = machine.current()  # probed only when a policy names hosts
    return evaluate(rules, principal, action, now, fingerprint)


def check(
    app: App, kind: str, ref: str, action: str, *, now: datetime | None = None, fingerprint: str | None = None
) -> dict[str, Any]:
    """Dry run: would the current identity be allowed ``action`` here and now? Not audited."""
    with app.db.session() as s:
        rtype, rid, label = resolve_resource(s, app, kind, ref)
        rules = rules_for(s, rtype, rid)
    when = _now(now)
    decision = Decision(True) if rules is None else _decide(rules, app.actor(), action, when, fingerprint)
    return {
        "resource": label,
        "action": action,
        "at": when.isoformat(timespec="seconds"),
        "host": fingerprint or machine.current(),
        "policy": rules.as_json() if rules is not None else None,
        **decision.as_dict(),
    }


def enforce(
    app: App,
    resource_type: str,
    resource_id: str,
    action: str,
    *,
    identity: bool = True,
    audit_always: bool = False,
    now: datetime | None = None,
    fingerprint: str | None = None,
) -> Decision:
    """Allow ``action`` on a version or raise PolicyDeniedError naming the failed condition.

    ``identity=False`` checks only when and where: for a process continuing an action whose
    identity was checked when it began (a deployment's worker, a queued job). Audits every
    decision on a policed version, and every decision when ``audit_always``.
    """
    with app.db.session() as s:
        rules = rules_for(s, resource_type, resource_id)
        if rules is None and not audit_always:
            return Decision(True)
        label = _label(s, resource_type, resource_id)
    actor = app.actor()
    decision = (
        Decision(True)
        if rules is None
        else _decide(rules, actor if identity else None, action, _now(now), fingerprint)
    )
    if decision.allowed:
        app.audit(
            action,
            resource_type=resource_type,
            resource_id=resource_id,
            resource=label,
            policy="applied" if rules is not None else "none",
        )
        return decision
    app.audit(
        "policy.denied",
        outcome="denied",
        resource_type=resource_type,
        resource_id=resource_id,
        resource=label,
        attempted=action,
        condition=decision.condition,
        reason=decision.reason,
    )
    raise PolicyDeniedError(
        f"{action} of {label} denied by its use policy ({decision.condition}): "
        f"{decision.reason}; {decision.fix}",
        condition=decision.condition,
        action=action,
        resource=label,
        resource_type=resource_type,
        resource_id=resource_id,
    )
