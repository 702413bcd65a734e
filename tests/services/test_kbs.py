"""The kbs service on a real home with the built-in MiniLM: create, ingest, search, ask, remove, delete."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from onebox.config import Settings
from onebox.errors import AlreadyExistsError, InUseError, InvalidInputError, NotFoundError
from onebox.jobs.executor import LocalExecutor
from onebox.rag.answer import NOT_FOUND_MESSAGE
from onebox.services import jobs, kbs, models
from onebox.services.context import App, open_app


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    a = open_app(Settings(home=tmp_path_factory.mktemp("kbs") / "home"))
    models.install_builtin(a, "all-minilm-l6-v2")
    yield a
    kbs.clear_caches()
    a.close()


def write_docs(d: Path) -> Path:
    (d / "policies").mkdir(parents=True)
    (d / "policies" / "travel.md").write_text(
        "# 差旅制度\n\n员工出差住宿费每晚不超过500元。\n\n"
        "## Hotels\n\nHotel rooms are refunded up to 500 CNY a night.\n",
        encoding="utf-8",
    )
    (d / "it.txt").write_text("The VPN password rotates every ninety days.\n", encoding="utf-8")
    (d / "empty.txt").write_bytes(b"")
    return d


def run_job(app: App, job_id: str) -> dict:
    ex = LocalExecutor(app.settings, heartbeat_interval=0.5)
    try:
        assert ex.run_until(lambda: ex.is_finished(job_id), poll=0.1, timeout=300)
    finally:
        ex.close()
    return jobs.job_dict(jobs.get(app, job_id))


def test_create_validates_everything_at_once(app: App) -> None:
    with pytest.raises(InvalidInputError) as err:
        kbs.create(app, "bad name", chunk_tokens=4)
    assert {p.field for p in err.value.problems} == {"name", "chunk_tokens", "overlap_tokens"}
    with pytest.raises(NotFoundError):
        kbs.create(app, "x1", embedding="no-such-model")
    info = kbs.create(app, "手册", description="员工手册")
    assert info["embedding"] == "all-minilm-l6-v2:1" and info["dim"] == 384 and info["documents"] == 0
    assert Path(info["index"]).is_dir()
    with pytest.raises(AlreadyExistsError):
        kbs.create(app, "手册")
    assert "手册" in [r["name"] for r in kbs.list_kbs(app)]
    kbs.delete(app, "手册")
    assert not Path(info["index"]).exists()
    with pytest.raises(NotFoundError):
        kbs.show(app, "手册")


def test_ingest_job_search_ask_remove_delete(app: App, tmp_path: Path) -> None:
    kbs.create(app, "policies")
    items, skipped, one_folder = kbs.collect([write_docs(tmp_path / "docs")])
    assert one_folder and not skipped
    job = kbs.add(app, "policies", items, tags=["hr"], sync=True)
    with pytest.raises(InUseError):
        kbs.delete(app, "policies")  # queued ingestion
    done = run_job(app, job.id)
    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    assert result["counts"] == {"added": 2, "updated": 0, "unchanged": 0, "deleted": 0, "failed": 1}
    assert result["failed"][0]["error_code"] == "empty_input"
    info = kbs.show(app, "policies")
    assert info["documents"] == 2 and info["chunks"] >= 2 and not info["jobs"]
    assert {d["source"] for d in kbs.documents(app, "policies")} == {"policies/travel.md", "it.txt"}

    hits = kbs.search(app, "policies", "住宿费每晚", k=3)
    assert hits[0]["source"] == "policies/travel.md" and hits[0]["rank"] == 1
    dense = kbs.search(app, "policies", "how often does the VPN password change", mode="dense", k=1)
    assert dense[0]["source"] == "it.txt"
    flt = kbs.search_filter(sources=["it.txt"])
    assert {h["source"] for h in kbs.search(app, "policies", "住宿费", flt=flt, mode="lexical")} <= {"it.txt"}
    with pytest.raises(InvalidInputError) as err:
        kbs.search(app, "policies", " ", k=0, mode="fuzzy")
    assert {p.field for p in err.value.problems} == {"query", "k", "mode"}

    prompts: list[list[dict[str, str]]] = []

    def fake(messages: list[dict[str, str]]) -> str:
        prompts.append(messages)
        return "住宿费每晚不超过500元 [1]。"

    out = kbs.ask(app, "policies", "出差住宿费每晚多少？", generate=fake)
    assert not out["not_found"] and out["citations"][0]["source"] == "policies/travel.md"
    assert out["sources"][0]["cited"] and "500" in prompts[0][-1]["content"]
    nothing = kbs.ask(app, "policies", "量子计算机的冷却温度是多少？", generate=fake)
    assert nothing["not_found"] and nothing["answer"] == NOT_FOUND_MESSAGE and len(prompts) == 1

    # an explicit re-add of a changed file updates only it
    changed = tmp_path / "it.txt"
    changed.write_text("The VPN password rotates every thirty days.\n", encoding="utf-8")
    again = run_job(app, kbs.add(app, "policies", [("it.txt", changed)]).id)
    assert again["result"]["counts"]["updated"] == 1 and again["result"]["counts"]["deleted"] == 0

    assert kbs.remove(app, "policies", ["it.txt"]) == {"removed": ["it.txt"], "missing": []}
    with pytest.raises(NotFoundError):
        kbs.remove(app, "policies", ["nope.pdf"])
    assert kbs.show(app, "policies")["documents"] == 1
    with pytest.raises(InvalidInputError):
        kbs.add(app, "policies", [("../escape.md", changed)])
    deleted = kbs.delete(app, "policies")
    assert deleted["status"] == "deleted"
    assert not kbs.kb_dir(app.settings, deleted["id"]).exists()
