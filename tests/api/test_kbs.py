"""``/api/v1/kbs`` through TestClient, and ``knowledge_base`` on ``/v1/chat/completions`` through the
official ``openai`` client against a live gateway with stand-in workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from onebox.api.app import create_app
from onebox.config import Settings
from onebox.jobs.executor import LocalExecutor
from onebox.rag.answer import NOT_FOUND_MESSAGE
from onebox.services import kbs, models
from onebox.services.context import open_app
from tests.api.test_gateway import Gateway
from tests.auth_helpers import admin_key, bearer
from tests.serve.test_supervisor import standin_command

TRAVEL = (
    "# 差旅制度\n\n员工出差住宿费每晚不超过500元。\n\n"
    "## Hotels\n\nHotel rooms are refunded up to 500 CNY a night.\n"
)


def run_job(settings: Settings, job_id: str) -> None:
    ex = LocalExecutor(settings, heartbeat_interval=0.5)
    try:
        assert ex.run_until(lambda: ex.is_finished(job_id), poll=0.1, timeout=300)
    finally:
        ex.close()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Settings]:
    settings = Settings(home=tmp_path_factory.mktemp("kbapi") / "home")
    a = open_app(settings)
    models.install_builtin(a, "all-minilm-l6-v2")
    models.register(a, "tiny", str(tiny_model_dir))
    a.close()
    yield settings
    kbs.clear_caches()


@pytest.fixture(scope="module")
def client(home: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(home, supervise=False), headers=bearer(admin_key(home))) as c:
        yield c


def test_kb_lifecycle_upload_search_ask(
    client: TestClient, home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = client.post("/api/v1/kbs", json={"name": "hr", "description": "人事"})
    assert r.status_code == 201, r.text
    assert r.json()["embedding"] == "all-minilm-l6-v2:1"
    assert client.post("/api/v1/kbs", json={"name": "hr"}).status_code == 409
    bad = client.post("/api/v1/kbs", json={"name": "a b", "chunk_tokens": 2})
    assert bad.status_code == 400 and {p["field"] for p in bad.json()["error"]["problems"]} >= {"name"}

    files = [
        ("files", ("policies/travel.md", TRAVEL.encode(), "text/markdown")),
        ("files", ("vpn.txt", b"The VPN password rotates every ninety days.\n", "text/plain")),
    ]
    up = client.post("/api/v1/kbs/hr/documents", files=files, data={"tags": "hr,2024"})
    assert up.status_code == 202, up.text
    assert up.json()["files"] == ["policies/travel.md", "vpn.txt"]
    run_job(home, up.json()["job"])
    docs = client.get("/api/v1/kbs/hr/documents").json()
    assert {d["source"] for d in docs} == {"policies/travel.md", "vpn.txt"}
    assert docs[0]["tags"] == ["hr", "2024"]
    shown = client.get("/api/v1/kbs/hr").json()
    assert shown["documents"] == 2 and shown["jobs"] == [] and shown["events"]
    assert [k["name"] for k in client.get("/api/v1/kbs").json()] == ["hr"]

    hits = client.post("/api/v1/kbs/hr/search", json={"query": "住宿费", "k": 2}).json()
    assert hits[0]["source"] == "policies/travel.md" and "lexical" in hits[0]["scores"]
    only = client.post(
        "/api/v1/kbs/hr/search",
        json={"query": "password", "mode": "lexical", "filter": {"sources": ["vpn.txt"]}},
    ).json()
    assert {h["source"] for h in only} == {"vpn.txt"}
    err = client.post("/api/v1/kbs/hr/search", json={"query": "", "mode": "x"})
    assert err.status_code == 400 and {p["field"] for p in err.json()["error"]["problems"]} == {
        "query",
        "mode",
    }

    monkeypatch.setattr(kbs, "local_generator", lambda *a, **kw: lambda messages: "每晚不超过500元 [1]")
    ans = client.post("/api/v1/kbs/hr/ask", json={"question": "出差住宿费每晚多少钱？"}).json()
    assert ans["answer"].startswith("每晚") and ans["via"] == "local"
    assert ans["citations"][0]["source"] == "policies/travel.md" and ans["sources"][0]["cited"]
    none = client.post("/api/v1/kbs/hr/ask", json={"question": "量子计算机的冷却温度是多少？"}).json()
    assert none["not_found"] and none["via"] == "none" and none["answer"] == NOT_FOUND_MESSAGE

    assert client.delete("/api/v1/kbs/hr/documents/vpn.txt").json() == {"removed": ["vpn.txt"], "missing": []}
    assert client.delete("/api/v1/kbs/hr/documents/vpn.txt").status_code == 404
    assert (
        client.post(
            "/api/v1/kbs/hr/documents", content=b"x", headers={"content-type": "text/plain"}
        ).status_code
        == 400
    )
    assert client.delete("/api/v1/kbs/hr").json()["status"] == "deleted"
    missing = client.get("/api/v1/kbs/hr")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_openapi_documents_the_kb_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert (
        "multipart/form-data" in spec["paths"]["/api/v1/kbs/{kb}/documents"]["post"]["requestBody"]["content"]
    )
    assert spec["components"]["schemas"]["AskIn"]["properties"]["question"]["description"]


@pytest.fixture(scope="module")
def gateway(home: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a = open_app(home)
    kbs.create(a, "policies")
    docs = tmp_path_factory.mktemp("gwdocs")
    (docs / "travel.md").write_text(TRAVEL, encoding="utf-8")
    job = kbs.add(a, "policies", [("travel.md", docs / "travel.md")])
    a.close()
    run_job(home, job.id)
    with Gateway(home, worker_command=standin_command, poll_interval=0.1, stop_grace=3) as g:
        assert g.api("POST", "/api/v1/deployments", json={"model": "tiny"}).status_code == 201
        g.wait_status("tiny")
        yield g


def test_chat_completions_with_knowledge_base(gateway: Gateway) -> None:
    c = gateway.client()
    q = [{"role": "user", "content": "出差住宿费每晚多少？"}]
    chat = c.chat.completions.create(model="tiny", messages=q, extra_body={"knowledge_base": "policies"})
    assert chat.choices[0].message.content.startswith("hello from replica")  # the worker answered
    extra: dict[str, Any] = chat.model_extra or {}
    assert extra["citations"] == []  # the stand-in cites nothing
    assert extra["knowledge_base"]["sources"][0]["source"] == "travel.md"

    chunks = list(
        c.chat.completions.create(
            model="tiny", messages=q, stream=True, extra_body={"knowledge_base": {"name": "policies", "k": 2}}
        )
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices).endswith("as tiny")
    last = chunks[-1].model_extra or {}
    assert not chunks[-1].choices and last["knowledge_base"]["sources"][0]["source"] == "travel.md"

    nothing = c.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "量子计算机的冷却温度是多少？"}],
        extra_body={"knowledge_base": "policies"},
    )
    assert nothing.choices[0].message.content == NOT_FOUND_MESSAGE
    assert (nothing.model_extra or {})["knowledge_base"]["not_found"]

    import openai

    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="tiny", messages=q, extra_body={"knowledge_base": "nope"})
    with pytest.raises(openai.BadRequestError) as bad:
        c.chat.completions.create(
            model="tiny", messages=q, extra_body={"knowledge_base": {"name": "p", "k": "x"}}
        )
    assert bad.value.body["param"] == "knowledge_base.k"  # type: ignore[index]
    plain = c.chat.completions.create(model="tiny", messages=q)  # without the field nothing changes
    assert "citations" not in (plain.model_extra or {})
