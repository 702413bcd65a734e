"""Fine-tuning jobs through the real executor and worker: bad input refused at submit, a worker
killed with SIGKILL resumes from its last checkpoint and still registers a version with lineage."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from onebox.config import Settings
from onebox.errors import ConfigError, DependencyMissingError, InvalidInputError, NotFoundError
from onebox.jobs.executor import LocalExecutor
from onebox.services import datasets, jobs, models, training
from onebox.services.context import open_app
from onebox.train.config import SFTConfig

pytestmark = pytest.mark.slow


@pytest.fixture
def app(builtin_home_copy: Path, demo_dir: Path):
    a = open_app(Settings(home=builtin_home_copy))
    datasets.import_file(a, demo_dir / "varnolia_sft.jsonl", "varnolia")
    yield a
    a.close()


def _tiny_recipe(**kw) -> SFTConfig:
    base = {
        "method": "lora",
        "lora_r": 4,
        "max_seq_len": 128,
        "micro_batch_size": 2,
        "max_steps": 8,
        "save_every": 2,
        "eval_every": 4,
        "keep_last": 2,
        "lr": 1e-3,
    }
    return SFTConfig.from_dict({**base, **kw})


@pytest.mark.parametrize(
    "base, data, recipe, error, match",
    [
        ("nope", "varnolia", {}, NotFoundError, "nope"),
        ("smollm2-135m-instruct", "nope", {}, NotFoundError, "nope"),
        ("all-minilm-l6-v2", "varnolia", {}, InvalidInputError, "embedding"),
        ("smollm2-135m-instruct", "varnolia", {"max_seq_len": 100_000}, ConfigError, "max_seq_len"),
        (
            "smollm2-135m-instruct",
            "varnolia",
            {"target_modules": ["q_proj", "nonexistent"]},
            ConfigError,
            "nonexistent",
        ),
        ("smollm2-135m-instruct", "varnolia", {"memory_budget_gb": 0.05}, ConfigError, "GiB"),
        ("smollm2-135m-instruct", "varnolia", {"method": "qlora"}, DependencyMissingError, "CUDA"),
    ],
)
def test_bad_input_is_refused_at_submit(app, base, data, recipe, error, match) -> None:
    if recipe.get("method") == "qlora":
        import torch

        if torch.cuda.is_available():
            pytest.skip("QLoRA is allowed where CUDA is present")
    with pytest.raises(error, match=match):
        training.submit_train(app, base, data, _tiny_recipe(**recipe))
    assert jobs.list_jobs(app) == []


def test_text_dataset_has_no_assistant_turns(app, tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("\n".join(f"第 {i} 行笔记，关于温室传感器。" for i in range(30)), encoding="utf-8")
    datasets.import_file(app, src, "notes")
    with pytest.raises(InvalidInputError, match="no assistant turns"):
        training.submit_train(app, "smollm2-135m-instruct", "notes", _tiny_recipe())


def test_killed_worker_resumes_from_checkpoint_and_registers(app) -> None:
    job = training.submit_train(app, "smollm2-135m-instruct", "varnolia", _tiny_recipe(), output="tiny-lora")
    ex = LocalExecutor(app.settings, heartbeat_interval=0.5)
    killed = False
    try:

        def progress() -> bool:
            nonlocal killed
            j = jobs.get(app, job.id)
            if not killed and j.status == "running" and (j.checkpoint_step or 0) >= 2 and j.pid:
                os.kill(j.pid, signal.SIGKILL)  # no chance to save anything more
                killed = True
            return j.status in ("succeeded", "failed", "cancelled")

        assert ex.run_until(progress, poll=0.2, timeout=900)
    finally:
        ex.close()
    info = jobs.job_dict(jobs.get(app, job.id))
    assert killed, "the job finished before a checkpoint could be killed"
    assert info["status"] == "succeeded", jobs.logs(app, job.id, tail=60)
    assert info["result"]["resumed_from_step"] >= 2
    version = models.show(app, info["result"]["model_version"])
    assert version["format"] == "lora"
    assert version["lineage"]["base_version"] == "smollm2-135m-instruct:1"
    assert version["lineage"]["dataset_version"] == "varnolia:1"
    assert version["lineage"]["job_id"] == job.id
    assert version["metrics"]["steps"] == 8
    json.dumps(version)
