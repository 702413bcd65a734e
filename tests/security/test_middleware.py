"""Body size limit (announced and chunked, both error shapes) and security headers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel

from onebox.api.errors import install_error_handlers
from onebox.api.middleware import CONSOLE_CSP, install_middleware
from onebox.config import Settings

LIMIT = 1000


class Doc(BaseModel):
    text: str


def make_app(limit: int = LIMIT) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, openai_shape_prefix="/v1")
    install_middleware(app, Settings(max_upload_bytes=limit))
    seen: dict[str, int] = {}
    app.state.seen = seen

    @app.post("/v1/chat/completions")
    async def proxy(request: Request) -> dict:
        body = await request.body()  # like the gateway's _proxy
        seen["v1"] = len(body)
        return {"ok": True}

    @app.post("/api/v1/docs")
    async def upload(doc: Doc) -> dict:  # a FastAPI-parsed body
        seen["api"] = len(doc.text)
        return {"ok": True}

    @app.get("/")
    async def console() -> HTMLResponse:
        return HTMLResponse("<html><script src='/static/app.js'></script></html>")

    @app.get("/v1/stream")
    async def stream() -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    return app


def client(app: FastAPI, scheme: str = "http") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"{scheme}://onebox")


async def chunks(n: int, size: int = 300) -> AsyncIterator[bytes]:
    for _ in range(n):
        yield b"x" * size


@pytest.mark.anyio
async def test_big_content_length_is_refused_before_the_app_runs() -> None:
    app = make_app()
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", content=b"x" * (LIMIT + 1))
        assert r.status_code == 413
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["code"] == "input_too_large"
        assert f"limit of {LIMIT} bytes" in err["message"] and err["param"] == "body"
        r = await c.post("/api/v1/docs", content=b"x" * (LIMIT + 1))
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "input_too_large"  # onebox's shape
        assert r.json()["error"]["problems"][0]["field"] == "body"
        assert r.headers["x-content-type-options"] == "nosniff"  # headers cover the 413 too
    assert app.state.seen == {}


@pytest.mark.anyio
async def test_chunked_body_over_the_limit_is_refused_while_streaming() -> None:
    app = make_app()
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", content=chunks(5))
        assert "content-length" not in r.request.headers
        assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
        r = await c.post("/api/v1/docs", content=chunks(5), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "problems" in r.json()["error"]
    assert app.state.seen == {}


@pytest.mark.anyio
async def test_bodies_within_the_limit_pass() -> None:
    app = make_app()
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", content=chunks(3))
        assert r.status_code == 200 and app.state.seen["v1"] == 900
        r = await c.post("/api/v1/docs", json={"text": "hello"})
        assert r.status_code == 200 and app.state.seen["api"] == 5
        r = await c.post("/api/v1/docs", content=b"{bad json")  # other body errors stay what they were
        assert r.status_code in (400, 422)
    async with client(make_app(limit=0)) as c:  # 0: no limit
        assert (await c.post("/v1/chat/completions", content=b"x" * 5000)).status_code == 200


@pytest.mark.anyio
async def test_security_headers() -> None:
    app = make_app()
    async with client(app) as c:
        page = await c.get("/")
        assert page.headers["content-security-policy"] == CONSOLE_CSP
        assert "script-src 'self'" in CONSOLE_CSP and "'unsafe-inline'" not in CONSOLE_CSP
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "strict-transport-security" not in page.headers  # plain HTTP
        assert "cache-control" not in page.headers
        api = await c.post("/v1/chat/completions", content=b"{}")
        assert api.headers["cache-control"] == "no-store"
        assert api.headers["content-security-policy"].startswith("default-src 'none'")
        stream = await c.get("/v1/stream")
        assert stream.headers["cache-control"] == "no-cache"  # the app's own value is kept
        assert stream.text.endswith("data: [DONE]\n\n")
        docs = await c.get("/docs")
        assert "content-security-policy" not in docs.headers  # swagger's inline script must run
    async with client(app, scheme="https") as c:
        r = await c.get("/")
        assert r.headers["strict-transport-security"].startswith("max-age=")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
