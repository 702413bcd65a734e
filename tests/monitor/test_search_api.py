"""``GET /api/v1/search`` through the gateway (keys, isolation, bad input, OpenAPI) and
``onebox search`` as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from onebox.api.app import create_app
from onebox.config import Settings
from onebox.services import apikeys, identity
from onebox.services.context import App, open_app
from tests.auth_helpers import admin_key, bearer
from tests.monitor.search_box import Box, fill


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("search") / "home", monitor_interval_s=0)


@pytest.fixture(scope="module")
def box(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[App, Box]]:
    app = open_app(settings)
    filled = fill(app, tmp_path_factory.mktemp("logs"), users=False)
    yield app, filled
    app.close()


@pytest.fixture(scope="module")
def admin(settings: Settings, box: tuple[App, Box]) -> dict[str, str]:
    return bearer(admin_key(settings))


@pytest.fixture(scope="module")
def carol(box: tuple[App, Box], admin: dict[str, str]) -> dict[str, str]:
    """A developer of team-b."""
    app = box[0]
    identity.create_user(app, "carol", "carol-password-1", project="team-b", role="developer")
    return bearer(apikeys.create_key(app, name="carol", username="carol", project="team-b")["secret"])


@pytest.fixture(scope="module")
def client(settings: Settings, box: tuple[App, Box], admin: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(settings, supervise=False, monitor=False)) as c:
        yield c


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/api/v1/search?q=qwen"), ("POST", "/api/v1/search/rebuild")]
)
def test_anonymous_callers_get_401(client: TestClient, method: str, path: str) -> None:
    assert client.request(method, path).status_code == 401


def test_search_finds_with_related_resources(client: TestClient, admin: dict[str, str]) -> None:
    r = client.get("/api/v1/search", params={"q": "finance-bot"}, headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    hit = body["hits"][0]
    assert (hit["type"], hit["name"], hit["project"]) == ("deployment", "finance-bot", "default")
    assert ("serves", "qwen-finance:2") in {(x["relation"], x["name"]) for x in hit["related"]}
    r = client.get("/api/v1/search", params={"q": "训练", "types": "log,job"}, headers=admin)
    assert [h["line"] for h in r.json()["hits"] if h["type"] == "log"] == [3]


def test_another_projects_key_learns_nothing(
    client: TestClient, admin: dict[str, str], carol: dict[str, str]
) -> None:
    def ask(q: str) -> dict:
        r = client.get("/api/v1/search", params={"q": q}, headers=carol)
        assert r.status_code == 200, r.text
        return {k: v for k, v in r.json().items() if k not in ("query", "terms", "took_ms")}

    assert [
        h["name"]
        for h in client.get("/api/v1/search", params={"q": "finance-bot"}, headers=admin).json()["hits"]
    ]
    for q in ("finance-bot", "金融", "产品手册"):
        assert ask(q) == ask(q + "zzqx") == {"types": ask(q)["types"], "approximate": False, "hits": []}
    assert [h["name"] for h in ask("机密")["hits"]] == ["qwen-secret"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"q": ""}, "q"),
        ({"q": "x" * 257}, "q"),
        ({"q": "qwen", "types": "model,bogus"}, "types"),
        ({"q": "qwen", "limit": 0}, "limit"),
        ({"q": "qwen", "limit": "many"}, "query.limit"),
    ],
)
def test_bad_input_is_a_clear_400(
    client: TestClient, admin: dict[str, str], params: dict, field: str
) -> None:
    r = client.get("/api/v1/search", params=params, headers=admin)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_input" and field in {p["field"] for p in error["problems"]}


def test_rebuild_is_for_administrators(
    client: TestClient, admin: dict[str, str], carol: dict[str, str]
) -> None:
    assert client.post("/api/v1/search/rebuild", headers=carol).status_code == 403
    r = client.post("/api/v1/search/rebuild", headers=admin)
    assert r.status_code == 200 and r.json()["documents"] > 10


def test_openapi_documents_the_search(client: TestClient, admin: dict[str, str]) -> None:
    op = client.get("/openapi.json").json()["paths"]["/api/v1/search"]["get"]
    assert {p["name"] for p in op["parameters"]} == {"q", "types", "limit", "all_projects"}
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("SearchOut")


def test_cli_table_and_json(box: tuple[App, Box], monkeypatch: pytest.MonkeyPatch) -> None:
    from onebox.cli import main, search

    monkeypatch.setattr(search, "get_app", lambda: box[0])
    runner = CliRunner()
    r = runner.invoke(main.app, ["search", "qwen-finance", "--type", "model_version"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "qwen-finance:2" in r.output and "base_version: qwen-finance:1" in r.output
    r = runner.invoke(main.app, ["search", "产品手册", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["hits"][0]["type"] in ("knowledge_base", "kb_document")


def test_cli_exit_codes(settings: Settings, box: tuple[App, Box]) -> None:
    env = {**os.environ, "ONEBOX_HOME": str(settings.home)}
    run = [sys.executable, "-m", "onebox", "search"]
    r = subprocess.run([*run, "qwen", "--type", "bogus", "--json"], env=env, capture_output=True, text=True)
    assert r.returncode == 4 and json.loads(r.stdout)["error"]["problems"][0]["field"] == "types"
    assert Path(settings.home).is_dir()
