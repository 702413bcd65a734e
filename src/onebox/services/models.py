"""The model registry: immutable versions, movable aliases, lineage, built-in models.

Registration does the heavy work (download, GGUF conversion, hashing, storing blobs) before
touching the database, then records the version, its blob references and an event in one
transaction: a failure at any point leaves the registry as it was.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from onebox.errors import (
    AlreadyExistsError,
    ConflictError,
    InUseError,
    InvalidInputError,
    NotAModelError,
    NotFoundError,
    Problem,
)
from onebox.models import hub
from onebox.models.catalog import CATALOG, get_entry
from onebox.models.gguf import convert_gguf
from onebox.models.inspect import ModelFacts, inspect_path
from onebox.progress import ProgressFn, null_progress
from onebox.security.storage import enforce_storage, tree_bytes
from onebox.services import events
from onebox.services.context import App
from onebox.services.names import Ref, name_key, parse_ref, validate_name, validate_text
from onebox.services.projects import get_project
from onebox.store.refs import add_refs, drop_refs
from onebox.store.tables import (
    Dataset,
    DatasetVersion,
    Deployment,
    Job,
    KnowledgeBase,
    Model,
    ModelAlias,
    ModelVersion,
    new_id,
)

OWNER = "model_version"
ACTIVE_JOB_STATES = ("queued", "running", "cancelling")
KINDS = ("chat", "embedding", "other")


@dataclass(frozen=True)
class Registered:
    version: ModelVersion
    model: Model
    created: bool
    """False when identical content was already registered (nothing new was stored)."""


def _project_id(session: Session, app: App) -> str:
    return get_project(session, app.settings.project).id


def _find_model(session: Session, project_id: str, name: str) -> Model | None:
    return session.scalar(
        select(Model).where(Model.project_id == project_id, Model.name_key == name_key(name))
    )


def get_model(session: Session, project_id: str, name: str) -> Model:
    model = _find_model(session, project_id, name)
    if model is None or model.status == "deleted":
        raise NotFoundError(f"model {name!r} does not exist; see `onebox models list`")
    return model


def resolve(session: Session, project_id: str, ref: Ref | str) -> ModelVersion:
    """Find the version a reference names: ``name:3``, ``name@prod`` or the latest of ``name``."""
    ref = parse_ref(ref, "model") if isinstance(ref, str) else ref
    model = get_model(session, project_id, ref.name)
    if ref.alias is not None:
        alias = session.scalar(
            select(ModelAlias).where(ModelAlias.model_id == model.id, ModelAlias.name == ref.alias)
        )
        if alias is None:
            raise NotFoundError(f"model {model.name!r} has no alias @{ref.alias}")
        return session.get_one(ModelVersion, alias.version_id)
    q = select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.status == "ready")
    if ref.version is not None:
        mv = session.scalar(q.where(ModelVersion.version == ref.version))
        if mv is None:
            raise NotFoundError(f"model {model.name!r} has no version {ref.version}")
        return mv
    mv = session.scalar(q.order_by(ModelVersion.version.desc()).limit(1))
    if mv is None:
        raise NotFoundError(f"model {model.name!r} has no ready version")
    return mv


def _readme_license(path: Path) -> str | None:
    readme = path / "README.md" if path.is_dir() else None
    if readme is None or not readme.is_file():
        return None
    head = readme.read_text(encoding="utf-8", errors="replace")[:4000]
    m = re.search(r"^license:\s*([\w.+-]+)\s*$", head, flags=re.MULTILINE)
    return m.group(1) if m else None


def _stage(
    app: App, source: str, staging: Path, progress: ProgressFn
) -> tuple[Path, ModelFacts, dict[str, Any]]:
    """Bring the source into a loadable directory; GGUF files are converted to safetensors."""
    path = Path(source).expanduser()
    extra: dict[str, Any] = {}
    if not path.exists():
        if hub.looks_like_hub_id(source):
            path = hub.download(source, staging / "hub")
            extra["hub_id"] = source
        else:
            raise NotAModelError(f"{source!r} is neither an existing path nor a hub id (owner/name)")
    facts = inspect_path(path)
    if facts.format == "gguf":
        out = staging / "converted"
        info = convert_gguf(path, out, progress)
        extra["converted_from"] = "gguf"
        facts = ModelFacts("safetensors", "chat", str(info["architecture"]), int(info["parameters"]))  # type: ignore[call-overload]
        return out, facts, extra
    return path, facts, extra


def register(
    app: App,
    name: str,
    source: str,
    *,
    kind: str | None = None,
    license: str | None = None,
    description: str = "",
    new_version: bool = False,
    builtin: str | None = None,
    base_version_id: str | None = None,
    dataset_version_id: str | None = None,
    job_id: str | None = None,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    progress: ProgressFn = null_progress,
    on_created: Callable[[Session, ModelVersion], None] | None = None,
) -> Registered:
    """Register ``source`` (HF dir, GGUF file or hub id) as a new immutable version of ``name``."""
    validate_name(name, "name")
    validate_text(license, "license", 128)
    if kind is not None and kind not in KINDS:
        raise InvalidInputError(
            "invalid kind",
            problems=[Problem("kind", f"{kind!r} is not a model kind", f"use one of {', '.join(KINDS)}")],
        )
    with app.db.session() as s:
        pid = _project_id(s, app)
        existing = _find_model(s, pid, name)
        existed_before = existing is not None and existing.status != "deleted"
        if existed_before and not new_version:
            raise AlreadyExistsError(
                f"a model named {existing.name!r} already exists; add a version to it with "
                f"`onebox models register {existing.name} <source> --new-version` or choose another name"
            )
    from onebox.services.encryption import scratch_dir  # plaintext temporaries stay off disk

    staging = Path(tempfile.mkdtemp(dir=scratch_dir(app), prefix="model-"))
    try:
        path, facts, extra = _stage(app, source, staging, progress)
        kind = kind or facts.kind
        enforce_storage(app, tree_bytes(path))  # storage quota, before anything is stored
        manifest_blob, manifest = app.blobs.put_tree(path, progress)
        try:
            with app.db.session() as s:
                pid = _project_id(s, app)
                model = _find_model(s, pid, name)
                if model is None:
                    model = Model(
                        id=new_id("mdl"),
                        project_id=pid,
                        name=name,
                        name_key=name_key(name),
                        status="ready",
                        kind=kind,
                        description=description,
                        builtin=builtin,
                    )
                    s.add(model)
                    s.flush()
                elif model.status != "deleted" and not new_version and not existed_before:
                    raise AlreadyExistsError(
                        f"a model named {model.name!r} was created meanwhile; use --new-version"
                    )
                elif model.kind != kind:
                    raise InvalidInputError(
                        f"model {model.name!r} holds {model.kind} models but {source} is {kind}; "
                        "register it under another name"
                    )
                model.status = "ready"
                same = s.scalar(
                    select(ModelVersion).where(
                        ModelVersion.model_id == model.id,
                        ModelVersion.manifest_digest == manifest_blob.digest,
                        ModelVersion.status == "ready",
                    )
                )
                if same is not None:
                    return Registered(same, model, created=False)
                last = s.scalar(
                    select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
                )
                number = (last or 0) + 1
                mv = ModelVersion(
                    id=new_id("mv"),
                    project_id=pid,
                    model_id=model.id,
                    name=f"v{number}",
                    version=number,
                    status="ready",
                    format=facts.format,
                    manifest_digest=manifest_blob.digest,
                    checksum=manifest_blob.digest,
                    size_bytes=manifest.total_size,
                    license=license or _readme_license(Path(source)) or None,
                    source=source,
                    architecture=(facts.architecture or "")[:128] or None,
                    parameters=facts.parameters,
                    config={**(config or {}), **extra},
                    metrics=metrics or {},
                    base_version_id=base_version_id,
                    dataset_version_id=dataset_version_id,
                    job_id=job_id,
                )
                s.add(mv)
                s.flush()
                add_refs(s, OWNER, mv.id, [manifest_blob, *(f for f in _blob_infos(manifest))])
                if on_created is not None:  # e.g. a sealed import's policy, in the same transaction
                    on_created(s, mv)
                events.record(
                    s,
                    project_id=pid,
                    resource_type=OWNER,
                    resource_id=mv.id,
                    kind="model.registered",
                    message=f"registered {model.name}:{number} from {source}",
                    format=facts.format,
                )
                return Registered(mv, model, created=True)
        except DBIntegrityError as exc:
            raise ConflictError(f"model {name!r} changed while this command ran; run it again") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _blob_infos(manifest: Any) -> list[Any]:
    from onebox.store.blobs import BlobInfo

    return [BlobInfo(f.digest, f.size) for f in manifest.files]


def install_builtin(app: App, key: str, progress: ProgressFn = null_progress) -> Registered:
    """Register a catalog model once; later calls return the existing ready version."""
    entry = get_entry(key)
    with app.db.session() as s:
        model = _find_model(s, _project_id(s, app), entry.key)
        if model is not None and model.status != "deleted":
            try:
                mv = resolve(s, model.project_id, Ref(entry.key))
                return Registered(mv, model, created=False)
            except NotFoundError:
                pass
    return register(
        app,
        entry.key,
        str(entry.locate()),
        kind=entry.kind,
        license=entry.license,
        description=entry.description,
        new_version=True,
        builtin=entry.key,
        progress=progress,
    )


def _aliases(session: Session, model_id: str) -> dict[str, int]:
    rows = session.execute(
        select(ModelAlias.name, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == ModelAlias.version_id)
        .where(ModelAlias.model_id == model_id)
        .order_by(ModelAlias.name)
    )
    return {a: v for a, v in rows}


def version_dict(session: Session, model: Model, mv: ModelVersion) -> dict[str, Any]:
    aliases = [a for a, v in _aliases(session, model.id).items() if v == mv.version]
    base = session.get(ModelVersion, mv.base_version_id) if mv.base_version_id else None
    return {
        "id": mv.id,
        "model": model.name,
        "version": mv.version,
        "ref": f"{model.name}:{mv.version}",
        "status": mv.status,
        "format": mv.format,
        "kind": model.kind,
        "architecture": mv.architecture,
        "parameters": mv.parameters,
        "size_bytes": mv.size_bytes,
        "checksum": mv.checksum,
        "license": mv.license,
        "source": mv.source,
        "aliases": aliases,
        "lineage": {
            "base_version": f"{base.model.name}:{base.version}" if base else None,
            "dataset_version": _dataset_ref(session, mv.dataset_version_id),
            "dataset_version_id": mv.dataset_version_id,
            "job_id": mv.job_id,
        },
        "config": mv.config,
        "metrics": mv.metrics,
        "created_at": mv.created_at.isoformat(),
    }


def _dataset_ref(session: Session, dataset_version_id: str | None) -> str | None:
    if dataset_version_id is None:
        return None
    dv = session.get(DatasetVersion, dataset_version_id)
    return f"{session.get_one(Dataset, dv.dataset_id).name}:{dv.version}" if dv else None


def list_models(app: App) -> list[dict[str, Any]]:
    """Every model with its latest ready version, plus built-ins not installed yet."""
    out: list[dict[str, Any]] = []
    with app.db.session() as s:
        pid = _project_id(s, app)
        models = s.scalars(
            select(Model).where(Model.project_id == pid, Model.status != "deleted").order_by(Model.name)
        ).all()
        for m in models:
            ready = [v for v in m.versions if v.status == "ready"]
            latest = ready[-1] if ready else None
            out.append(
                {
                    "name": m.name,
                    "kind": m.kind,
                    "status": "ready" if latest else "empty",
                    "builtin": m.builtin is not None,
                    "latest_version": latest.version if latest else None,
                    "versions": len(ready),
                    "aliases": _aliases(s, m.id),
                    "format": latest.format if latest else None,
                    "size_bytes": latest.size_bytes if latest else 0,
                    "parameters": latest.parameters if latest else None,
                    "license": latest.license if latest else None,
                    "description": m.description,
                }
            )
        installed = {m.builtin for m in models if m.builtin}
    for key, entry in CATALOG.items():
        if key not in installed:
            out.append(
                {
                    "name": key,
                    "kind": entry.kind,
                    "status": "not_installed",
                    "builtin": True,
                    "latest_version": None,
                    "versions": 0,
                    "aliases": {},
                    "format": None,
                    "size_bytes": 0,
                    "parameters": None,
                    "license": entry.license,
                    "description": entry.description,
                }
            )
    return sorted(out, key=lambda r: r["name"])


def show(app: App, ref: str) -> dict[str, Any]:
    r = parse_ref(ref, "model")
    with app.db.session() as s:
        pid = _project_id(s, app)
        model = get_model(s, pid, r.name)
        if r.version is not None or r.alias is not None:
            return version_dict(s, model, resolve(s, pid, r))
        versions = [version_dict(s, model, v) for v in model.versions if v.status == "ready"]
        return {
            "name": model.name,
            "kind": model.kind,
            "description": model.description,
            "builtin": model.builtin,
            "aliases": _aliases(s, model.id),
            "versions": versions,
            "created_at": model.created_at.isoformat(),
        }


def set_alias(app: App, name: str, alias: str, target: str, *, _kind: str = "alias.moved") -> dict[str, Any]:
    """Point ``name@alias`` at a version (``3``, ``v3``, ``name:3`` or another alias)."""
    validate_name(alias, "alias")
    if alias.isdigit() or re.fullmatch(r"[vV]\d+", alias):
        raise InvalidInputError(f"alias {alias!r} looks like a version number; pick a word such as prod")
    target_ref = parse_ref(target if (":" in target or "@" in target) else f"{name}:{target}", "version")
    with app.db.session() as s:
        pid = _project_id(s, app)
        model = get_model(s, pid, name)
        if target_ref.name.lower() != model.name.lower():
            raise InvalidInputError(f"an alias of {model.name!r} must point at one of its own versions")
        mv = resolve(s, pid, target_ref)
        row = s.scalar(select(ModelAlias).where(ModelAlias.model_id == model.id, ModelAlias.name == alias))
        previous = None
        if row is None:
            row = ModelAlias(
                id=new_id("mal"),
                project_id=pid,
                model_id=model.id,
                name=alias,
                status="active",
                version_id=mv.id,
            )
            s.add(row)
        else:
            previous = s.get_one(ModelVersion, row.version_id).version
            row.version_id = mv.id
        s.flush()
        events.record(
            s,
            project_id=pid,
            resource_type="model",
            resource_id=model.id,
            kind=_kind,
            message=f"{model.name}@{alias}: {previous} -> {mv.version}",
            alias=alias,
            from_version=previous,
            to_version=mv.version,
        )
        return {"model": model.name, "alias": alias, "version": mv.version, "previous": previous}


def rollback_alias(app: App, name: str, alias: str) -> dict[str, Any]:
    """Undo the alias's last move; repeated rollbacks walk further back through its history."""
    with app.db.session() as s:
        pid = _project_id(s, app)
        model = get_model(s, pid, name)
        history: list[int | None] = []  # the versions each not-yet-undone move came from
        for e in events.for_resource(s, "model", model.id):
            if e.data.get("alias") != alias:
                continue
            if e.kind == "alias.moved":
                history.append(e.data.get("from_version"))
            elif e.kind == "alias.rolled_back" and history:
                history.pop()
            elif e.kind == "alias.deleted":
                history.clear()
        if not history or history[-1] is None:
            raise NotFoundError(f"{model.name}@{alias} has no earlier version to roll back to")
        previous = history[-1]
    return set_alias(app, name, alias, str(previous), _kind="alias.rolled_back")


def delete_alias(app: App, name: str, alias: str) -> None:
    with app.db.session() as s:
        pid = _project_id(s, app)
        model = get_model(s, pid, name)
        row = s.scalar(select(ModelAlias).where(ModelAlias.model_id == model.id, ModelAlias.name == alias))
        if row is None:
            raise NotFoundError(f"model {model.name!r} has no alias @{alias}")
        s.delete(row)
        events.record(
            s,
            project_id=pid,
            resource_type="model",
            resource_id=model.id,
            kind="alias.deleted",
            message=f"removed {model.name}@{alias}",
            alias=alias,
        )


def _check_deletable(session: Session, model: Model, mv: ModelVersion, deleting: set[str]) -> None:
    """Refuse with a message that says what uses the version and how to free it."""
    label = f"{model.name}:{mv.version}"
    aliases = [a for a, v in _aliases(session, model.id).items() if v == mv.version]
    if aliases:
        names = ", ".join(f"@{a}" for a in aliases)
        raise InUseError(
            f"{label} is used by alias {names}; move the alias first "
            f"(`onebox models alias {model.name} {aliases[0]} <version>`) or remove it (`--delete`)"
        )
    dep = session.scalar(
        select(Deployment)
        .where(Deployment.model_version_id == mv.id, Deployment.status != "deleted")
        .limit(1)
    )
    if dep is not None:
        raise InUseError(
            f"{label} is used by deployment {dep.name!r} ({dep.status}); delete the deployment first"
        )
    job = session.scalar(
        select(Job).where(Job.input_model_version_id == mv.id, Job.status.in_(ACTIVE_JOB_STATES)).limit(1)
    )
    if job is not None:
        raise InUseError(f"{label} is the input of job {job.id} ({job.status}); cancel it or wait for it")
    kb = session.scalar(
        select(KnowledgeBase).where(
            KnowledgeBase.embedding_version_id == mv.id, KnowledgeBase.status != "deleted"
        )
    )
    if kb is not None:
        raise InUseError(f"{label} embeds knowledge base {kb.name!r}; delete the knowledge base first")
    for child in session.scalars(
        select(ModelVersion).where(ModelVersion.base_version_id == mv.id, ModelVersion.status == "ready")
    ):
        if child.id not in deleting:
            raise InUseError(
                f"{label} is the base of {child.model.name}:{child.version}; delete that version first"
            )


def delete(app: App, ref: str) -> list[str]:
    """Delete a version (``name:3``/``name@a``) or a whole model (``name``); returns what went.

    Versions are tombstoned (row kept for lineage, blobs released for ``onebox gc``).
    """
    r = parse_ref(ref, "model")
    with app.db.session() as s:
        pid = _project_id(s, app)
        model = get_model(s, pid, r.name)
        whole = r.version is None and r.alias is None
        targets = [v for v in model.versions if v.status == "ready"] if whole else [resolve(s, pid, r)]
        deleting = {mv.id for mv in targets}
        for mv in targets:
            _check_deletable(s, model, mv, deleting)
        for mv in targets:
            mv.status = "deleted"
            drop_refs(s, OWNER, mv.id)
            events.record(
                s,
                project_id=pid,
                resource_type=OWNER,
                resource_id=mv.id,
                kind="model.deleted",
                message=f"deleted {model.name}:{mv.version}",
            )
        if whole:
            model.status = "deleted"
        return [f"{model.name}:{mv.version}" for mv in targets]


def checkout(
    app: App, ref: str, progress: ProgressFn = null_progress, *, weights_in_memory: bool = False
) -> Path:
    """A verified local directory holding the version's files, ready for transformers.

    With encryption at rest it lies in a private memory-backed folder; ``weights_in_memory``
    (the serving engine) leaves weight files as sealed pointers decrypted straight into memory.

    Every load (deployment workers, training and evaluation jobs, knowledge-base embedders) goes
    through here, so this is where a use policy's *when* and *where* are enforced for loads; the
    *who* was checked where the action began (deploy, train submit)."""
    from onebox.services import policies

    with app.db.session() as s:
        mv = resolve(s, _project_id(s, app), ref)
        digest, version_id = mv.manifest_digest, mv.id
    if digest is None:
        raise NotFoundError(f"{ref} has no stored files")
    policies.enforce(app, OWNER, version_id, "model.load", identity=False, audit_always=True)
    return app.blobs.checkout(digest, progress=progress, weights_in_memory=weights_in_memory)


def export(
    app: App,
    ref: str,
    dest: Path,
    *,
    now: datetime | None = None,
    fingerprint: str | None = None,
    progress: ProgressFn = null_progress,
) -> dict[str, Any]:
    """Write the version's plaintext files into ``dest`` (new or empty folder): a *download*,
    so the use policy is enforced with the caller's identity and the copy is always audited."""
    from onebox.services import policies

    dest = Path(dest).expanduser()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidInputError(
            f"{dest} exists and is not an empty folder",
            problems=[Problem("to", "must be a new or empty folder", "choose another path")],
        )
    with app.db.session() as s:
        mv = resolve(s, _project_id(s, app), ref)
        label, digest, version_id = f"{mv.model.name}:{mv.version}", mv.manifest_digest, mv.id
    if digest is None:
        raise NotFoundError(f"{ref} has no stored files")
    policies.enforce(
        app, OWNER, version_id, "model.download", audit_always=True, now=now, fingerprint=fingerprint
    )
    manifest = app.blobs.read_manifest(digest)
    done = 0
    for entry in manifest.files:
        app.blobs.export_file(entry.digest, dest / entry.path)  # verified, atomic per file
        done += entry.size
        progress("export", done, manifest.total_size)
    return {"ref": label, "to": str(dest), "files": len(manifest.files), "size_bytes": manifest.total_size}
