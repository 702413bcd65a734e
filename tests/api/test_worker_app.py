"""One worker's app on a real uvicorn server on loopback, driven by the official openai client."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from fastapi import FastAPI

from onebox.api.worker_app import create_worker_app
from onebox.engine.embeddings import EmbeddingEngine
from onebox.models.catalog import get_entry
from onebox.serve.textgen import TextGenerationService
from tests.serve.fakes import IM_END, FakeEngine, byte_tokenizer, encode

REPLY = "Hello 世界 🌍! 你好。"


class LiveServer:
    """uvicorn in a thread on an ephemeral loopback port; stops within seconds."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            assert self.thread.is_alive(), "server thread died"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


@pytest.fixture(scope="module")
def engine() -> FakeEngine:
    return FakeEngine(max_model_len=128)


@pytest.fixture(autouse=True)
def reset(engine: FakeEngine) -> None:
    engine.overloaded = False
    engine.fail_after = None
    engine.delay = 0.0
    engine.reply = lambda p: [*encode(REPLY), IM_END]


@pytest.fixture(scope="module")
def server(engine: FakeEngine) -> Iterator[LiveServer]:
    text = TextGenerationService("base", engine, byte_tokenizer())
    embed = EmbeddingEngine.from_model_dir(get_entry("all-minilm-l6-v2").locate(), threads=1)
    app = create_worker_app(deployment="base", text=text, embed=embed, embed_names=["all-minilm-l6-v2"])
    with LiveServer(app) as live:
        yield live
    assert engine.shut_down  # the app's lifespan shut the engine down


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=20)


MSG: list[Any] = [{"role": "user", "content": "hi"}]


def test_chat(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model="base", messages=MSG, seed=1)
    assert out.choices[0].message.content == REPLY
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None and out.usage.completion_tokens == len(encode(REPLY))
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_chat_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="base",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY and "\ufffd" not in text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(encode(REPLY))


def test_completions_and_stream(client: openai.OpenAI, engine: FakeEngine) -> None:
    engine.reply = None  # echo the prompt
    out = client.completions.create(model="base", prompt="abc", max_tokens=5, logprobs=2)
    assert out.choices[0].text == "abcab" and out.choices[0].finish_reason == "length"
    assert out.choices[0].logprobs is not None and out.choices[0].logprobs.tokens == list("abcab")
    parts = [
        c.choices[0].text
        for c in client.completions.create(model="base", prompt="xy", max_tokens=3, stream=True)
    ]
    assert "".join(parts) == "xyx"


def test_embeddings(client: openai.OpenAI) -> None:
    texts = ["The cat sits on the mat.", "A kitten rests on a rug.", "股市今天大跌。"]
    out = client.embeddings.create(model="all-minilm-l6-v2", input=texts)  # base64 on the wire
    vecs = np.array([d.embedding for d in out.data])
    assert vecs.shape == (3, 384) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)
    assert out.usage.prompt_tokens > 0
    floats = client.embeddings.create(
        model="all-minilm-l6-v2", input="The cat sits on the mat.", encoding_format="float"
    )
    assert np.allclose(floats.data[0].embedding, vecs[0], atol=1e-6)
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="all-minilm-l6-v2", input="x", dimensions=128)
    assert err.value.body["param"] == "dimensions"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="base", input="x")


def test_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["base", "all-minilm-l6-v2"]


def test_errors(client: openai.OpenAI, engine: FakeEngine) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="gpt-4", messages=MSG)
    assert nf.value.status_code == 404 and nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as long:
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "x" * 500}])
    assert "maximum context length is 128" in long.value.message
    with pytest.raises(openai.BadRequestError) as hot:
        client.chat.completions.create(model="base", messages=MSG, temperature=5)
    assert hot.value.param == "temperature" and "temperature" in hot.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="base", messages=MSG, extra_body={"top_k": "many"})
    assert bad.value.param == "top_k"
    engine.overloaded = True
    with pytest.raises(openai.RateLimitError) as busy:
        client.chat.completions.create(model="base", messages=MSG, stream=True)
    assert busy.value.status_code == 429 and busy.value.response.headers["retry-after"] == "3"


def test_engine_failure_mid_stream_is_reported_in_band(client: openai.OpenAI, engine: FakeEngine) -> None:
    engine.fail_after = 3
    stream = client.chat.completions.create(model="base", messages=MSG, stream=True)
    with pytest.raises(openai.APIError) as err:
        for _ in stream:
            pass
    assert "internal server error" in str(err.value)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="base", messages=MSG)


def test_stream_disconnect_aborts_at_once(server: LiveServer, engine: FakeEngine) -> None:
    engine.reply = lambda p: encode("x" * 120)
    engine.delay = 0.05
    before = set(engine.closed_early)
    body = {"model": "base", "messages": MSG, "stream": True}
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", server.url + "/v1/chat/completions", json=body) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [line for _, line in zip(range(6), lines, strict=False)]
        assert got[0].startswith("data: ")
        assert engine.running
    # The connection is closed; the engine request must be gone long before the 6 s it had left.
    assert wait_for(lambda: not engine.running, timeout=2.0)
    assert len(engine.closed_early - before) == 1


def test_non_stream_disconnect_aborts(server: LiveServer, engine: FakeEngine) -> None:
    engine.reply = lambda p: encode("x" * 100)
    engine.delay = 0.05
    before = set(engine.closed_early)
    body = {"model": "base", "messages": MSG}
    with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=0.3) as http:
        http.post(server.url + "/v1/chat/completions", json=body)
    assert wait_for(lambda: not engine.running, timeout=2.0)
    assert len(engine.closed_early - before) == 1


def test_health_stats_and_adapters(server: LiveServer, client: openai.OpenAI, tmp_path: Path) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/health").json() == {"status": "ok"}
        stats = http.get("/stats").json()
        assert {"running", "waiting", "kv_usage", "adapters", "kv_tokens_total"} <= set(stats)
        (tmp_path / "adapter_config.json").write_text("{}")
        r = http.post("/internal/adapters", json={"name": "tuned", "path": str(tmp_path)})
        assert r.status_code == 200 and r.json()["models"] == ["base", "tuned"]
        out = client.chat.completions.create(model="tuned", messages=MSG)
        assert out.model == "tuned" and out.choices[0].message.content == REPLY
        assert [m.id for m in client.models.list()][:2] == ["base", "tuned"]
        assert http.get("/stats").json()["adapters"] == ["tuned"]
        r = http.post("/internal/adapters", json={"name": "x", "path": str(tmp_path / "nope")})
        assert r.status_code == 400 and r.json()["error"]["problems"][0]["field"] == "path"
        r = http.post("/internal/adapters", json={"name": "bad name!", "path": str(tmp_path)})
        assert r.status_code == 400 and r.json()["error"]["problems"][0]["field"] == "name"
        assert http.delete("/internal/adapters/tuned").status_code == 200
        assert http.delete("/internal/adapters/tuned").status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="tuned", messages=MSG)


@pytest.mark.slow
def test_real_smollm2_streams_what_it_answers(smollm2_dir: Path) -> None:
    """The real engine behind the worker: a greedy answer streams exactly as it is returned
    whole, and multi-byte text streams without U+FFFD, byte-exact with the tokens' bytes."""
    from onebox.engine import EngineConfig
    from onebox.serve.textgen import build_text_service

    config = EngineConfig(max_model_len=512, max_num_seqs=4, kv_cache_bytes=64 << 20, threads=1)
    text = build_text_service("smollm2", smollm2_dir, config)
    with LiveServer(create_worker_app(deployment="smollm2", text=text)) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        for question, n in [("What is the capital of France?", 24), ("请用中文回答：中国的首都是哪里？", 40)]:
            kw: dict[str, Any] = {
                "model": "smollm2",
                "messages": [{"role": "user", "content": question}],
                "temperature": 0,
                "max_tokens": n,
            }
            whole = client.chat.completions.create(**kw, logprobs=True)
            answer = whole.choices[0].message.content or ""
            assert answer and whole.usage is not None and whole.usage.completion_tokens <= n
            chunks = list(client.chat.completions.create(**kw, stream=True))
            deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
            assert all("\ufffd" not in d for d in deltas)
            assert "".join(deltas) == answer
            assert whole.choices[0].logprobs is not None and whole.choices[0].logprobs.content is not None
            content = whole.choices[0].logprobs.content
            raw = b"".join(bytes(t.bytes or []) for t in content)
            assert raw.decode("utf-8", errors="replace").startswith(answer)
            if question.startswith("请"):  # SmolLM2 answers in Chinese, splitting characters over tokens
                assert any("\u4e00" <= ch <= "\u9fff" for ch in answer)
                assert any(t.token.startswith("bytes:") for t in content)
