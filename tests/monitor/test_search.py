"""Global search on both backends (SQLite FTS5; PostgreSQL tsvector, marked ``postgres``): Chinese
and English, ranking, project isolation, log lines, related resources, deletes, visibility of
users, nodes and events, keeping current without re-indexing what did not change."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from onebox.errors import InvalidInputError
from onebox.monitor import search as search_module
from onebox.monitor import search_store, search_sync
from onebox.monitor.search import Hooks, Query, SearchIndex, Viewer, parse_query
from onebox.services import events
from onebox.services.context import App
from onebox.store.tables import Deployment, Job, KnowledgeBase, ModelVersion, SearchDoc
from tests.monitor.search_box import Box, fill


@pytest.fixture
def box(app: App, tmp_path: Path) -> Box:
    return fill(app, tmp_path)


@pytest.fixture
def index(app: App, box: Box) -> SearchIndex:
    return SearchIndex(app.db.engine, Hooks(kb_documents=box.kb_documents))


def find(index: SearchIndex, viewer: Viewer, q: str, **kw: Any) -> list[dict[str, Any]]:
    return index.search(parse_query(q, **kw), viewer)["hits"]


def names(hits: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(h["type"], h["name"]) for h in hits]


def member(box: Box, **kw: Any) -> Viewer:
    return Viewer((box.pid,), user_id=box.ids.get("bob"), **kw)


def test_english_and_chinese_queries_find_the_right_resources(index: SearchIndex, box: Box) -> None:
    v = member(box)
    assert names(find(index, v, "qwen-finance", types="model"))[0] == ("model", "qwen-finance")
    assert ("model", "qwen-finance") in names(find(index, v, "金融"))  # 金融问答模型: segmented
    assert ("dataset", "客服对话") in names(find(index, v, "客服"))  # a word inside a Chinese name
    assert ("knowledge_base", "产品手册库") in names(find(index, v, "产品手册"))
    assert ("dataset_version", "客服对话:1") in names(find(index, v, "support_dialogs.jsonl"))
    assert ("deployment", "finance-bot") in names(find(index, v, "Finance-Bot"))
    docs = names(find(index, v, "vx200", types=["kb_document"]))  # VX-200 written another way
    assert docs == [("kb_document", "VX-200 产品手册")]
    assert names(find(index, v, box.ids["job"]))[0] == ("job", "sft-finance")  # by id


def test_ranking_puts_the_named_resource_first(index: SearchIndex, box: Box) -> None:
    hits = find(index, member(box), "sft-finance")
    assert hits[0]["type"] == "job" and hits[0]["name"] == "sft-finance"
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    # a word only one document has outranks words many share
    assert find(index, member(box), "model 0.87")[0]["detail"] == "step 100/100 loss 0.87"


def test_job_log_lines_are_found_and_followed(app: App, index: SearchIndex, box: Box) -> None:
    v = member(box)
    hit = find(index, v, "训练", types="log")[0]
    assert hit["id"] == box.ids["job"] and hit["line"] == 3 and hit["detail"] == "开始训练：客服对话数据集"
    assert [(r["relation"], r["name"]) for r in hit["related"]] == [("log_of", "sft-finance")]
    assert box.log is not None
    with app.db.session() as s:
        s.get_one(Job, box.ids["job"]).status = "running"
    with box.log.open("a", encoding="utf-8") as f:
        f.write("saved checkpoint zanzibar\npartial line without")
    assert find(index, v, "zanzibar")[0]["line"] == 5
    assert find(index, v, "partial") == []  # a running job's unfinished line waits for its end
    with box.log.open("a", encoding="utf-8") as f:
        f.write(" its end\n")
    assert find(index, v, "partial")[0]["detail"] == "partial line without its end"


def test_related_resources_follow_lineage(index: SearchIndex, box: Box) -> None:
    v = member(box)
    tuned = next(h for h in find(index, v, "qwen-finance v2") if h["type"] == "model_version")
    rel = {(r["relation"], r["name"]) for r in tuned["related"]}
    assert {
        ("model", "qwen-finance"), ("base_version", "qwen-finance:1"), ("trained_on", "客服对话:1"),
        ("produced_by", "sft-finance"), ("deployed_as", "finance-bot"),
    } <= rel  # fmt: skip
    job = find(index, v, "sft-finance", types="job")[0]
    rel = {(r["relation"], r["name"]) for r in job["related"]}
    assert {
        ("input_model", "qwen-finance:1"),
        ("input_dataset", "客服对话:1"),
        ("output_model", "qwen-finance:2"),
    } <= rel
    assert ("ran_on", "rack-7") in rel
    kb = find(index, v, "产品手册库", types="knowledge_base")[0]
    assert ("embedding_model", "minilm:1") in {(r["relation"], r["name"]) for r in kb["related"]}


def test_project_isolation(index: SearchIndex, box: Box) -> None:
    other = Viewer((box.qid,), user_id=box.ids["carol"])
    assert names(find(index, other, "qwen-secret", types="model")) == [("model", "qwen-secret")]
    assert find(index, other, "zebra-42")[0]["type"] == "log"
    for q in ("finance", "金融", "客服对话", "finance-bot", box.ids["job"][4:], "产品手册", "vx-200", "bob"):
        got = index.search(parse_query(q), other)
        nothing = index.search(parse_query(q + "zzqx"), other)  # a word found nowhere
        assert got["hits"] == [] and nothing["hits"] == []
        assert got["approximate"] == nothing["approximate"]
    mine = member(box)
    for q in ("secret", "机密", "zebra-42", box.ids["secret"][4:]):
        assert find(index, mine, q) == [], q


def test_deletes_disappear(app: App, index: SearchIndex, box: Box) -> None:
    v = member(box)
    assert find(index, v, "finance-bot", types="deployment")
    with app.db.session() as s:  # as services.deployments.delete does: an event, then the row goes
        dep = s.get_one(Deployment, box.ids["dep"])
        events.record(s, project_id=box.pid, resource_type="deployment", resource_id=dep.id,
                      kind="deployment.deleted", message="undeployed finance-bot")  # fmt: skip
        s.delete(dep)
        s.get_one(ModelVersion, box.ids["tuned"]).status = "deleted"
    assert find(index, v, "finance-bot", types="deployment") == []
    assert not [
        h for h in find(index, v, "qwen-finance") if h["type"] == "model_version" and h["name"].endswith(":2")
    ]
    base = next(h for h in find(index, v, "qwen-finance v1") if h["type"] == "model_version")
    assert "derived_version" not in {r["relation"] for r in base["related"]}
    with app.db.session() as s:
        assert s.scalar(select(SearchDoc.id).where(SearchDoc.owner == f"deployment:{box.ids['dep']}")) is None
    with app.db.session() as s:  # a hard delete the index never heard of is still never shown
        kb = s.get_one(KnowledgeBase, box.ids["kb"])
        s.delete(kb)
    assert find(index, v, "产品手册") == []


def test_updates_are_indexed_and_nothing_unchanged_is_rewritten(
    app: App, index: SearchIndex, box: Box
) -> None:
    v = member(box)
    assert find(index, v, "sft-finance")
    assert index.catch_up() == 0
    with app.db.session() as s:
        s.get_one(Job, box.ids["job"]).error = "CUDA out of memory on gpu3"
    assert index.catch_up() == 1
    assert find(index, v, "memory", types="job")[0]["detail"] == "CUDA out of memory on gpu3"
    with app.db.session() as s:  # a Core UPDATE (how job states change) is seen too
        s.execute(Job.__table__.update().where(Job.id == box.ids["job"]).values(status="failed"))
    assert find(index, v, "sft-finance", types="job")[0]["status"] == "failed"


def test_users_nodes_and_events_by_role(index: SearchIndex, box: Box) -> None:
    ids = box.ids
    admin = Viewer((box.pid,), user_id=ids["root"], all_users=True, members=True, operator=True)
    project_admin = Viewer((box.pid,), user_id=ids["alice"], members=True, operator=True)
    viewer = member(box)
    assert {h["name"] for h in find(index, admin, "carol alice bob", types="user")} == {
        "carol",
        "alice",
        "bob",
    }
    assert {h["name"] for h in find(index, project_admin, "carol alice bob", types="user")} == {
        "alice",
        "bob",
    }
    assert {h["name"] for h in find(index, viewer, "carol alice bob", types="user")} == {"bob"}
    me = find(index, viewer, "bob", types="user")[0]
    assert [(r["relation"], r["name"]) for r in me["related"]] == [("member_of", "default (viewer)")]
    assert find(index, viewer, "rack-7", types="node")[0]["name"] == "rack-7"
    assert find(index, viewer, "disk above", types="event") == []  # project-less events: operators
    assert find(index, project_admin, "disk above", types="event")[0]["status"] == "error"


def test_bad_input_is_refused_with_every_problem() -> None:
    with pytest.raises(InvalidInputError) as exc:
        parse_query("  ", types="model,bogus", limit=0)
    assert {p.field for p in exc.value.problems} == {"q", "types", "limit"}
    with pytest.raises(InvalidInputError, match="invalid search"):
        parse_query("x" * 257)
    assert parse_query("a", types=["kb", "logs"]).kinds == ("knowledge_base", "log")


def test_queries_of_no_words_and_very_common_words(
    app: App, index: SearchIndex, box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert index.search(Query("的 the ！"), member(box))["hits"] == []
    monkeypatch.setattr(search_store, "SQLITE_BUDGET", 1)
    monkeypatch.setattr(search_store, "PG_BUDGET", 1)
    result = index.search(Query("loss"), member(box))  # in 2 log lines: over the budget
    assert result["approximate"] and {h["detail"] for h in result["hits"]} >= {"step 100/100 loss 0.87"}
    result = index.search(Query("loss 0.87"), member(box))  # the rare word picks candidates
    assert result["approximate"] and result["hits"][0]["detail"] == "step 100/100 loss 0.87"


def test_rebuild_indexes_the_same_documents(app: App, index: SearchIndex, box: Box) -> None:
    index.catch_up()
    with app.db.session() as s:
        before = sorted(s.execute(select(SearchDoc.key, SearchDoc.name_terms, SearchDoc.body_terms)).all())
        totals = dict(
            s.execute(text("SELECT source, mark FROM search_marks WHERE source LIKE 'stats:%'")).all()
        )
    assert index.rebuild() == len(before)
    with app.db.session() as s:
        after = sorted(s.execute(select(SearchDoc.key, SearchDoc.name_terms, SearchDoc.body_terms)).all())
        totals_after = dict(
            s.execute(text("SELECT source, mark FROM search_marks WHERE source LIKE 'stats:%'")).all()
        )
    assert after == before and totals_after == totals
    assert int(totals["stats:docs"]) == len(before)
    assert find(index, member(box), "qwen-finance")


def test_a_commit_stamped_before_the_last_catch_up_is_still_indexed(
    app: App, index: SearchIndex, box: Box
) -> None:
    now = datetime.now(UTC)
    jobs = Job.__table__
    with app.db.session() as s:
        s.execute(
            jobs.update().where(Job.id == box.ids["job"]).values(updated_at=now - timedelta(seconds=50))
        )
    index.catch_up()
    with app.db.session() as s:  # stamped before the catch-up above, committed after it
        stamp = now - timedelta(seconds=search_sync.OVERLAP_S / 2)
        s.execute(jobs.update().where(Job.id == box.ids["job"]).values(name="renamed", updated_at=stamp))
    assert find(index, member(box), "renamed")[0]["id"] == box.ids["job"]


def test_concurrent_catch_ups_keep_the_index_consistent(app: App, index: SearchIndex, box: Box) -> None:
    index.catch_up()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for k in range(4):
                with app.db.session() as s:
                    s.get_one(Job, box.ids["job"]).error = f"worker {n} round {k}"
                index.catch_up()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    index.catch_up()
    with app.db.session() as s:
        docs = s.execute(select(SearchDoc.key, SearchDoc.length)).all()
        marks = dict(
            s.execute(text("SELECT source, mark FROM search_marks WHERE source LIKE 'stats:%'")).all()
        )
        job = s.get_one(Job, box.ids["job"]).error
    assert int(marks["stats:docs"]) == len(docs) and int(marks["stats:tokens"]) == sum(n for _, n in docs)
    assert find(index, member(box), "sft-finance", types="job")[0]["detail"] == job


def test_a_search_indexes_a_bounded_share_of_new_log_lines(
    app: App, index: SearchIndex, box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search_module, "QUERY_LOG_LINES", 2)
    v = member(box)

    def indexed() -> int:
        with app.db.session() as s:
            return len(s.scalars(select(SearchDoc.id).where(SearchDoc.kind == "log")).all())

    assert find(index, v, "loading base") and indexed() == 2  # 5 lines in two logs: 2 per search
    find(index, v, "0.87")
    assert indexed() == 4
    assert find(index, v, "0.87") and indexed() == 5
    assert box.log is not None
    with box.log.open("a", encoding="utf-8") as f:  # a progress bar: what the terminal shows last
        f.write("epoch 1:  10%|█    |\repoch 1: 100%|█████| ferrari\n")
    assert [h["detail"] for h in find(index, v, "ferrari")] == ["epoch 1: 100%|█████| ferrari"]


def test_the_gateways_keeper_catches_up_in_the_background(app: App, index: SearchIndex, box: Box) -> None:
    from onebox.services.search import Keeper

    index.catch_up()
    with app.db.session() as s:
        s.get_one(Job, box.ids["job"]).error = "kept current"

    async def run() -> None:
        keeper = Keeper(app, interval_s=0.01)
        keeper.start()
        for _ in range(500):
            await asyncio.sleep(0.02)
            with app.db.session() as s:
                doc = s.scalar(select(SearchDoc.detail).where(SearchDoc.key == f"job:{box.ids['job']}"))
            if doc == "kept current":
                break
        await keeper.stop()
        assert doc == "kept current"

    asyncio.run(run())
