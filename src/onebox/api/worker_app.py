"""The HTTP app of one worker process: OpenAI's API for the models of one deployment.

The worker listens on loopback only; the gateway routes each ``/v1`` request here by ``model``,
so this app needs no auth or quotas. Generation stops the moment the client goes away, for
streams and whole responses alike: a gone client must not hold a KV slot.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import Receive, Scope, Send

from onebox.api.errors import error_response, install_error_handlers, openai_error_body
from onebox.engine.embeddings import EmbeddingEngine
from onebox.engine.types import EngineStats
from onebox.errors import InvalidInputError, NotFoundError, Problem, UnavailableError
from onebox.serve.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, model_card
from onebox.serve.textgen import TextGenerationService

log = logging.getLogger(__name__)
T = TypeVar("T")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")
CLIENT_CLOSED = 499
"""nginx's status for 'client closed the request': only ever seen in logs, the client is gone."""


class AdapterLoad(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME.pattern)
    path: str = Field(min_length=1)


class _Disconnected(Exception):
    pass


async def _watch_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it (and so aborting its engine requests) if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_watch_disconnect(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    if task.cancelled() or not task.done():
        with contextlib.suppress(BaseException):
            await task
        raise _Disconnected
    return task.result()


class EventStream(Response):
    """Server-sent events of OpenAI chunks, ending in ``data: [DONE]``.

    Unlike Starlette's streaming response (which on newer servers notices a gone client only at
    the next write), it listens for the disconnect all along and then cancels the stream at
    once; the chunk generator's ``finally`` closes the engine iterators, aborting the requests.
    An error after the headers went out is sent in-band as ``data: {"error": ...}``.
    """

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[dict[str, Any]]) -> None:
        self.chunks = chunks
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.ensure_future(self._stream(send))
        watcher = asyncio.ensure_future(_watch_disconnect(receive))
        try:
            await asyncio.wait({stream, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, watcher):
                task.cancel()
            await asyncio.gather(stream, watcher, return_exceptions=True)
            close = getattr(self.chunks, "aclose", None)
            if close is not None:
                await close()

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            try:
                async for chunk in self.chunks:
                    await send({"type": "http.response.body", "body": _event(chunk), "more_body": True})
            except OSError:
                raise
            except Exception as exc:
                if error_response(exc, openai=True).status_code >= 500:
                    log.exception("stream failed")
                await send(
                    {"type": "http.response.body", "body": _event(openai_error_body(exc)), "more_body": True}
                )
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away mid-write
            return


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _encode_vector(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":  # what the openai client asks for by default: little-endian float32
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def create_worker_app(
    *,
    deployment: str,
    text: TextGenerationService | None = None,
    embed: EmbeddingEngine | None = None,
    embed_names: list[str] | None = None,
) -> FastAPI:
    """The app one worker serves: ``text`` answers chat/completions for the deployment and its
    adapters; ``embed`` answers embeddings under ``embed_names`` (default: the deployment)."""
    names = list(embed_names) if embed_names is not None else ([deployment] if embed is not None else [])
    created = text.created if text is not None else int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if text is not None:
            await text.shutdown()
        if embed is not None:
            embed.close()

    app = FastAPI(
        title=f"onebox worker {deployment}",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    install_error_handlers(app, openai_shape_prefix="/v1")

    def unknown(model: str) -> NotFoundError:
        served = [*(text.model_names() if text is not None else []), *names]
        return NotFoundError(
            f"The model `{model}` does not exist",
            problems=[Problem("model", f"not served here; models: {', '.join(served) or 'none'}")],
            openai_code="model_not_found",
        )

    def text_for(model: str) -> TextGenerationService:
        if text is not None and text.serves(model):
            return text
        if model in names:
            raise InvalidInputError(
                f"`{model}` is an embedding model",
                problems=[Problem("model", "embedding models answer /v1/embeddings only")],
            )
        raise unknown(model)

    async def serve(request: Request, start: Callable[[], Awaitable[Any]], stream: bool) -> Response:
        try:
            result = await _unless_disconnected(request, start())
        except _Disconnected:
            return Response(status_code=CLIENT_CLOSED)
        return EventStream(result) if stream else JSONResponse(result)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        svc = text_for(body.model)
        start = (lambda: svc.chat_stream(body)) if body.stream else (lambda: svc.chat(body))
        return await serve(request, start, body.stream)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        svc = text_for(body.model)
        start = (lambda: svc.completion_stream(body)) if body.stream else (lambda: svc.completion(body))
        return await serve(request, start, body.stream)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        if embed is None or body.model not in names:
            if text is not None and text.serves(body.model):
                raise InvalidInputError(
                    f"`{body.model}` is not an embedding model",
                    problems=[Problem("model", "chat models answer /v1/chat/completions")],
                )
            raise unknown(body.model)
        if body.dimensions is not None and body.dimensions != embed.dimensions:
            raise InvalidInputError(
                "dimensions cannot be changed for this model",
                problems=[Problem("dimensions", f"this model has {embed.dimensions}; omit the field")],
            )
        vectors, tokens = await embed.embed(body.inputs())
        data = [
            {"object": "embedding", "index": i, "embedding": _encode_vector(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        return {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        cards = text.model_cards() if text is not None else []
        cards += [model_card(n, root=n, created=created) for n in names]
        return {"object": "list", "data": cards}

    @app.get("/health")
    async def health() -> dict[str, str]:
        if text is not None and not getattr(text.engine, "healthy", True):
            raise UnavailableError("the inference engine has stopped; the worker must be restarted")
        return {"status": "ok"}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        snapshot = text.stats() if text is not None else EngineStats()
        out = dataclasses.asdict(snapshot)
        out["kv_usage"] = snapshot.kv_usage
        out["adapters"] = text.engine.adapters() if text is not None else []
        out["deployment"] = deployment
        return out

    @app.post("/internal/adapters")
    async def load_adapter(body: AdapterLoad) -> dict[str, Any]:
        if text is None:
            raise InvalidInputError(
                "this worker serves no text model", problems=[Problem("name", "adapters need a text model")]
            )
        text.load_adapter(body.name, Path(body.path))
        return {"name": body.name, "models": text.model_names()}

    @app.delete("/internal/adapters/{name}")
    async def unload_adapter(name: str) -> dict[str, Any]:
        if text is None:
            raise NotFoundError(f"no adapter {name!r}", problems=[Problem("name", "no text model here")])
        text.unload_adapter(name)
        return {"name": name, "models": text.model_names()}

    return app
