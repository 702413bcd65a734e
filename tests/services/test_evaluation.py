"""Evaluation jobs end to end: submitted, run by a real worker process, side-by-side result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onebox.config import Settings
from onebox.errors import InvalidInputError, NotFoundError
from onebox.jobs.executor import LocalExecutor
from onebox.services import datasets, evaluation, jobs, models
from onebox.services.context import open_app

pytestmark = pytest.mark.slow


def _questions(path: Path, demo_dir: Path, n: int = 3) -> Path:
    lines = (demo_dir / "varnolia_heldout.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_eval_job_compares_models(builtin_home_copy: Path, demo_dir: Path, tmp_path: Path) -> None:
    settings = Settings(home=builtin_home_copy)
    app = open_app(settings)
    datasets.import_file(app, demo_dir / "varnolia_sft.jsonl", "varnolia")
    base = models.checkout(app, "smollm2-135m-instruct")
    models.register(app, "smol-copy", str(base))  # a second version to compare against
    job = evaluation.submit_eval(
        app,
        ["smollm2-135m-instruct", "smol-copy"],
        data="varnolia",
        heldout=_questions(tmp_path / "q.jsonl", demo_dir),
        max_new_tokens=16,
    )
    ex = LocalExecutor(settings)
    try:
        assert ex.run_until(lambda: jobs.get(app, job.id).status in ("succeeded", "failed"), timeout=600)
    finally:
        ex.close()
    info = jobs.job_dict(jobs.get(app, job.id))
    assert info["status"] == "succeeded", jobs.logs(app, job.id)
    result = info["result"]
    a, b = result["models"]["smollm2-135m-instruct:1"], result["models"]["smol-copy:1"]
    assert a["perplexity"]["perplexity"] == pytest.approx(b["perplexity"]["perplexity"], rel=1e-3)
    assert a["heldout"]["overall"]["n"] == 3
    assert result["side_by_side"]["baseline"] == "smollm2-135m-instruct:1"
    json.dumps(result)  # stored as JSON
    app.close()


def test_eval_bad_input(sqlite_app, tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="--heldout"):
        evaluation.submit_eval(sqlite_app, ["x"])
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"id": "1"}\n', encoding="utf-8")
    models.register(sqlite_app, "tiny", str(tiny_model_dir))
    with pytest.raises(InvalidInputError, match="line 1"):
        evaluation.submit_eval(sqlite_app, ["tiny"], heldout=bad)
    with pytest.raises(NotFoundError):
        evaluation.submit_eval(sqlite_app, ["missing"], data="nothing")
