"""Deployments: the desired state of what the gateway serves (model version, adapters, replicas).

This module only writes intent to the store; the supervisor inside ``onebox serve`` reconciles
worker processes with it (and reports back through ``status`` and events). Clients address a
deployment by its name and each of its adapters by the adapter's model name: together these are
the *model ids* of ``/v1``, unique within a project.

Adapter references follow their model's newest version trained on the deployment's base unless
pinned (``name:3`` or ``name@alias``), so a training job that registers a new version of a served
adapter gets it hot-loaded on the next reconcile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from onebox.engine.config import EngineConfig, engine_config
from onebox.errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    Problem,
)
from onebox.services import events
from onebox.services.context import App
from onebox.services.models import get_model, resolve
from onebox.services.names import Ref, name_key, parse_ref, validate_name
from onebox.services.projects import get_project
from onebox.store.tables import Deployment, Model, ModelVersion, Project, new_id

RESOURCE = "deployment"
MAX_REPLICAS = 32
ENGINE_FIELDS = tuple(f for f in EngineConfig.model_fields if f != "adapters")
STATUSES = ("starting", "ready", "degraded", "failed", "stopped")


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter as a worker must load it: the served name and the exact version."""

    name: str
    ref: str
    """What the user asked for (``name``, ``name:3``, ``name@prod``)."""
    version_id: str
    version_ref: str
    """The version it resolves to now, as ``name:N`` (checkout-able)."""


@dataclass
class DeploymentSpec:
    """Everything the supervisor and a worker need to run one deployment (plain data)."""

    id: str
    name: str
    project_id: str
    kind: str  # text | embedding
    status: str
    replicas: int
    model_version_id: str
    model_ref: str
    engine: dict[str, Any]
    adapters: dict[str, AdapterSpec] = field(default_factory=dict)
    adapter_errors: dict[str, str] = field(default_factory=dict)
    """Adapters that do not resolve right now (deleted, no version on this base), and why."""

    @property
    def model_ids(self) -> list[str]:
        return [self.name, *self.adapters]


def _project_id(session: Session, app: App) -> str:
    return get_project(session, app.settings.project).id


def _deployments(session: Session, project_id: str) -> list[Deployment]:
    return list(
        session.scalars(
            select(Deployment)
            .where(Deployment.project_id == project_id, Deployment.status != "deleted")
            .order_by(Deployment.name)
        )
    )


def _get(session: Session, project_id: str, name: str) -> Deployment:
    key = name_key(name)
    for dep in _deployments(session, project_id):
        if name_key(dep.name) == key:
            return dep
    raise NotFoundError(f"deployment {name!r} does not exist; see `onebox deployments list`")


def _version_label(session: Session, mv: ModelVersion) -> str:
    return f"{session.get_one(Model, mv.model_id).name}:{mv.version}"


def _served_ids(session: Session, project_id: str, *, exclude: str | None = None) -> dict[str, str]:
    """Model id (case-folded) -> deployment name, over every deployment but ``exclude``."""
    out: dict[str, str] = {}
    for dep in _deployments(session, project_id):
        if dep.id == exclude:
            continue
        for mid in [dep.name, *dep.config.get("adapters", {})]:
            out[name_key(mid)] = dep.name
    return out


def _check_free(taken: dict[str, str], model_id: str, field_name: str) -> None:
    owner = taken.get(name_key(model_id))
    if owner is not None:
        raise AlreadyExistsError(
            f"model id {model_id!r} is already served by deployment {owner!r}",
            problems=[
                Problem(field_name, f"{model_id!r} is taken", "choose another name or undeploy the other")
            ],
        )


def _check_engine(values: dict[str, Any] | None) -> dict[str, Any]:
    """Validate engine options (all problems at once) and keep only those given, JSON-safe."""
    values = {k: v for k, v in (values or {}).items() if v is not None}
    unknown = [k for k in values if k not in ENGINE_FIELDS]
    if unknown:
        raise InvalidInputError(
            "invalid engine options",
            problems=[
                Problem(f"engine.{k}", "is not an engine option", f"use one of {', '.join(ENGINE_FIELDS)}")
                for k in unknown
            ],
        )
    cfg = engine_config(**values)
    return cfg.model_dump(mode="json", include=set(values))


def _adapter_version(
    session: Session, project_id: str, ref: Ref, base: ModelVersion, field_name: str
) -> ModelVersion:
    """The version ``ref`` names now: pinned refs resolve as written; a bare name follows the
    newest ready LoRA version of that model trained on ``base``."""
    model = get_model(session, project_id, ref.name)
    if ref.version is not None or ref.alias is not None:
        mv = resolve(session, project_id, ref)
    else:
        mv = session.scalar(
            select(ModelVersion)
            .where(
                ModelVersion.model_id == model.id,
                ModelVersion.status == "ready",
                ModelVersion.format == "lora",
                ModelVersion.base_version_id == base.id,
            )
            .order_by(ModelVersion.version.desc())
            .limit(1)
        )
        if mv is None:
            mv = resolve(session, project_id, ref)  # says why with the newest version below
    label = f"{model.name}:{mv.version}"
    if mv.format != "lora":
        raise InvalidInputError(
            f"{label} is not a LoRA adapter",
            problems=[Problem(field_name, f"{label} has format {mv.format}", "pass a LoRA adapter version")],
        )
    if mv.base_version_id != base.id:
        other = session.get(ModelVersion, mv.base_version_id) if mv.base_version_id else None
        trained_on = _version_label(session, other) if other else "an unknown base"
        raise InvalidInputError(
            f"adapter {label} does not fit the deployment's base",
            problems=[
                Problem(
                    field_name,
                    f"{label} was trained on {trained_on}, "
                    f"the deployment serves {_version_label(session, base)}",
                    "deploy the adapter's own base, or pin an adapter version trained on this base",
                )
            ],
        )
    return mv


def _adapter_entry(
    session: Session, project_id: str, text: str, base: ModelVersion, field_name: str
) -> tuple[str, str]:
    """(served name, ref as stored) for an adapter reference, checked against ``base``."""
    ref = parse_ref(text, field_name)
    mv = _adapter_version(session, project_id, ref, base, field_name)
    name = session.get_one(Model, mv.model_id).name
    canonical = str(Ref(name, ref.version, ref.alias))
    return name, canonical


def deploy(
    app: App,
    ref: str,
    *,
    name: str | None = None,
    adapters: list[str] | tuple[str, ...] = (),
    replicas: int = 1,
    engine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record a new deployment of ``ref``; a LoRA ref deploys its base with that adapter."""
    r = parse_ref(ref, "model")
    _check_replicas(replicas)
    if name is not None:
        validate_name(name, "name")
    with app.db.session() as s:
        pid = _project_id(s, app)
        model = get_model(s, pid, r.name)
        mv = resolve(s, pid, r)
        adapter_refs = list(adapters)
        if mv.format == "lora":
            if mv.base_version_id is None:
                raise InvalidInputError(f"adapter {model.name}:{mv.version} records no base model version")
            adapter_refs.insert(0, str(r))
            base = s.get_one(ModelVersion, mv.base_version_id)
            default_name = f"{model.name}-base"
        else:
            base = mv
            default_name = model.name
        base_model = s.get_one(Model, base.model_id)
        if base_model.kind not in ("chat", "embedding"):
            raise InvalidInputError(
                f"{base_model.name} is a {base_model.kind} model; only chat and embedding models deploy",
                problems=[Problem("model", f"kind {base_model.kind!r} cannot be served")],
            )
        kind = "embedding" if base_model.kind == "embedding" else "text"
        engine_values = _check_engine(engine)
        if kind == "embedding":
            problems = [Problem(f"engine.{k}", "does not apply to embedding models") for k in engine_values]
            if adapter_refs:
                problems.append(Problem("adapter", "embedding models take no adapters"))
            if problems:
                raise InvalidInputError(
                    f"invalid options for embedding model {base_model.name}", problems=problems
                )
        dep_name = name or default_name
        taken = _served_ids(s, pid)
        _check_free(taken, dep_name, "name")
        served: dict[str, str] = {}
        for i, text in enumerate(adapter_refs):
            field_name = "model" if (mv.format == "lora" and i == 0) else "adapter"
            a_name, a_ref = _adapter_entry(s, pid, text, base, field_name)
            _check_free(taken, a_name, field_name)
            if name_key(a_name) == name_key(dep_name):
                raise InvalidInputError(
                    f"adapter {a_name!r} would have the deployment's own name",
                    problems=[Problem("name", f"{dep_name!r} is also an adapter's name", "pass --name")],
                )
            served[a_name] = a_ref
        # Use policies of the base and of every adapter, checked with the deployer's identity.
        from onebox.services import policies

        adapter_ids = [
            _adapter_version(s, pid, parse_ref(a_ref, "adapter"), base, "adapter").id
            for a_ref in served.values()
        ]
        for version_id in [base.id, *adapter_ids]:
            policies.enforce(app, "model_version", version_id, "model.deploy", audit_always=True)
        dep = Deployment(
            id=new_id("dep"),
            project_id=pid,
            name=dep_name,
            status="starting" if replicas else "stopped",
            model_version_id=base.id,
            alias=r.alias if mv is base else None,
            replicas=replicas,
            config={
                "kind": kind,
                "requested": str(r),
                "model": _version_label(s, base),
                "engine": engine_values,
                "adapters": served,
            },
        )
        s.add(dep)
        try:
            s.flush()
        except DBIntegrityError as exc:
            raise ConflictError(f"deployment {dep_name!r} was created meanwhile; pick another name") from exc
        _event(s, dep, "deployment.created", f"deployed {dep.config['model']} as {dep_name}")
        return deployment_dict(s, dep)


def _check_replicas(replicas: int) -> None:
    if not isinstance(replicas, int) or not 0 <= replicas <= MAX_REPLICAS:
        raise InvalidInputError(
            "invalid replicas",
            problems=[Problem("replicas", f"must be between 0 and {MAX_REPLICAS}, got {replicas!r}")],
        )


def _event(s: Session, dep: Deployment, kind: str, message: str, severity: str = "info", **data: Any) -> None:
    events.record(
        s,
        project_id=dep.project_id,
        resource_type=RESOURCE,
        resource_id=dep.id,
        kind=kind,
        message=message,
        severity=severity,
        deployment=dep.name,
        **data,
    )


def deployment_dict(s: Session, dep: Deployment) -> dict[str, Any]:
    """A deployment as plain JSON, adapters with the version each resolves to now."""
    spec = _spec(s, dep)
    adapters = []
    for a_name, a_ref in dep.config.get("adapters", {}).items():
        a = spec.adapters.get(a_name)
        adapters.append(
            {
                "name": a_name,
                "ref": a_ref,
                "version": a.version_ref if a else None,
                "error": spec.adapter_errors.get(a_name),
            }
        )
    return {
        "id": dep.id,
        "name": dep.name,
        "kind": dep.config.get("kind", "text"),
        "status": dep.status,
        "model": dep.config.get("model"),
        "model_version_id": dep.model_version_id,
        "requested": dep.config.get("requested"),
        "alias": dep.alias,
        "replicas": dep.replicas,
        "adapters": adapters,
        "engine": dep.config.get("engine", {}),
        "model_ids": [dep.name, *(a["name"] for a in adapters)],
        "created_at": dep.created_at.isoformat(),
        "updated_at": dep.updated_at.isoformat(),
    }


def _spec(s: Session, dep: Deployment) -> DeploymentSpec:
    base = s.get_one(ModelVersion, dep.model_version_id)
    spec = DeploymentSpec(
        id=dep.id,
        name=dep.name,
        project_id=dep.project_id,
        kind=dep.config.get("kind", "text"),
        status=dep.status,
        replicas=dep.replicas,
        model_version_id=base.id,
        model_ref=_version_label(s, base),
        engine=dict(dep.config.get("engine", {})),
    )
    for a_name, a_ref in dep.config.get("adapters", {}).items():
        try:
            mv = _adapter_version(s, dep.project_id, parse_ref(a_ref, "adapter"), base, "adapter")
        except (NotFoundError, InvalidInputError) as exc:
            spec.adapter_errors[a_name] = exc.message
            continue
        spec.adapters[a_name] = AdapterSpec(a_name, a_ref, mv.id, _version_label(s, mv))
    return spec


def list_deployments(app: App) -> list[dict[str, Any]]:
    with app.db.session() as s:
        return [deployment_dict(s, d) for d in _deployments(s, _project_id(s, app))]


def show(app: App, name: str) -> dict[str, Any]:
    """A deployment with its recent events and how often its workers crashed."""
    with app.db.session() as s:
        dep = _get(s, _project_id(s, app), name)
        out = deployment_dict(s, dep)
        evs = events.for_resource(s, RESOURCE, dep.id)
        out["restarts"] = sum(1 for e in evs if e.kind == "deployment.replica_crashed")
        out["events"] = [
            {
                "kind": e.kind,
                "message": e.message,
                "severity": e.severity,
                "created_at": e.created_at.isoformat(),
            }
            for e in evs[-50:]
        ]
        return out


def scale(app: App, name: str, replicas: int) -> dict[str, Any]:
    _check_replicas(replicas)
    with app.db.session() as s:
        dep = _get(s, _project_id(s, app), name)
        before = dep.replicas
        dep.replicas = replicas
        if replicas == 0:
            dep.status = "stopped"
        elif before == 0 or dep.status == "failed":
            dep.status = "starting"
        _event(s, dep, "deployment.scaled", f"{dep.name}: {before} -> {replicas} replicas", before=before)
        s.flush()
        return deployment_dict(s, dep)


def delete(app: App, name: str) -> dict[str, Any]:
    """Remove a deployment (its workers stop on the next reconcile); events keep its history."""
    with app.db.session() as s:
        dep = _get(s, _project_id(s, app), name)
        out = deployment_dict(s, dep)
        _event(s, dep, "deployment.deleted", f"undeployed {dep.name}")
        s.delete(dep)
        return out


def _set_adapters(s: Session, dep: Deployment, adapters: dict[str, str]) -> None:
    # A new dict, so the JSON column sees the change.
    dep.config = {**dep.config, "adapters": adapters}


def add_adapter(app: App, name: str, ref: str) -> dict[str, Any]:
    """Serve one more adapter of the deployment's base (hot-loaded, no restart)."""
    with app.db.session() as s:
        pid = _project_id(s, app)
        dep = _get(s, pid, name)
        if dep.config.get("kind") == "embedding":
            raise InvalidInputError(
                f"{dep.name} serves an embedding model",
                problems=[Problem("adapter", "embedding models take no adapters")],
            )
        base = s.get_one(ModelVersion, dep.model_version_id)
        a_name, a_ref = _adapter_entry(s, pid, ref, base, "adapter")
        from onebox.services import policies

        adapter = _adapter_version(s, pid, parse_ref(a_ref, "adapter"), base, "adapter")
        policies.enforce(app, "model_version", adapter.id, "model.deploy", audit_always=True)
        current = dict(dep.config.get("adapters", {}))
        if name_key(a_name) not in {name_key(n) for n in current}:
            _check_free(_served_ids(s, pid, exclude=dep.id), a_name, "adapter")
            if name_key(a_name) == name_key(dep.name):
                raise InvalidInputError(f"adapter {a_name!r} has the deployment's own name")
        current = {n: v for n, v in current.items() if name_key(n) != name_key(a_name)}
        current[a_name] = a_ref
        _set_adapters(s, dep, current)
        _event(s, dep, "deployment.adapter_added", f"{dep.name}: serving adapter {a_ref}", adapter=a_name)
        s.flush()
        return deployment_dict(s, dep)


def remove_adapter(app: App, name: str, adapter: str) -> dict[str, Any]:
    with app.db.session() as s:
        dep = _get(s, _project_id(s, app), name)
        current = dict(dep.config.get("adapters", {}))
        match = [n for n in current if name_key(n) == name_key(adapter)]
        if not match:
            served = ", ".join(current) or "none"
            raise NotFoundError(
                f"deployment {dep.name!r} does not serve adapter {adapter!r} (serves: {served})"
            )
        del current[match[0]]
        _set_adapters(s, dep, current)
        removed = match[0]
        message = f"{dep.name}: removed adapter {removed}"
        _event(s, dep, "deployment.adapter_removed", message, adapter=removed)
        s.flush()
        return deployment_dict(s, dep)


# -- for the supervisor and workers ---------------------------------------------------------------


def desired_state(app: App, *, all_projects: bool = False) -> list[DeploymentSpec]:
    """Every deployment of the project (or, for the gateway, of every project) with its adapters
    resolved to versions now."""
    with app.db.session() as s:
        if all_projects:
            deps = s.scalars(
                select(Deployment).where(Deployment.status != "deleted").order_by(Deployment.name)
            )
            return [_spec(s, d) for d in deps]
        return [_spec(s, d) for d in _deployments(s, _project_id(s, app))]


def project_name(app: App, project_id: str) -> str:
    with app.db.session() as s:
        return s.get_one(Project, project_id).name


def worker_spec(app: App, deployment_id: str) -> DeploymentSpec:
    with app.db.session() as s:
        dep = s.get(Deployment, deployment_id)
        if dep is None or dep.status == "deleted":
            raise NotFoundError(f"deployment {deployment_id} does not exist (undeployed?)")
        return _spec(s, dep)


def set_status(app: App, deployment_id: str, status: str, message: str | None = None, **data: Any) -> None:
    """Record what the supervisor observed; a status change is also an event."""
    if status not in STATUSES:
        raise ValueError(f"unknown deployment status {status!r}")
    with app.db.session() as s:
        dep = s.get(Deployment, deployment_id)
        if dep is None:
            return
        if dep.status != status:
            # Only the status column: a concurrent adapter change to config must not be lost.
            s.execute(update(Deployment).where(Deployment.id == deployment_id).values(status=status))
            severity = "error" if status == "failed" else "info"
            _event(s, dep, f"deployment.{status}", message or f"{dep.name} is {status}", severity, **data)


def record_event(
    app: App, deployment_id: str, kind: str, message: str, severity: str = "info", **data: Any
) -> None:
    with app.db.session() as s:
        dep = s.get(Deployment, deployment_id)
        if dep is not None:
            _event(s, dep, kind, message, severity, **data)
