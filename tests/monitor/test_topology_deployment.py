"""Deployment topologies: from the store alone (model, adapters, the project's API keys seen calling,
prefixes only, the caller seeing only the keys it may list, no gateway running named as the cause)
on SQLite and PostgreSQL, then a live gateway with a stand-in worker: the replica's pid as the
supervisor knows it through the API, and as the CLI finds it under the gateway's process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from onebox.config import Settings
from onebox.errors import NotFoundError
from onebox.services import apikeys, auth, deployments, identity, models, topology
from onebox.services.context import App, open_app
from tests.api.test_gateway import Gateway
from tests.auth_helpers import ADMIN_PASSWORD
from tests.serve.test_supervisor import standin_command


def _kinds(graph: dict, kind: str) -> list[dict]:
    return [n for n in graph["nodes"] if n["kind"] == kind]


def test_deployment_from_the_store_with_keys_and_no_gateway(app: App, tiny_model_dir: Path) -> None:
    base = models.register(app, "tiny", str(tiny_model_dir)).version
    deployments.deploy(app, "tiny", name="bot")
    identity.bootstrap_admin(app, password=ADMIN_PASSWORD)
    identity.create_user(app, "bob", "bob-password-1", role="developer")
    ci = apikeys.create_key(app, name="ci", username="admin")
    bobs = apikeys.create_key(app, name="laptop", username="bob")
    unused = apikeys.create_key(app, name="unused", username="admin")
    old = apikeys.create_key(app, name="old", username="admin")
    for k in (ci, bobs, old):
        auth.authenticate_key(app, k["secret"])  # what the gateway does on each call
    apikeys.revoke_key(app, old["prefix"])
    with pytest.raises(Exception, match="revoked"):
        auth.authenticate_key(app, old["secret"])

    g = topology.deployment_topology(app, "BOT", gateway_running=False)  # names ignore case
    root = g["root"]
    assert root.startswith("deployment:") and g["nodes"][0]["label"] == "bot"
    edges = {(e["source"], e["kind"], e["target"]) for e in g["edges"]}
    assert (f"model_version:{base.id}", "input", root) in edges
    (gw,) = _kinds(g, "gateway")
    assert (gw["id"], "routes", root) in edges and gw["health"] == "critical"
    assert g["cause"]["kind"] == "gateway" and "no gateway is running" in g["cause"]["reason"]
    keys = {n["attrs"]["prefix"]: n for n in _kinds(g, "api_key")}
    assert set(keys) == {ci["prefix"], bobs["prefix"], old["prefix"]}  # not the unused one
    assert unused["prefix"] not in keys
    assert keys[ci["prefix"]]["attrs"]["active_minutes"] == 1 and keys[ci["prefix"]]["health"] == "ok"
    assert keys[old["prefix"]]["attrs"]["state"] == "revoked" and keys[old["prefix"]]["attrs"]["refused"] == 1
    assert keys[old["prefix"]]["health"] == "warning"
    assert all((n["id"], "calls", gw["id"]) in edges for n in keys.values())
    text = json.dumps(g)
    assert all(k["secret"] not in text for k in (ci, bobs, old)) and "secret_hash" not in text

    # bob (a developer) sees his own key; the others are counted, not shown
    bob = auth.authenticate_key(app, bobs["secret"])
    g = topology.deployment_topology(app.acting_as(bob), "bot", gateway_running=False)
    shown = _kinds(g, "api_key")
    assert {n["attrs"].get("prefix") for n in shown} == {bobs["prefix"], None}
    assert next(n for n in shown if n["id"] == "api_key:others")["attrs"]["count"] == 2

    with pytest.raises(NotFoundError):
        topology.deployment_topology(app.in_project("team-b"), "bot")


# -- a live gateway -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Gateway]:
    settings = Settings(home=tmp_path_factory.mktemp("topo-gw") / "home", monitor_interval_s=0)
    a = open_app(settings)
    models.register(a, "tiny", str(tiny_model_dir))
    a.close()
    with Gateway(settings, worker_command=standin_command, poll_interval=0.1, stop_grace=3) as g:
        assert g.api("POST", "/api/v1/deployments", json={"model": "tiny"}).status_code == 201
        g.wait_status("tiny", timeout=60)
        chat = g.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
        assert chat.choices[0].message.content
        yield g


def test_live_deployment_through_the_api(gw: Gateway) -> None:
    r = gw.api("GET", "/api/v1/topology/deployments/tiny")
    assert r.status_code == 200, r.text
    g = r.json()
    (replica,) = gw.supervisor.replicas_of(g["root"].split(":", 1)[1])
    (proc,) = _kinds(g, "process")
    assert proc["attrs"]["pid"] == replica.pid and proc["attrs"]["state"] == "ready"
    assert proc["attrs"]["alive"] is True and proc["health"] == "ok"
    (gateway,) = _kinds(g, "gateway")
    assert gateway["attrs"]["running"] is True and gateway["attrs"]["pid"] == os.getpid()
    (node,) = _kinds(g, "node")
    edges = {(e["source"], e["kind"], e["target"]) for e in g["edges"]}
    assert (proc["id"], "runs_on", node["id"]) in edges and (gateway["id"], "runs_on", node["id"]) in edges
    prefixes = [n["attrs"]["prefix"] for n in _kinds(g, "api_key")]
    assert prefixes == [f"obx_{gw.key.split('_')[1]}"] and gw.key not in r.text
    assert g["health"] == "ok" and g["cause"] is None

    missing = gw.api("GET", "/api/v1/topology/deployments/nope")
    assert missing.status_code == 404
    assert httpx.get(f"{gw.url}/api/v1/topology/deployments/tiny").status_code == 401


def test_live_deployment_from_the_cli(gw: Gateway) -> None:
    """The CLI is not the gateway: it finds the replica among the gateway's children."""
    settings = gw.app.state.onebox.settings
    env = {**os.environ, "ONEBOX_HOME": str(settings.home)}
    cmd = [sys.executable, "-m", "onebox", "topology", "deployment", "tiny", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    g = json.loads(r.stdout)
    (replica,) = gw.supervisor.replicas_of(g["root"].split(":", 1)[1])
    (proc,) = _kinds(g, "process")
    assert proc["attrs"]["pid"] == replica.pid and proc["attrs"]["alive"] is True
    assert proc["label"] == f"replica 0 (pid {replica.pid})"
    assert _kinds(g, "gateway")[0]["attrs"]["pid"] == os.getpid()
    tree = subprocess.run(
        cmd[:-1], capture_output=True, text=True, env={**env, "COLUMNS": "200"}, timeout=120
    )
    assert tree.returncode == 0 and "replica 0" in tree.stdout and "gateway" in tree.stdout
