"""Storage and concurrent-jobs quotas where services store or queue: refused before anything changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onebox.errors import QuotaExceededError
from onebox.security.storage import (
    check_storage,
    human_bytes,
    kb_sources_dir,
    parse_bytes,
    project_usage,
    replacing_bytes,
)
from onebox.services import datasets, jobs, kbs, models
from onebox.services.context import App
from onebox.store.tables import Blob, DatasetVersion, KnowledgeBase, Model, ModelVersion, Project, new_id

ROWS = [{"instruction": f"question {i}?", "output": f"answer {i * 7}."} for i in range(40)]


def _limit(app: App, **fields: int | None) -> str:
    with app.db.session() as s:
        p = s.get(Project, app.actor().project_id)
        assert p is not None
        for k, v in fields.items():
            setattr(p, k, v)
        return p.id


def _jsonl(path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return path


def _count(app: App, table: type) -> int:
    with app.db.session() as s:
        return s.query(table).count()


def test_parse_and_print_sizes() -> None:
    assert parse_bytes("10GiB") == 10 * 1024**3
    assert parse_bytes("1.5 kb") == 1500
    assert parse_bytes("1024") == 1024
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("ten gigs")
    assert human_bytes(3 * 1024**3) == "3.0 GiB" and human_bytes(12) == "12 B"


def test_dataset_import_refused_over_quota_and_counted_after(sqlite_app: App, tmp_path: Path) -> None:
    app = sqlite_app
    pid = _limit(app, storage_limit_bytes=100)
    with pytest.raises(QuotaExceededError) as ei:
        datasets.import_file(app, _jsonl(tmp_path / "a.jsonl"), "facts")
    err = ei.value
    assert err.details["quota"] == "project.storage" and err.details["limit"] == 100
    assert err.details["retry_after"] >= 60  # waiting frees nothing: no tight retry loop
    assert "storage quota" in err.message
    assert _count(app, DatasetVersion) == 0 and _count(app, Blob) == 0  # nothing was stored
    _limit(app, storage_limit_bytes=None)
    dv, _ = datasets.import_file(app, _jsonl(tmp_path / "a.jsonl"), "facts")
    with app.db.session() as s:
        assert project_usage(s, pid).datasets == dv.size_bytes > 0
        check_storage(s, pid, 10**12)  # unlimited again
    _limit(app, storage_limit_bytes=dv.size_bytes + 10)
    with app.db.session() as s:
        check_storage(s, pid, 10)
        with pytest.raises(QuotaExceededError):
            check_storage(s, pid, 11)


def test_model_register_refused_before_blobs_are_written(sqlite_app: App, tiny_model_dir: Path) -> None:
    app = sqlite_app
    _limit(app, storage_limit_bytes=1000)
    with pytest.raises(QuotaExceededError, match="storage quota"):
        models.register(app, "tiny", str(tiny_model_dir))
    assert _count(app, Model) == 0 and _count(app, Blob) == 0
    _limit(app, storage_limit_bytes=None)
    reg = models.register(app, "tiny", str(tiny_model_dir))
    with app.db.session() as s:
        assert project_usage(s, app.actor().project_id).models == reg.version.size_bytes
    assert _count(app, ModelVersion) == 1


def test_kb_add_counts_the_snapshot(sqlite_app: App, tmp_path: Path) -> None:
    app = sqlite_app
    pid = _limit(app, storage_limit_bytes=1500)
    with app.db.session() as s:
        kb = KnowledgeBase(
            id=new_id("kb"), project_id=pid, name="docs", status="ready",
            config={"index": str(tmp_path / "idx"), "dim": 4, "chunk_tokens": 64, "overlap_tokens": 8},
        )  # fmt: skip
        s.add(kb)
        kb_id = kb.id
    a = tmp_path / "a.txt"
    a.write_text("x" * 1000)
    b = tmp_path / "b.txt"
    b.write_text("y" * 1000)
    kbs.add(app, "docs", [("a.txt", a)])
    src = kb_sources_dir(app.settings.home, kb_id)
    assert src == kbs.sources_dir(app.settings, kb_id)  # the two places agree on the layout
    with app.db.session() as s:
        assert project_usage(s, pid, app.settings.home).documents == 1000
    with pytest.raises(QuotaExceededError):
        kbs.add(app, "docs", [("b.txt", b)])
    assert not (src / "b.txt").exists()
    kbs.add(app, "docs", [("a.txt", b)])  # replacing a file of the same size adds nothing
    assert replacing_bytes(src, [("a.txt", b), ("new.txt", b)]) == 1000


def test_submit_refused_when_job_slots_are_full(sqlite_app: App) -> None:
    app = sqlite_app
    _limit(app, max_concurrent_jobs=1)
    first = jobs.submit(app, "sleep", {"steps": 1})
    with pytest.raises(QuotaExceededError) as ei:
        jobs.submit(app, "sleep", {"steps": 1})
    assert ei.value.details["quota"] == "project.jobs" and ei.value.details["retry_after"] > 0
    assert len(jobs.list_jobs(app)) == 1
    jobs.cancel(app, first.id)
    jobs.submit(app, "sleep", {"steps": 1})  # the slot is free again
