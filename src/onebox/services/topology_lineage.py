"""A task's inputs and outputs from the registry and its folder, as topology facts: the model
and dataset versions a job read (or an evaluation compared), and what it left behind (checkpoints
in its folder, the versions registered with its id, an evaluation's report of scores).

Only what any reader of the project may see: an evaluation's report is its public result (scores),
never the sealed per-question rows.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from onebox.jobs import state
from onebox.monitor.topology_facts import VersionFacts
from onebox.monitor.topology_graph import ADAPTER, CHECKPOINT, DATASET_VERSION, MODEL_VERSION, REPORT
from onebox.services.context import App
from onebox.store.tables import Dataset, DatasetVersion, Job, Model, ModelVersion

MAX_CHECKPOINTS = 10


def model_version(s: Session, version_id: str, role: str, project_id: str) -> VersionFacts | None:
    """The version as an input or output; None when it is gone or not the project's."""
    mv = s.get(ModelVersion, version_id)
    if mv is None or mv.project_id != project_id:
        return None
    model = s.get(Model, mv.model_id)
    label = f"{model.name if model else '?'}:{mv.version}"
    kind = ADAPTER if mv.format == "lora" else MODEL_VERSION
    attrs = {"format": mv.format, "size_bytes": mv.size_bytes, "base_version_id": mv.base_version_id}
    return VersionFacts(mv.id, kind, label, role, mv.status, attrs)


def dataset_version(s: Session, version_id: str, role: str, project_id: str) -> VersionFacts | None:
    dv = s.get(DatasetVersion, version_id)
    if dv is None or dv.project_id != project_id:
        return None
    ds = s.get(Dataset, dv.dataset_id)
    label = f"{ds.name if ds else '?'}:{dv.version}"
    attrs = {"rows_train": dv.num_train, "rows_validation": dv.num_validation, "size_bytes": dv.size_bytes}
    return VersionFacts(dv.id, DATASET_VERSION, label, role, dv.status, attrs)


def job_inputs(s: Session, job: Job) -> list[VersionFacts]:
    out: list[VersionFacts | None] = []
    evaluated = [m.get("version_id") for m in (job.spec or {}).get("models", []) if isinstance(m, dict)]
    if job.type == "eval" and evaluated:
        out += [model_version(s, v, "evaluated", job.project_id) for v in evaluated if isinstance(v, str)]
    elif job.input_model_version_id:
        out.append(model_version(s, job.input_model_version_id, "base_model", job.project_id))
    if job.input_dataset_version_id:
        out.append(dataset_version(s, job.input_dataset_version_id, "dataset", job.project_id))
    return [v for v in out if v is not None]


def _checkpoints(app: App, job: Job) -> list[VersionFacts]:
    """Complete checkpoints in the job's folder (``run/checkpoints/step-*`` with a complete
    ``meta.json``), newest last; the one ``resume`` would use is marked."""
    root = state.work_dir(app.settings, job.id) / "run" / "checkpoints"
    found = []
    for d in sorted(root.glob("step-*")) if root.is_dir() else []:
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict) or meta.get("complete") is not True:
            continue
        files = meta.get("files") if isinstance(meta.get("files"), dict) else {}
        step = meta.get("step")
        size = sum(int(f.get("bytes", 0)) for f in files.values() if isinstance(f, dict))
        attrs = {"step": step, "bytes": size, "path": str(d), "marked": step == job.checkpoint_step}
        found.append(
            VersionFacts(
                f"{job.id}:{d.name}", CHECKPOINT, f"checkpoint {d.name}", "checkpoint", "ready", attrs
            )
        )
    return found[-MAX_CHECKPOINTS:]


def _report(job: Job) -> VersionFacts | None:
    """An evaluation job's report: the scores of its public result (never the sealed rows)."""
    result = job.result or {}
    models = result.get("models")
    if job.type != "eval" or not isinstance(models, dict):
        return None
    scores: dict[str, dict[str, Any]] = {}
    for ref, r in models.items():
        if not isinstance(r, dict):
            continue
        entry = {}
        ppl = r.get("perplexity")
        if isinstance(ppl, dict) and isinstance(ppl.get("perplexity"), int | float):
            entry["perplexity"] = ppl["perplexity"]
        held = r.get("heldout")
        overall = held.get("overall") if isinstance(held, dict) else None
        if isinstance(overall, dict) and isinstance(overall.get("accuracy"), int | float):
            entry["accuracy"] = overall["accuracy"]
        scores[str(ref)] = entry
    attrs = {"scores": scores, "side_by_side": bool(result.get("side_by_side"))}
    return VersionFacts(job.id, REPORT, "evaluation report", "report", "ready", attrs)


def job_outputs(s: Session, app: App, job: Job) -> list[VersionFacts]:
    out: list[VersionFacts] = _checkpoints(app, job)
    for mv in s.scalars(select(ModelVersion).where(ModelVersion.job_id == job.id).order_by(ModelVersion.id)):
        v = model_version(s, mv.id, "model_version", job.project_id)
        if v is not None:
            out.append(v)
    for dv in s.scalars(select(DatasetVersion).where(DatasetVersion.job_id == job.id)):
        v = dataset_version(s, dv.id, "dataset_version", job.project_id)
        if v is not None:
            out.append(v)
    report = _report(job)
    if report is not None:
        out.append(report)
    return out
