"""The gateway on loopback, driven by the official ``openai`` client.

First against stand-in workers (fast; routing, streaming passthrough, errors, disconnects, a worker
dying mid-stream, metrics, the control plane), then end to end against real worker processes
serving the built-in SmolLM2 and MiniLM through the real engine (marked slow).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from onebox.api.app import create_app
from onebox.config import Settings
from onebox.services import models
from onebox.services.context import open_app
from tests.auth_helpers import admin_key, bearer
from tests.serve.test_supervisor import standin_command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """``create_app`` under uvicorn in a thread, like ``onebox serve`` runs it."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        self.key = admin_key(settings)
        self.app = create_app(settings, **options)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Gateway:
        self.thread.start()
        wait_for(lambda: self.server.started, 30)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)

    @property
    def supervisor(self) -> Any:
        return self.app.state.supervisor

    def client(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, **kw)

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**bearer(self.key), **kw.pop("headers", {})}
        return httpx.request(method, f"{self.url}{path}", timeout=60, headers=headers, **kw)

    def wait_status(self, name: str, status: str = "ready", timeout: float = 60) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def check() -> bool:
            nonlocal last
            last = self.api("GET", f"/api/v1/deployments/{name}").json()
            return last.get("status") == status

        wait_for(check, timeout, lambda: f"deployment {name}: {last}")
        return last


def wait_for(predicate: Callable[[], bool], timeout: float, what: Callable[[], str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s" + (f": {what()}" if what else ""))
        time.sleep(0.1)


# -- stand-in workers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Gateway]:
    settings = Settings(home=tmp_path_factory.mktemp("gw") / "home")
    app = open_app(settings)
    models.register(app, "tiny", str(tiny_model_dir))
    models.register(app, "emb", str(tiny_model_dir), kind="embedding")
    app.close()
    with Gateway(settings, worker_command=standin_command, poll_interval=0.1, stop_grace=3) as g:
        r = g.api("POST", "/api/v1/deployments", json={"model": "tiny", "replicas": 2})
        assert r.status_code == 201, r.text
        assert g.api("POST", "/api/v1/deployments", json={"model": "emb"}).status_code == 201
        g.wait_status("tiny")
        g.wait_status("emb")
        yield g


def test_chat_stream_completions_models_embeddings(gw: Gateway) -> None:
    c = gw.client()
    chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content.startswith("hello from replica")
    assert chat.usage.completion_tokens == 4
    pieces = [
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(
            model="TINY", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        if ch.choices
    ]
    assert "".join(pieces).endswith(" as tiny")  # the gateway sent the canonical id
    assert c.completions.create(model="tiny", prompt="x").choices[0].text.startswith("hello")
    assert [m.id for m in c.models.list()] == ["emb", "tiny"]
    assert c.embeddings.create(model="emb", input="x", encoding_format="float").data[0].embedding == [
        0.1,
        0.2,
        0.3,
    ]


def test_requests_spread_over_replicas(gw: Gateway) -> None:
    c = gw.client()
    seen = {
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
        .choices[0]
        .message.content.split(" as ")[0]
        for _ in range(12)
    }
    assert seen == {"hello from replica 0", "hello from replica 1"}


def test_errors_are_openai_shaped(gw: Gateway) -> None:
    c = gw.client()
    with pytest.raises(openai.NotFoundError) as nf:
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert "available models: emb, tiny" in nf.value.message
    assert nf.value.body["code"] == "model_not_found" and nf.value.body["param"] == "model"
    with pytest.raises(openai.RateLimitError) as rl:
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "please-429"}])
    assert rl.value.response.headers["retry-after"] == "7"
    r = gw.api("POST", "/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    r = gw.api("POST", "/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_worker_dying_mid_stream(gw: Gateway) -> None:
    c = gw.client()
    with pytest.raises(openai.APIError, match="stopped while streaming"):
        for _ in c.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "please-die"}], stream=True
        ):
            pass
    assert gw.api("GET", "/health").json()["status"] == "ok"
    wait_for(lambda: sum(r.restarts for r in gw.supervisor.replicas.values()) >= 1, 30)
    gw.wait_status("tiny")
    # and every request succeeds again
    for _ in range(4):
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])


def test_client_disconnect_cancels_upstream(gw: Gateway) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "please-slow"}], "stream": True}
    url = f"{gw.url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=30, headers=bearer(gw.key)) as r:
        next(r.iter_raw())  # the first chunk arrived; now hang up
    stats = {}

    def aborted() -> bool:
        nonlocal stats
        # keyed by (deployment, replica): both deployments have a replica 0
        stats = {key: httpx.get(f"{rep.url}/stats").json() for key, rep in gw.supervisor.replicas.items()}
        return sum(s["aborted"] for s in stats.values()) >= 1

    wait_for(aborted, 10, lambda: str(stats))


def test_metrics(gw: Gateway) -> None:
    c = gw.client()
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    for _ in c.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    ):
        pass
    text = gw.api("GET", "/metrics").text
    assert 'onebox_requests_total{endpoint="chat.completions",model="tiny",status="200"}' in text
    assert 'onebox_requests_total{endpoint="chat.completions",model="nope",status="404"}' in text
    assert "onebox_time_to_first_token_seconds_count" in text
    assert "onebox_time_per_output_token_seconds_bucket" in text
    assert 'onebox_output_tokens_total{model="tiny"}' in text
    assert 'onebox_worker_kv_usage{deployment="tiny",replica="0"} 0.25' in text
    assert 'onebox_deployment_replicas_ready{deployment="tiny"} 2.0' in text


def test_control_plane(gw: Gateway) -> None:
    r = gw.api("GET", "/api/v1/deployments")
    assert [d["name"] for d in r.json()] == ["emb", "tiny"]
    tiny = gw.api("GET", "/api/v1/deployments/tiny").json()
    assert [x["state"] for x in tiny["replica_status"]] == ["ready", "ready"]
    assert tiny["events"][0]["kind"] == "deployment.created"
    r = gw.api("POST", "/api/v1/deployments", json={"model": "tiny"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "already_exists"
    r = gw.api("POST", "/api/v1/deployments", json={"model": "tiny", "name": "t2", "replicas": 99})
    assert r.status_code == 400 and r.json()["error"]["problems"][0]["field"] == "replicas"
    r = gw.api("POST", "/api/v1/deployments", json={"model": "tiny", "name": "t2", "engine": {"dtype": "x"}})
    assert r.status_code == 400 and r.json()["error"]["problems"][0]["field"] == "dtype"
    assert gw.api("GET", "/api/v1/deployments/nope").status_code == 404
    r = gw.api("POST", "/api/v1/deployments", json={"model": "tiny", "name": "t2", "replicas": 0})
    assert r.status_code == 201 and r.json()["status"] == "stopped"
    with pytest.raises(openai.APIStatusError) as err:
        gw.client().chat.completions.create(model="t2", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 503 and err.value.response.headers["retry-after"]
    assert gw.api("PATCH", "/api/v1/deployments/t2", json={"replicas": 1}).json()["replicas"] == 1
    gw.wait_status("t2")
    assert gw.api("DELETE", "/api/v1/deployments/t2").status_code == 200
    wait_for(lambda: "t2" not in gw.supervisor.model_ids(), 10)
    assert "/api/v1/deployments/{name}/adapters" in gw.api("GET", "/openapi.json").json()["paths"]
    assert gw.api("GET", "/docs").status_code == 200


# -- real workers, real engine ----------------------------------------------------------------


@pytest.fixture(scope="module")
def real(builtin_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    pytest.importorskip("onebox.serve.textgen")
    pytest.importorskip("onebox.engine.async_engine")
    home = tmp_path_factory.mktemp("real") / "home"
    shutil.copytree(
        builtin_home, home, copy_function=os.link, ignore=shutil.ignore_patterns("checkouts", "jobs")
    )
    for f in home.glob("onebox.db*"):
        f.unlink()
        shutil.copy(builtin_home / f.name, f)
    with Gateway(Settings(home=home), poll_interval=0.2) as g:
        body = {
            "model": "smollm2-135m-instruct",
            "name": "smol",
            "engine": {"max_model_len": 512, "max_num_seqs": 8},
        }
        assert g.api("POST", "/api/v1/deployments", json=body).status_code == 201
        assert g.api("POST", "/api/v1/deployments", json={"model": "all-minilm-l6-v2"}).status_code == 201
        g.wait_status("smol", timeout=300)
        g.wait_status("all-minilm-l6-v2", timeout=300)
        yield g


@pytest.mark.slow
def test_real_chat_stream_completions_embeddings(real: Gateway) -> None:
    c = real.client(timeout=120)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    chat = c.chat.completions.create(model="smol", messages=msgs, max_tokens=16, temperature=0)
    assert chat.choices[0].message.content and chat.usage.completion_tokens <= 16
    streamed = "".join(
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(
            model="smol", messages=msgs, max_tokens=16, temperature=0, stream=True
        )
        if ch.choices
    )
    assert streamed == chat.choices[0].message.content  # greedy: same text either way
    assert c.completions.create(model="smol", prompt="1, 2, 3,", max_tokens=4).choices[0].text
    emb = c.embeddings.create(model="all-minilm-l6-v2", input=["hello", "你好"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384
    assert {m.id for m in c.models.list()} == {"smol", "all-minilm-l6-v2"}
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="smol", messages=msgs, max_tokens=10_000)
    with pytest.raises(openai.BadRequestError):
        c.embeddings.create(model="smol", input="x")
    metrics = real.api("GET", "/metrics").text
    assert 'onebox_worker_running{deployment="smol",replica="0"}' in metrics


@pytest.mark.slow
def test_real_adapter_hot_loaded_and_new_version_hot_reloaded(real: Gateway, tmp_path: Path) -> None:
    from tests.conftest import make_lora_adapter

    app = open_app(real.app.state.onebox.settings)
    try:
        base_dir = models.checkout(app, "smollm2-135m-instruct")
        base_id = real.wait_status("smol")["model_version_id"]
        for i in range(2):
            make_lora_adapter(base_dir, tmp_path / f"v{i}", seed=10 + i)
        models.register(app, "smol-lora", str(tmp_path / "v0"), base_version_id=base_id)
        r = real.api("POST", "/api/v1/deployments/smol/adapters", json={"adapter": "smol-lora"})
        assert r.status_code == 200 and r.json()["model_ids"] == ["smol", "smol-lora"]
        rep = real.supervisor.replicas_of(r.json()["id"])[0]
        pid = rep.pid
        wait_for(lambda: "smol-lora" in rep.adapters, 120)
        c = real.client(timeout=120)
        msgs = [{"role": "user", "content": "What is the capital of France?"}]

        def ask(model: str) -> str:
            out = c.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0)
            return out.choices[0].message.content

        base, v1 = ask("smol"), ask("smol-lora")
        assert v1 != base
        # a training job registers version 2: it replaces version 1 in the running worker
        v2_id = models.register(
            app, "smol-lora", str(tmp_path / "v1"), new_version=True, base_version_id=base_id
        ).version.id
        wait_for(lambda: rep.adapters.get("smol-lora") == v2_id, 120)
        assert rep.pid == pid and ask("smol-lora") not in (v1, base)
        events = [e["message"] for e in real.api("GET", "/api/v1/deployments/smol").json()["events"]]
        assert any("loaded smol-lora:2 (hot reload)" in m for m in events)
    finally:
        app.close()


@pytest.mark.slow
def test_real_worker_killed_comes_back_and_scales(real: Gateway) -> None:
    c = real.client(timeout=120)
    msgs = [{"role": "user", "content": "Say hi"}]
    rep = real.supervisor.replicas_of(real.wait_status("smol")["id"])[0]
    os.kill(rep.pid, signal.SIGKILL)
    assert real.api("GET", "/health").status_code == 200
    wait_for(lambda: rep.restarts >= 1, 30)
    real.wait_status("smol", timeout=300)
    assert c.chat.completions.create(model="smol", messages=msgs, max_tokens=4).choices[0].message.content
    assert real.api("PATCH", "/api/v1/deployments/smol", json={"replicas": 2}).status_code == 200
    shown = real.wait_status("smol", timeout=300)
    assert [r["state"] for r in shown["replica_status"]] == ["ready", "ready"]
    for _ in range(4):
        assert c.chat.completions.create(model="smol", messages=msgs, max_tokens=4).choices


def test_key_quota_429_with_retry_after_and_other_projects_see_no_models(gw: Gateway) -> None:
    from onebox.services import apikeys, identity

    onebox = gw.app.state.onebox  # the local operator
    limited = apikeys.create_key(onebox, username="admin", name="limited", rpm=2)["secret"]
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=limited, max_retries=0)
    msgs = [{"role": "user", "content": "hi"}]
    for _ in range(2):
        raw = c.chat.completions.with_raw_response.create(model="tiny", messages=msgs)
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
    with pytest.raises(openai.RateLimitError) as err:
        c.chat.completions.create(model="tiny", messages=msgs)
    assert 1 <= int(err.value.response.headers["retry-after"]) <= 60
    assert "requests per minute" in str(err.value)
    # a key of another project: the same model names do not exist there
    identity.create_project(onebox, "other-team")
    identity.create_user(onebox, "olga", "olga-password-1", project="other-team", role="developer")
    other = apikeys.create_key(onebox, username="olga", project="other-team")["secret"]
    oc = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=other, max_retries=0)
    assert oc.models.list().data == []
    with pytest.raises(openai.NotFoundError) as nf:
        oc.chat.completions.create(model="tiny", messages=msgs)
    assert "tiny" in str(nf.value) and "available models: none" in str(nf.value)
    r = gw.api("GET", "/api/v1/deployments", headers=bearer(other))
    assert r.status_code == 200 and r.json() == []
