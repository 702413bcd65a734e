"""Events and alerts through the gateway and the CLI: 401 without a key, project isolation (a
project's alerts to its members, node alerts to operators, every project to administrators who
ask), filters, acknowledgement (operators only, once, audited), ``onebox events`` as a user
runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from onebox.api.app import create_app
from onebox.config import Settings
from onebox.monitor.alerts import AlertEngine
from onebox.monitor.rules import RuleSet, load_rules
from onebox.monitor.samples import COMPONENT, TASK, Sample, Snapshot
from onebox.services import apikeys, auth, events
from onebox.services.context import App
from onebox.store.tables import AuditRecord
from tests.auth_helpers import bearer
from tests.monitor.helpers import project_id

T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("alerts") / "home", node_name="box-1")


@pytest.fixture(scope="module")
def client(settings: Settings, box: App, admin: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(settings, supervise=False, monitor=False)) as c:
        yield c


def _user(
    client: TestClient, box: App, admin: dict[str, str], name: str, role: str, project: str
) -> dict[str, str]:
    r = client.post(
        "/api/v1/users",
        json={"username": name, "password": f"{name}-password-1", "role": role, "project": project},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    principal = auth.login(box, name, f"{name}-password-1", project=project)[2]
    return bearer(apikeys.create_key(box.acting_as(principal), name=name)["secret"])


@pytest.fixture(scope="module")
def people(client: TestClient, box: App, admin: dict[str, str]) -> dict[str, dict[str, str]]:
    assert client.post("/api/v1/projects", json={"name": "team-b"}, headers=admin).status_code == 201
    return {
        "bob": _user(client, box, admin, "bob", "operator", "team-b"),
        "carol": _user(client, box, admin, "carol", "viewer", "default"),
        "dave": _user(client, box, admin, "dave", "developer", "team-b"),
    }


@pytest.fixture(scope="module")
def fired(box: App, people: dict[str, dict[str, str]]) -> dict[str, str]:
    """A node alert, a job alert in each project, and an ordinary job event."""
    rules = load_rules()
    only = {"disk_full", "job_loss_diverging", "worker_oom_killed"}
    engine = AlertEngine(
        box.db,
        "box-1",
        RuleSet(tuple(replace(r, for_s=0) for r in rules.rules if r.name in only)),
    )
    a, b = project_id(box, "default"), project_id(box, "team-b")
    snap = Snapshot(
        "box-1",
        T0,
        [
            Sample(COMPONENT, "fs:/data", "fs_usage_ratio", 0.95),
            Sample(
                TASK, "job:job_a", "job_loss_ratio_to_min", 3.0, name="ft-a", project_id=a, project="default"
            ),
            Sample(TASK, "job:job_b", "worker_oom_killed", 1.0, name="ft-b", project_id=b, project="team-b"),
        ],
    )
    by_rule = {c["rule"]: c["id"] for c in engine.evaluate(snap)}
    with box.db.session() as s:
        ev = events.record(
            s, project_id=a, resource_type="job", resource_id="job_a", kind="job.started", message="attempt 1"
        )
        by_rule["job.started"] = ev.id
    return by_rule


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/api/v1/events"), ("POST", "/api/v1/events/evt_0123456789abcdef0123/ack")]
)
def test_anonymous_callers_get_401(client: TestClient, method: str, path: str) -> None:
    assert client.request(method, path, json={}).status_code == 401


def _ids(r: object) -> set[str]:
    assert r.status_code == 200, r.text  # type: ignore[attr-defined]
    return {e["id"] for e in r.json()}  # type: ignore[attr-defined]


def test_project_isolation(
    client: TestClient, admin: dict[str, str], people: dict, fired: dict[str, str]
) -> None:
    node, job_a, job_b, started = (
        fired["disk_full"],
        fired["job_loss_diverging"],
        fired["worker_oom_killed"],
        fired["job.started"],
    )
    assert _ids(client.get("/api/v1/events", headers=admin)) == {node, job_a, started}
    assert _ids(client.get("/api/v1/events", params={"all_projects": True}, headers=admin)) == {
        node, job_a, job_b, started,
    }  # fmt: skip
    # an operator of team-b: its project's alert and the node's
    assert _ids(client.get("/api/v1/events", headers=people["bob"])) == {node, job_b}
    assert (
        client.get("/api/v1/events", params={"all_projects": True}, headers=people["bob"]).status_code == 403
    )
    # a viewer of default and a developer of team-b: their project's events, no node events
    assert _ids(client.get("/api/v1/events", headers=people["carol"])) == {job_a, started}
    assert _ids(client.get("/api/v1/events", headers=people["dave"])) == {job_b}


def test_filters_and_shape(client: TestClient, admin: dict[str, str], fired: dict[str, str]) -> None:
    r = client.get("/api/v1/events", params={"state": "firing"}, headers=admin)
    assert _ids(r) == {fired["disk_full"], fired["job_loss_diverging"]}
    disk = next(e for e in r.json() if e["rule"] == "disk_full")
    assert disk["state"] == "firing" and disk["severity"] == "error" and disk["node"] == "box-1"
    assert disk["resource"] == "fs:/data" and disk["level"] == "component" and disk["project"] is None
    assert disk["value"] == 0.95 and disk["threshold"] == 0.9 and disk["op"] == ">"
    assert disk["time"].startswith("2027-01-15") and disk["acknowledged"] is None
    assert _ids(client.get("/api/v1/events", params={"severity": "error"}, headers=admin)) == {
        fired["disk_full"]
    }
    assert _ids(client.get("/api/v1/events", params={"resource": "job:job_a"}, headers=admin)) == {
        fired["job_loss_diverging"],
        fired["job.started"],
    }
    assert _ids(client.get("/api/v1/events", params={"resource": "node"}, headers=admin)) == {
        fired["disk_full"]
    }
    assert _ids(client.get("/api/v1/events", params={"alerts": True, "limit": 1}, headers=admin)) <= {
        fired["disk_full"],
        fired["job_loss_diverging"],
    }
    assert _ids(client.get("/api/v1/events", params={"since": "2100-01-01"}, headers=admin)) == set()
    started = next(
        e for e in client.get("/api/v1/events", headers=admin).json() if e["kind"] == "job.started"
    )
    assert started["state"] is None and started["project"] == "default" and started["data"] == {}
    for params, field in (
        ({"severity": "loud"}, "severity"),
        ({"state": "asleep"}, "state"),
        ({"resource": "job:no spaces"}, "resource"),
        ({"limit": 0}, "limit"),
        ({"since": "last tuesday"}, "since"),
    ):
        r = client.get("/api/v1/events", params=params, headers=admin)
        assert r.status_code == 400, (params, r.text)
        assert field in {p["field"] for p in r.json()["error"]["problems"]}


def test_acknowledge(
    client: TestClient, box: App, admin: dict[str, str], people: dict, fired: dict[str, str]
) -> None:
    job_b = fired["worker_oom_killed"]
    path = f"/api/v1/events/{job_b}/ack"
    assert client.post(path, json={"note": "mine"}, headers=people["dave"]).status_code == 403  # a developer
    r = client.post(path, json={"note": "raising the memory limit"}, headers=people["bob"])
    assert r.status_code == 200, r.text
    ack = r.json()["acknowledged"]
    assert ack["by"].startswith("bob/") and ack["note"] == "raising the memory limit" and ack["at"]
    assert r.json()["state"] == "firing"  # acknowledged, still firing until it clears
    again = client.post(path, json={"note": "me too"}, headers=people["bob"])
    assert again.status_code == 409 and "already acknowledged by bob" in again.json()["error"]["message"]
    # another project's alert does not exist for bob; nor does a made-up id
    assert (
        client.post(f"/api/v1/events/{fired['job_loss_diverging']}/ack", headers=people["bob"]).status_code
        == 404
    )
    assert client.post("/api/v1/events/evt_nope/ack", headers=admin).status_code == 404
    not_alert = client.post(f"/api/v1/events/{fired['job.started']}/ack", headers=admin)
    assert not_alert.status_code == 400 and not_alert.json()["error"]["problems"][0]["field"] == "event_id"
    too_long = client.post(
        f"/api/v1/events/{fired['disk_full']}/ack", json={"note": "x" * 1001}, headers=admin
    )
    assert too_long.status_code == 400  # (the node alert is left for the CLI test)
    listed = client.get("/api/v1/events", params={"all_projects": True}, headers=admin).json()
    assert next(e for e in listed if e["id"] == job_b)["acknowledged"]["note"] == "raising the memory limit"
    with box.db.session() as s:
        audited = s.scalars(select(AuditRecord).where(AuditRecord.action == "event.acknowledged")).all()
    assert [(a.resource_id, a.actor.split("/")[0]) for a in audited] == [(job_b, "bob")]


def test_cli(settings: Settings, fired: dict[str, str], tmp_path: Path) -> None:
    env = {**os.environ, "ONEBOX_HOME": str(settings.home), "ONEBOX_NODE_NAME": "box-1", "COLUMNS": "200"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "onebox", "events", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    node = fired["disk_full"]
    res = run("ack", node, "--note", "replacing the disk")
    assert res.returncode == 0, res.stderr
    assert f"acknowledged {node} (disk_full)" in res.stdout
    res = run("ack", node)
    assert res.returncode == 5 and "already acknowledged" in res.stderr  # conflict
    res = run("--state", "firing", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert {r["id"] for r in rows} == {node, fired["job_loss_diverging"]}
    assert next(r for r in rows if r["id"] == node)["acknowledged"]["note"] == "replacing the disk"
    table = run("--alerts")
    assert table.returncode == 0, table.stderr
    assert "fs:/data on box-1" in table.stdout and "acknowledged by local:" in table.stdout
    assert "job:job_a [default]" in table.stdout and "firing" in table.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: disk_full\n    threshold: lots\n    for: later\n", encoding="utf-8")
    res = run("rules", "--file", str(bad))
    assert res.returncode == 4
    assert "rules[0].threshold" in res.stderr and "rules[0].for" in res.stderr
    res = run("rules")
    assert (
        res.returncode == 0
        and "disk_full" in res.stdout
        and "job_stalled_seconds > 600 (derived)" in res.stdout
    )
    res = run("--severity", "loud")
    assert res.returncode == 4 and "severity" in res.stderr
