"""Datasets: import (validate, clean, split) into immutable, content-hashed versions.

The pure pipeline in :mod:`onebox.data.importer` writes the version's files into a staging
folder; this module stores them as blobs and only then records the version, its blob
references and an event in one transaction. Any failure before that commit leaves every
existing version untouched; the blobs it may have written are collected by ``onebox gc``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from onebox.data.importer import ImportOptions, prepare
from onebox.data.parquet import read_examples
from onebox.errors import ConflictError, InUseError, InvalidInputError, NotFoundError, Problem, SchemaError
from onebox.progress import ProgressFn, null_progress
from onebox.security.storage import enforce_storage
from onebox.services import events
from onebox.services.context import App
from onebox.services.names import Ref, name_key, parse_ref, validate_name
from onebox.services.projects import get_project
from onebox.store.blobs import BlobInfo
from onebox.store.refs import add_refs, drop_refs
from onebox.store.tables import Dataset, DatasetVersion, Job, ModelVersion, new_id

OWNER = "dataset_version"
SPLITS = ("train", "validation", "quarantine")
CHAT_SCHEMAS = ("messages", "alpaca", "prompt_completion")


def _pid(session: Session, app: App) -> str:
    return get_project(session, app.settings.project).id


def _find(session: Session, pid: str, name: str) -> Dataset | None:
    return session.scalar(
        select(Dataset).where(Dataset.project_id == pid, Dataset.name_key == name_key(name))
    )


def _same_content(session: Session, dataset_id: str, content_hash: str) -> DatasetVersion | None:
    return session.scalar(
        select(DatasetVersion).where(
            DatasetVersion.dataset_id == dataset_id,
            DatasetVersion.content_hash == content_hash,
            DatasetVersion.status == "ready",
        )
    )


def get_dataset(session: Session, pid: str, name: str) -> Dataset:
    ds = _find(session, pid, name)
    if ds is None or ds.status == "deleted":
        raise NotFoundError(f"dataset {name!r} does not exist; see `onebox data list`")
    return ds


def resolve(session: Session, pid: str, ref: Ref | str) -> DatasetVersion:
    """``name`` (latest), ``name:3``; datasets have no aliases."""
    ref = parse_ref(ref, "dataset") if isinstance(ref, str) else ref
    if ref.alias is not None:
        raise InvalidInputError(f"datasets have no aliases; use {ref.name}:<version>")
    ds = get_dataset(session, pid, ref.name)
    q = select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id, DatasetVersion.status == "ready")
    if ref.version is not None:
        dv = session.scalar(q.where(DatasetVersion.version == ref.version))
        if dv is None:
            raise NotFoundError(f"dataset {ds.name!r} has no version {ref.version}")
        return dv
    dv = session.scalar(q.order_by(DatasetVersion.version.desc()).limit(1))
    if dv is None:
        raise NotFoundError(f"dataset {ds.name!r} has no ready version")
    return dv


def _kind(schema: str) -> str:
    return "chat" if schema in CHAT_SCHEMAS else "text"


def import_file(
    app: App,
    path: Path,
    name: str,
    options: ImportOptions | None = None,
    *,
    description: str = "",
    progress: ProgressFn = null_progress,
) -> tuple[DatasetVersion, bool]:
    """Import ``path`` as a new version of dataset ``name``; returns (version, created).

    Re-importing data whose content hash matches an existing version returns that version.
    """
    validate_name(name, "name")
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path} is not a file", problems=[Problem("path", "no such file")])
    options = options or ImportOptions(max_bytes=app.settings.max_import_bytes)
    from onebox.services.encryption import scratch_dir  # plaintext temporaries stay off disk

    staging = Path(tempfile.mkdtemp(dir=scratch_dir(app), prefix="data-"))
    try:
        prepared = prepare(path, staging / "out", options, progress)
        try:
            with app.db.session() as s:
                pid = _pid(s, app)
                ds = _find(s, pid, name)
                if ds is not None and ds.status != "deleted":
                    same = _same_content(s, ds.id, prepared.content_hash)
                    if same is not None:
                        return same, False
                    last = s.scalar(
                        select(DatasetVersion)
                        .where(DatasetVersion.dataset_id == ds.id, DatasetVersion.status == "ready")
                        .order_by(DatasetVersion.version.desc())
                        .limit(1)
                    )
                    if last is not None and _kind(last.schema) != _kind(prepared.schema):
                        raise SchemaError(
                            f"dataset {ds.name!r} holds {_kind(last.schema)} data but {path.name} is "
                            f"{_kind(prepared.schema)} ({prepared.schema}); import it under another name"
                        )
            enforce_storage(app, sum(f.stat().st_size for f in prepared.files.values()))  # quota
            progress("save", 0, len(prepared.files))
            infos: dict[str, BlobInfo] = {}
            for i, (_key, file) in enumerate(sorted(prepared.files.items()), 1):
                infos[file.name] = app.blobs.put_file(file)
                progress("save", i, len(prepared.files))
            manifest = {"files": {n: {"digest": b.digest, "size": b.size} for n, b in infos.items()}}
            manifest_blob = app.blobs.put_json(manifest)
            with app.db.session() as s:
                pid = _pid(s, app)
                ds = _find(s, pid, name)
                if ds is None:
                    ds = Dataset(
                        id=new_id("ds"),
                        project_id=pid,
                        name=name,
                        name_key=name_key(name),
                        status="ready",
                        description=description,
                    )
                    s.add(ds)
                    s.flush()
                elif (same := _same_content(s, ds.id, prepared.content_hash)) is not None:
                    return same, False  # an identical import committed while this one ran
                ds.status = "ready"
                last_no = s.scalar(
                    select(func.max(DatasetVersion.version)).where(DatasetVersion.dataset_id == ds.id)
                )
                number = (last_no or 0) + 1
                parent = s.scalar(
                    select(DatasetVersion.id)
                    .where(DatasetVersion.dataset_id == ds.id, DatasetVersion.status == "ready")
                    .order_by(DatasetVersion.version.desc())
                    .limit(1)
                )
                dv = DatasetVersion(
                    id=new_id("dv"),
                    project_id=pid,
                    dataset_id=ds.id,
                    name=f"v{number}",
                    version=number,
                    status="ready",
                    content_hash=prepared.content_hash,
                    manifest_digest=manifest_blob.digest,
                    schema=prepared.schema,
                    source_format=prepared.format,
                    source_name=path.name,
                    num_train=prepared.num_train,
                    num_validation=prepared.num_validation,
                    num_quarantined=prepared.num_quarantined,
                    size_bytes=sum(b.size for b in infos.values()),
                    report=prepared.report,
                    parent_version_id=parent,
                )
                s.add(dv)
                s.flush()
                add_refs(s, OWNER, dv.id, [manifest_blob, *infos.values()])
                events.record(
                    s,
                    project_id=pid,
                    resource_type=OWNER,
                    resource_id=dv.id,
                    kind="dataset.imported",
                    message=f"imported {ds.name}:{number} from {path.name}",
                    train=dv.num_train,
                    validation=dv.num_validation,
                    quarantined=dv.num_quarantined,
                )
                return dv, True
        except DBIntegrityError as exc:
            raise ConflictError(f"dataset {name!r} changed while this command ran; run it again") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def version_dict(session: Session, dv: DatasetVersion) -> dict[str, Any]:
    ds = session.get_one(Dataset, dv.dataset_id)
    return {
        "id": dv.id,
        "dataset": ds.name,
        "version": dv.version,
        "ref": f"{ds.name}:{dv.version}",
        "status": dv.status,
        "schema": dv.schema,
        "kind": _kind(dv.schema),
        "source_format": dv.source_format,
        "source_name": dv.source_name,
        "content_hash": dv.content_hash,
        "num_train": dv.num_train,
        "num_validation": dv.num_validation,
        "num_quarantined": dv.num_quarantined,
        "size_bytes": dv.size_bytes,
        "parent_version_id": dv.parent_version_id,
        "created_at": dv.created_at.isoformat(),
    }


def list_datasets(app: App) -> list[dict[str, Any]]:
    with app.db.session() as s:
        pid = _pid(s, app)
        out = []
        for ds in s.scalars(
            select(Dataset)
            .where(Dataset.project_id == pid, Dataset.status != "deleted")
            .order_by(Dataset.name)
        ):
            try:
                latest = version_dict(s, resolve(s, pid, Ref(ds.name)))
            except NotFoundError:
                latest = None
            count = s.scalar(
                select(func.count())
                .select_from(DatasetVersion)
                .where(DatasetVersion.dataset_id == ds.id, DatasetVersion.status == "ready")
            )
            out.append(
                {
                    "name": ds.name,
                    "status": ds.status,
                    "versions": count,
                    "latest": latest,
                    "description": ds.description,
                }
            )
        return out


def show(app: App, ref: str) -> dict[str, Any]:
    r = parse_ref(ref, "dataset")
    with app.db.session() as s:
        pid = _pid(s, app)
        if r.version is not None or r.alias is not None:
            return version_dict(s, resolve(s, pid, r))
        ds = get_dataset(s, pid, r.name)
        versions = s.scalars(
            select(DatasetVersion)
            .where(DatasetVersion.dataset_id == ds.id, DatasetVersion.status == "ready")
            .order_by(DatasetVersion.version)
        )
        return {
            "name": ds.name,
            "description": ds.description,
            "created_at": ds.created_at.isoformat(),
            "versions": [version_dict(s, v) for v in versions],
        }


def _manifest(app: App, ref: str) -> tuple[str, dict[str, Any]]:
    with app.db.session() as s:
        dv = resolve(s, _pid(s, app), ref)
        label = f"{get_dataset_name(s, dv)}:{dv.version}"
        digest = dv.manifest_digest
    return label, app.blobs.read_json(digest)["files"]


def get_dataset_name(session: Session, dv: DatasetVersion) -> str:
    return session.get_one(Dataset, dv.dataset_id).name


def report(app: App, ref: str) -> dict[str, Any]:
    """The import report (read from the stored, verified report.json)."""
    label, files = _manifest(app, ref)
    rep = json.loads(app.blobs.read_bytes(files["report.json"]["digest"]))
    return {"ref": label, **rep}


def preview(app: App, ref: str, split: str = "train", limit: int = 5) -> list[dict[str, Any]]:
    """The first ``limit`` rows of a split; ``quarantine`` shows removed rows with reasons."""
    if split not in SPLITS:
        raise InvalidInputError(
            "invalid split",
            problems=[Problem("split", f"{split!r} is not a split", f"use {', '.join(SPLITS)}")],
        )
    if limit < 1:
        raise InvalidInputError("invalid limit", problems=[Problem("limit", "must be at least 1")])
    _, files = _manifest(app, ref)
    if split == "quarantine":
        data = app.blobs.read_bytes(files["quarantine.jsonl"]["digest"]).decode()
        return [json.loads(line) for line in data.splitlines()[:limit] if line.strip()]
    tmp = Path(tempfile.mkdtemp(dir=app.staging_dir, prefix="preview-"))
    try:
        target = tmp / f"{split}.parquet"
        app.blobs.materialize(files[f"{split}.parquet"]["digest"], target)
        rows = read_examples(target)[:limit]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [
        {"line": r.line, "messages": r.messages}
        if r.messages is not None
        else {"line": r.line, "text": r.text}
        for r in rows
    ]


def split_path(app: App, ref: str, split: str, dest_dir: Path) -> Path:
    """Export one split's Parquet file (verified) for a trainer to read; with encryption at rest
    a sealed pointer that ``read_examples`` decrypts into memory."""
    _, files = _manifest(app, ref)
    dest = Path(dest_dir) / f"{split}.parquet"
    return app.blobs.materialize(files[f"{split}.parquet"]["digest"], dest)


def delete(app: App, ref: str) -> list[str]:
    """Delete a version (``name:3``) or a dataset (``name``) unless a model or job was built from it."""
    r = parse_ref(ref, "dataset")
    with app.db.session() as s:
        pid = _pid(s, app)
        ds = get_dataset(s, pid, r.name)
        if r.version is None:
            targets = list(
                s.scalars(
                    select(DatasetVersion).where(
                        DatasetVersion.dataset_id == ds.id, DatasetVersion.status == "ready"
                    )
                )
            )
        else:
            targets = [resolve(s, pid, r)]
        for dv in targets:
            mv = s.scalar(
                select(ModelVersion).where(
                    ModelVersion.dataset_version_id == dv.id, ModelVersion.status == "ready"
                )
            )
            if mv is not None:
                raise InUseError(
                    f"{ds.name}:{dv.version} is the training data of model version "
                    f"{mv.model.name}:{mv.version}; delete that model version first"
                )
            job = s.scalar(
                select(Job).where(
                    Job.input_dataset_version_id == dv.id, Job.status.in_(("queued", "running"))
                )
            )
            if job is not None:
                raise InUseError(f"{ds.name}:{dv.version} is the input of job {job.id} ({job.status})")
        for dv in targets:
            dv.status = "deleted"
            drop_refs(s, OWNER, dv.id)
            events.record(
                s,
                project_id=pid,
                resource_type=OWNER,
                resource_id=dv.id,
                kind="dataset.deleted",
                message=f"deleted {ds.name}:{dv.version}",
            )
        if r.version is None:
            ds.status = "deleted"
        return [f"{ds.name}:{dv.version}" for dv in targets]
