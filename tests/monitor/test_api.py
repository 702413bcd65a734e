"""Monitoring through the gateway: ``/api/v1/metrics/query`` and ``/api/v1/nodes`` with project
isolation, and ``/metrics`` read by Prometheus' own text-format parser."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from onebox.api.app import create_app
from onebox.config import Settings
from onebox.monitor.exposition import exported_names
from onebox.services import apikeys, auth
from onebox.services.context import App
from tests.auth_helpers import bearer
from tests.monitor.helpers import running_job


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("monitoring") / "home", node_name="box-1")


@pytest.fixture(scope="module")
def client(settings: Settings, box: App, admin: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(settings, supervise=False, monitor=True)) as c:
        yield c


@pytest.fixture(scope="module")
def jobs(client: TestClient, box: App, admin: dict[str, str]) -> dict[str, str]:
    """A running job in each project, then a monitoring pass that stores them."""
    assert client.post("/api/v1/projects", json={"name": "team-b"}, headers=admin).status_code == 201
    out = {"default": running_job(box, "default", loss=1.5), "team-b": running_job(box, "team-b", loss=2.5)}
    client.portal.call(client.app.state.monitor.pass_once)  # type: ignore[attr-defined,union-attr]
    return out


@pytest.fixture(scope="module")
def bob(client: TestClient, box: App, admin: dict[str, str]) -> dict[str, str]:
    """An operator of team-b (not an administrator)."""
    r = client.post(
        "/api/v1/users",
        json={"username": "bob", "password": "bob-password-1", "role": "operator", "project": "team-b"},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    principal = auth.login(box, "bob", "bob-password-1", project="team-b")[2]
    return bearer(apikeys.create_key(box.acting_as(principal), name="bob")["secret"])


def _resources(body: dict) -> set[str]:
    return {s["resource"] for s in body["series"]}


@pytest.mark.parametrize("path", ["/api/v1/metrics/query", "/api/v1/nodes", "/metrics"])
def test_anonymous_callers_get_401(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 401


def test_query_by_level_resource_metric_and_range(
    client: TestClient, admin: dict[str, str], jobs: dict[str, str]
) -> None:
    r = client.get(
        "/api/v1/metrics/query", params={"level": "node", "metric": "memory_total_bytes"}, headers=admin
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resolution"] == "raw" and body["step_s"] >= 10
    [series] = body["series"]
    assert series["node"] == "box-1" and series["resource"] == "box-1" and series["project"] is None
    assert series["points"] and series["points"][-1][1] > 0
    r = client.get(
        "/api/v1/metrics/query",
        params={"resource": "cpu*", "metric": "cpu_*", "start": "-2h", "end": "now", "step": 60},
        headers=admin,
    )
    assert r.status_code == 200 and r.json()["step_s"] == 60
    assert _resources(r.json()) <= {f"cpu{i}" for i in range(64)}
    old = client.get("/api/v1/metrics/query", params={"start": "-40d", "end": "-39d"}, headers=admin).json()
    assert old["resolution"] == "rollup" and all(not s["points"] for s in old["series"])


def test_task_series_of_other_projects_are_invisible(
    client: TestClient, admin: dict[str, str], bob: dict[str, str], jobs: dict[str, str]
) -> None:
    params = {"level": "task", "metric": "job_loss"}
    mine = client.get("/api/v1/metrics/query", params=params, headers=admin).json()
    assert _resources(mine) == {f"job:{jobs['default']}"}
    assert mine["series"][0]["project"] == "default" and mine["series"][0]["points"][0][1] == 1.5
    theirs = client.get("/api/v1/metrics/query", params=params, headers=bob).json()
    assert _resources(theirs) == {f"job:{jobs['team-b']}"}
    every = client.get("/api/v1/metrics/query", params={**params, "all_projects": True}, headers=admin).json()
    assert _resources(every) == {f"job:{jobs['default']}", f"job:{jobs['team-b']}"}
    r = client.get("/api/v1/metrics/query", params={**params, "all_projects": True}, headers=bob)
    assert r.status_code == 403
    # hardware is everyone's
    assert client.get("/api/v1/metrics/query", params={"level": "node"}, headers=bob).json()["series"]


def test_bad_queries_name_the_field(client: TestClient, admin: dict[str, str]) -> None:
    for params, field in (
        ({"level": "galaxy"}, "level"),
        ({"metric": "no_such_metric"}, "metric"),
        ({"start": "yesterday-ish"}, "start"),
        ({"start": "now", "end": "-1h"}, "start"),
        ({"step": 0}, "step"),
        ({"step": 1e12}, "step"),
        ({"start": "1e400"}, "start"),
        ({"end": "99999999999999999999d"}, "end"),
        ({"resolution": "fine"}, "resolution"),
        ({"start": "-30d", "step": 1, "resolution": "rollup"}, "step"),  # 2.6M points per series
    ):
        r = client.get("/api/v1/metrics/query", params=params, headers=admin)
        assert r.status_code == 400, (params, r.text)
        assert field in {p["field"] for p in r.json()["error"]["problems"]}


def test_nodes(client: TestClient, admin: dict[str, str], jobs: dict[str, str]) -> None:
    [node] = client.get("/api/v1/nodes", headers=admin).json()
    assert node["id"] == "box-1" and node["status"] in ("healthy", "unhealthy")
    assert node["versions"]["onebox"] and node["summary"]["cpu_count"] >= 1


def test_prometheus_parses_metrics_with_the_four_levels(
    client: TestClient, admin: dict[str, str], bob: dict[str, str], jobs: dict[str, str]
) -> None:
    r = client.get("/metrics", headers=admin)
    assert r.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert "onebox_requests" in families  # the gateway's own metrics are still there
    levels = {s.labels["level"] for f in families.values() for s in f.samples if "level" in s.labels}
    assert levels == {"component", "node", "cluster", "task"}
    cpu = families["onebox_cpu_usage_ratio"].samples
    assert all(s.labels["node"] == "box-1" for s in cpu) and {"level", "resource", "name", "project"} <= set(
        cpu[0].labels
    )
    loss = {s.labels["resource"]: s for s in families["onebox_job_loss"].samples}
    assert set(loss) == {f"job:{jobs['default']}", f"job:{jobs['team-b']}"}  # an admin sees all
    assert loss[f"job:{jobs['team-b']}"].labels["project"] == "team-b"
    info = families["onebox_node_info"].samples[0]  # versions as labels
    assert info.labels["onebox"] and info.labels["python"] and info.labels["node"] == "box-1"
    assert len(set(families) & exported_names()) > 30
    bobs = {f.name: f for f in text_string_to_metric_families(client.get("/metrics", headers=bob).text)}
    assert {s.labels["resource"] for s in bobs["onebox_job_loss"].samples} == {f"job:{jobs['team-b']}"}


def test_a_system_admins_read_only_key_sees_its_project_only(
    client: TestClient, box: App, admin: dict[str, str], jobs: dict[str, str]
) -> None:
    """A dashboard key of an administrator, narrowed to ``read``, is not an administrator: no
    other project's series, events or search hits."""
    dash = bearer(apikeys.create_key(box, name="dashboard", username="admin", scopes=["read"])["secret"])
    params = {"level": "task", "metric": "job_loss", "all_projects": True}
    assert client.get("/api/v1/metrics/query", params=params, headers=dash).status_code == 403
    assert client.get("/api/v1/events", params={"all_projects": True}, headers=dash).status_code == 403
    assert (
        client.get("/api/v1/search", params={"q": "train", "all_projects": True}, headers=dash).status_code
        == 403
    )
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics", headers=dash).text)}
    assert {s.labels["resource"] for s in families["onebox_job_loss"].samples} == {f"job:{jobs['default']}"}
