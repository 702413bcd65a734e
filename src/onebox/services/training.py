"""Fine-tuning jobs: a base model version plus a dataset version in, a new model version out.

``submit_train`` validates everything it can before queueing (references, dataset kind, the
recipe against the base model's config), so bad input fails in the command, not an hour later in
a worker. ``run_train_job`` runs in the worker process: it checks out the inputs into the job's
work folder, runs the SFT recipe (which resumes from the newest checkpoint there after a crash,
kill or cancel), and registers the result with full lineage.

With encryption at rest nothing the job writes holds data in plaintext: the dataset splits are
sealed pointers, checkpoints are sealed under the job's data key (``job-<id>``), and the adapter
or model is exported into the worker's private memory folder, registered (sealed in the store)
from there and removed. The job log and metrics stay plaintext: they hold numbers and messages,
not data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from onebox.errors import InvalidInputError, NotFoundError
from onebox.jobs.resources import machine_capacity
from onebox.security.streams import Sealer, is_sealed_file
from onebox.services import datasets, encryption, jobs, models
from onebox.services.context import App
from onebox.services.names import validate_name
from onebox.services.projects import get_project
from onebox.store.tables import Job, ModelVersion

JOB_TYPE = "train"


def _pid(session: Session, app: App) -> str:
    return get_project(session, app.settings.project).id


def _base_config(app: App, mv: ModelVersion) -> dict[str, Any]:
    """The base model's config.json, read from its manifest without a full checkout."""
    manifest = app.blobs.read_manifest(mv.manifest_digest or "")
    try:
        entry = manifest.entry("config.json")
    except KeyError as exc:
        raise InvalidInputError(f"{mv.model.name}:{mv.version} has no config.json") from exc
    return json.loads(app.blobs.read_bytes(entry.digest))


def preflight(model_config: dict[str, Any], config: Any, *, weight_bytes: int) -> None:
    """Checks that need the model's shape, done on a weightless (meta-device) copy in a second:
    LoRA target modules must exist, and the batch must fit the memory budget."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from onebox.train.model import (
        check_memory,
        check_runtime,
        check_target_modules,
        estimate_memory,
        resolve_precision,
    )

    cfg_dict = {
        k: v for k, v in model_config.items() if k not in ("quantization_config", "transformers_version")
    }
    try:
        hf_config = AutoConfig.for_model(**cfg_dict)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
    except (KeyError, ValueError) as exc:
        raise InvalidInputError(f"the base model's config cannot be instantiated: {exc}") from exc
    if config.method != "full":
        check_target_modules(model, config.target_modules)
    total = sum(p.numel() for p in model.parameters())
    trainable = total if config.method == "full" else max(1, total // 100)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_runtime(config, device)  # QLoRA without CUDA, bf16/fp16 the hardware cannot do
    precision = resolve_precision(config.precision, device, config.method)
    estimate = estimate_memory(
        hf_config,
        config,
        precision,
        total_params=total,
        trainable_params=trainable,
        weight_bytes=weight_bytes,
        longest_sample=config.max_seq_len,
    )
    check_memory(estimate, config, device)


def default_output_name(base: str, data: str, method: str) -> str:
    return f"{base.split(':')[0].split('@')[0]}-{data.split(':')[0]}-{method}"[:128]


def submit_train(
    app: App,
    base: str,
    data: str,
    config: Any,
    *,
    output: str | None = None,
    priority: int = 0,
    name: str | None = None,
) -> Job:
    """Validate and queue a fine-tuning job; returns the job (status ``queued``)."""
    config.validate()
    output = output or default_output_name(base, data, config.method)
    validate_name(output, "output")
    with app.db.session() as s:
        pid = _pid(s, app)
        mv = models.resolve(s, pid, base)
        if mv.model.kind != "chat":
            raise InvalidInputError(
                f"{base} is a {mv.model.kind} model; fine-tuning needs a chat (causal LM) model"
            )
        if mv.format not in ("safetensors", "pytorch"):
            raise InvalidInputError(
                f"{base} is a {mv.format} version; fine-tune a full model, not an adapter"
            )
        dv = datasets.resolve(s, pid, data)
        if dv.num_train == 0:
            raise InvalidInputError(f"dataset {data} has no training rows")
        if dv.schema == "text":
            raise InvalidInputError(
                f"dataset {data} has no assistant turns (plain text); supervised fine-tuning learns "
                "assistant replies: import chat data (messages, instruction/output or prompt/completion)"
            )
        base_ref = f"{mv.model.name}:{mv.version}"
        data_ref = f"{datasets.get_dataset_name(s, dv)}:{dv.version}"
        existing = models._find_model(s, pid, output)
        if existing is not None and existing.status != "deleted" and existing.kind != "chat":
            raise InvalidInputError(f"output model {output!r} exists and is not a chat model")
        mv_id, dv_id = mv.id, dv.id
        size_bytes = mv.size_bytes
        model_config = _base_config(app, mv)
    from onebox.services import policies

    policies.enforce(app, "model_version", mv_id, "model.train")
    policies.enforce(app, "dataset_version", dv_id, "dataset.train")
    config.validate(model_config=model_config)
    preflight(model_config, config, weight_bytes=size_bytes)
    spec = {
        "base": base_ref,
        "base_version_id": mv_id,
        "data": data_ref,
        "dataset_version_id": dv_id,
        "output": output,
        "config": config.as_dict(),
    }
    cpus = float(machine_capacity(gpus=False).cpus)
    return jobs.submit(
        app,
        JOB_TYPE,
        spec,
        name=name or f"{config.method}-{base_ref}-on-{data_ref}".replace(":", "-v")[:128],
        priority=priority,
        resources={"cpus": cpus, "memory_mb": 4096},
        input_model_version_id=mv_id,
        input_dataset_version_id=dv_id,
    )


def job_sealer(app: App, job_id: str, run_dir: Path) -> Sealer | None:
    """What seals the job's checkpoints: its data key with encryption on, or when the job already
    sealed some. A job keeps the form it began in: one that began sealed stays sealed even if
    encryption was since turned off, and one whose checkpoints were written before encryption was
    turned on stays plaintext (refusing them would silently restart it from step 0)."""
    subject = f"job-{job_id}"
    states = list(run_dir.glob("checkpoints/step-*/state.pt"))
    began_sealed = any(is_sealed_file(p) for p in states)
    if states and not began_sealed:
        return None
    sealer = encryption.sealer(app, subject)
    if sealer is None and began_sealed:
        sealer = encryption.opener(app, subject)
    return sealer


def run_train_job(ctx: Any) -> dict[str, Any]:
    """Job handler (runs in the worker process)."""
    from onebox.train.config import SFTConfig
    from onebox.train.launch import run_sft_distributed
    from onebox.train.sft import SFTHooks

    app = ctx.open_app()
    spec = ctx.spec
    config = SFTConfig.from_dict(spec["config"])
    inputs = ctx.work_dir / "inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir(parents=True)
    ctx.log.info("checking out %s and %s", spec["base"], spec["data"])
    from onebox.services import policies

    # The submitter's identity was checked at submit; when and where still hold at run time.
    policies.enforce(app, "dataset_version", spec["dataset_version_id"], "dataset.load", identity=False)
    # weights stay sealed pointers, decrypted into memory by the trainer (and by torchrun ranks)
    base_dir = models.checkout(app, spec["base"], weights_in_memory=True)
    train_file = datasets.split_path(app, spec["data"], "train", inputs)
    val_file = datasets.split_path(app, spec["data"], "validation", inputs)
    if not datasets.show(app, spec["data"])["num_validation"]:
        val_file = None

    def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
        ctx.progress(step, total, **metrics)
        ctx.log_metrics(step, metrics)

    hooks = SFTHooks(
        on_step=on_step,
        should_stop=ctx.should_stop,
        on_checkpoint=lambda step, path: ctx.mark_checkpoint(step),
        on_message=ctx.log.info,
    )
    run_dir = ctx.work_dir / "run"
    sealer = job_sealer(app, ctx.job_id, run_dir)
    # rank 0 may be a torchrun child: the export folder must be this (the parent's) private one
    export_dir = encryption.scratch_dir(app) / f"{ctx.job_id}-outputs" if sealer is not None else None
    try:
        result = run_sft_distributed(
            base_dir, train_file, val_file, run_dir, config, hooks, sealer=sealer, export_dir=export_dir
        )
        if result.stopped:
            ctx.log.info("stopped at a checkpoint; `onebox jobs resume %s` continues", ctx.job_id)
            return {"stopped": True, "metrics": result.metrics}
        return _register_outputs(app, ctx, config, result)
    finally:
        if export_dir is not None:
            shutil.rmtree(export_dir, ignore_errors=True)


def _register_outputs(app: App, ctx: Any, config: Any, result: Any) -> dict[str, Any]:
    """Register the adapter or model (and the merged model) with lineage to base, data and job."""
    spec = ctx.spec
    artifact = result.adapter_dir if config.method in ("lora", "qlora") else result.model_dir
    if artifact is None:
        raise NotFoundError("the recipe produced no model files")
    reg = models.register(
        app,
        spec["output"],
        str(artifact),
        kind="chat",
        new_version=True,
        description=f"{config.method} fine-tune of {spec['base']} on {spec['data']}",
        base_version_id=spec["base_version_id"],
        dataset_version_id=spec["dataset_version_id"],
        job_id=ctx.job_id,
        config={"recipe": config.as_dict(), "base": spec["base"], "data": spec["data"]},
        metrics=result.metrics,
    )
    out = {
        "model_version": f"{reg.model.name}:{reg.version.version}",
        "metrics": result.metrics,
        "resumed_from_step": result.resumed_from_step,
        "checkpoint_bytes": result.checkpoint_bytes,
    }
    if config.merge and result.model_dir is not None and config.method != "full":
        merged = models.register(
            app,
            f"{spec['output']}-merged"[:128],
            str(result.model_dir),
            kind="chat",
            new_version=True,
            base_version_id=spec["base_version_id"],
            dataset_version_id=spec["dataset_version_id"],
            job_id=ctx.job_id,
            config={"recipe": config.as_dict(), "merged_from": out["model_version"]},
            metrics=result.metrics,
        )
        out["merged_version"] = f"{merged.model.name}:{merged.version.version}"
    ctx.log.info("registered %s", out["model_version"])
    return out
