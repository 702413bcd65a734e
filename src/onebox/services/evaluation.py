"""Evaluation jobs: perplexity on a dataset version's validation split and generation metrics on
held-out questions, for one or more model versions, with a side-by-side report.

The held-out file is stored as a blob referenced by the job, so the worker (possibly on another
node later) reads exactly what was submitted, and a later edit of the file cannot change a result.

With encryption at rest the questions, references and generated answers never reach the job folder
or the database in plaintext: the held-out file is exported into the worker's private memory folder,
and the full result is sealed in the job folder (:func:`onebox.services.jobs.seal_result`); the
database keeps the scores without the per-question rows, and readers open the sealed copy
(:func:`onebox.services.jobs.full_result`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from onebox.errors import InvalidInputError, NotFoundError, Problem
from onebox.jobs.resources import machine_capacity
from onebox.services import datasets, encryption, jobs, models
from onebox.services.context import App
from onebox.services.projects import get_project
from onebox.store.refs import add_refs
from onebox.store.tables import Job, ModelVersion

JOB_TYPE = "eval"


def _pid(session: Session, app: App) -> str:
    return get_project(session, app.settings.project).id


def model_dirs(app: App, version_id: str) -> tuple[Path, Path | None]:
    """The base model directory and, for an adapter version, the adapter directory."""
    with app.db.session() as s:
        mv = s.get_one(ModelVersion, version_id)
        label = f"{mv.model.name}:{mv.version}"
        base_id = mv.base_version_id if mv.format == "lora" else None
        if mv.format == "lora" and base_id is None:
            raise NotFoundError(f"adapter {label} records no base model version")
        if base_id is not None:
            base = s.get_one(ModelVersion, base_id)
            if base.status != "ready":
                raise NotFoundError(f"the base of {label} ({base.model.name}:{base.version}) was deleted")
            base_ref = f"{base.model.name}:{base.version}"
    # weights stay sealed pointers (encrypted store), decrypted into memory by the loader
    if base_id is None:
        return models.checkout(app, label, weights_in_memory=True), None
    return (
        models.checkout(app, base_ref, weights_in_memory=True),
        models.checkout(app, label, weights_in_memory=True),
    )


def submit_eval(
    app: App,
    model_refs: list[str],
    *,
    data: str | None = None,
    heldout: Path | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    priority: int = 0,
) -> Job:
    """Queue one job that evaluates every model on the same inputs (the first is the baseline)."""
    from onebox.evaluate.heldout import load_questions

    problems = []
    if not model_refs:
        problems.append(Problem("models", "name at least one model version"))
    if data is None and heldout is None:
        problems.append(Problem("data", "give --data (a dataset) and/or --heldout (a question file)"))
    if not 1 <= max_new_tokens <= 4096:
        problems.append(Problem("max_new_tokens", f"must be in 1..4096, got {max_new_tokens}"))
    if not 1 <= batch_size <= 256:
        problems.append(Problem("batch_size", f"must be in 1..256, got {batch_size}"))
    if problems:
        raise InvalidInputError("invalid evaluation request", problems=problems)
    if heldout is not None:
        load_questions(Path(heldout))  # fails now, with line numbers, rather than in the worker
    spec: dict[str, Any] = {"models": [], "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    with app.db.session() as s:
        pid = _pid(s, app)
        for ref in model_refs:
            mv = models.resolve(s, pid, ref)
            if mv.model.kind != "chat":
                raise InvalidInputError(f"{ref} is a {mv.model.kind} model; evaluation needs a chat model")
            spec["models"].append({"ref": f"{mv.model.name}:{mv.version}", "version_id": mv.id})
        first_version = spec["models"][0]["version_id"]
        dataset_version_id = None
        if data is not None:
            dv = datasets.resolve(s, pid, data)
            dataset_version_id = dv.id
            spec["data"] = f"{datasets.get_dataset_name(s, dv)}:{dv.version}"
    heldout_blob = app.blobs.put_file(Path(heldout)) if heldout is not None else None
    if heldout_blob is not None:
        spec["heldout"] = {"digest": heldout_blob.digest, "name": Path(heldout).name}
    labels = "-vs-".join(m["ref"].replace(":", "-v") for m in spec["models"])
    job = jobs.submit(
        app,
        JOB_TYPE,
        spec,
        name=f"eval-{labels}"[:128],
        priority=priority,
        input_model_version_id=first_version,
        input_dataset_version_id=dataset_version_id,
        # generation uses every core; a job without a CPU request would run single-threaded
        resources={"cpus": float(machine_capacity(gpus=False).cpus), "memory_mb": 4096},
    )
    if heldout_blob is not None:
        with app.db.session() as s:
            add_refs(s, "job", job.id, [heldout_blob])
    return job


def run_eval_job(ctx: Any) -> dict[str, Any]:
    """Job handler (runs in the worker process)."""
    app = ctx.open_app()
    spec = ctx.spec
    inputs = ctx.work_dir / "inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir(parents=True)
    val_file = datasets.split_path(app, spec["data"], "validation", inputs) if spec.get("data") else None
    private = None
    if encryption.sealer(app, f"job-{ctx.job_id}") is not None:
        private = encryption.scratch_dir(app) / f"{ctx.job_id}-inputs"
    heldout_file = None
    if spec.get("heldout"):
        heldout_file = (private or inputs) / spec["heldout"]["name"]
        app.blobs.export_file(spec["heldout"]["digest"], heldout_file)
    try:
        full = _evaluate_all(app, ctx, val_file, heldout_file)
    finally:
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
    return jobs.seal_result(app, ctx.job_id, full, public_result(full))


def public_result(result: dict[str, Any]) -> dict[str, Any]:
    """An evaluation result without its data (questions, references, answers): scores only."""
    models_out = {}
    for ref, r in result["models"].items():
        held = r.get("heldout")
        if held:
            held = {k: v for k, v in held.items() if k != "rows"} | {"questions": len(held["rows"])}
        models_out[ref] = {**r, "heldout": held}
    sbs = result.get("side_by_side")
    if sbs:
        sbs = {k: v for k, v in sbs.items() if k != "questions"}
    return {**result, "models": models_out, "side_by_side": sbs}


def _evaluate_all(app: App, ctx: Any, val_file: Path | None, heldout_file: Path | None) -> dict[str, Any]:
    """Every model of the job on the same inputs, then the side-by-side comparison."""
    from onebox.evaluate.heldout import EvalReport
    from onebox.evaluate.report import side_by_side
    from onebox.evaluate.runner import evaluate_model

    spec = ctx.spec
    results: dict[str, Any] = {}
    n = len(spec["models"])
    for i, m in enumerate(spec["models"]):
        if ctx.should_stop():
            break
        ctx.log.info("evaluating %s (%d/%d)", m["ref"], i + 1, n)
        model_dir, adapter_dir = model_dirs(app, m["version_id"])

        def progress(stage: str, done: int, total: int | None, _i: int = i) -> None:
            frac = (done / total) if total else 0.0
            ctx.progress(_i + frac, n, stage_done=float(done))

        results[m["ref"]] = evaluate_model(
            model_dir,
            adapter_dir,
            val_file=val_file,
            heldout_file=heldout_file,
            max_new_tokens=int(spec.get("max_new_tokens", 64)),
            batch_size=int(spec.get("batch_size", 8)),
            progress=progress,
        )
        summary = {}
        if results[m["ref"]]["perplexity"]:
            summary["perplexity"] = results[m["ref"]]["perplexity"]["perplexity"]
        if results[m["ref"]]["heldout"]:
            summary["accuracy"] = results[m["ref"]]["heldout"]["overall"]["accuracy"]
        ctx.log.info("%s: %s", m["ref"], summary)
    comparison = None
    reports = {ref: EvalReport.from_dict(r["heldout"]) for ref, r in results.items() if r.get("heldout")}
    if len(reports) > 1:
        comparison = side_by_side(reports)
    ctx.progress(n, n)
    return {"models": results, "side_by_side": comparison}
