"""The gateway (``onebox serve``): OpenAI-compatible ``/v1`` routed to deployment workers, the
``/api/v1`` control plane, ``/health`` and ``/metrics``.

The gateway that supervises the workers also runs the monitor (``onebox.monitor``): every
``monitor_interval_s`` it collects the four levels into the store, and ``/metrics`` serves its
latest snapshot next to the gateway's own request metrics.

``/v1`` requests are proxied by their ``model`` field to a ready replica of the deployment that
serves it (fewest requests in flight first). Bodies pass through untouched and streams are
relayed chunk by chunk as they arrive; when the client goes away the upstream request is closed,
so the worker aborts the generation and frees its slot. Worker answers (including 429 with
``Retry-After``) pass through as they are; a worker that cannot be reached or dies mid-answer
becomes a 503 in OpenAI's shape, and the gateway itself stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from onebox import __version__
from onebox.api import events_routes, identity_routes, kbs_routes, metrics_routes
from onebox.api.auth import authorize, install_auth, principal_of
from onebox.api.deployment_counters import deployment_counters
from onebox.api.deployments_routes import router as deployments_router
from onebox.api.errors import error_response, install_error_handlers, openai_error_body
from onebox.api.gateway_metrics import GatewayMetrics, StreamMeter
from onebox.api.middleware import install_middleware
from onebox.api.search_routes import router as search_router
from onebox.api.topology_routes import router as topology_router
from onebox.config import Settings, load_settings
from onebox.errors import InvalidInputError, OneboxError, Problem, UnavailableError
from onebox.monitor import exposition
from onebox.monitor.loop import Monitor, MonitorConfig, MonitorTask
from onebox.monitor.rules import load_rules
from onebox.monitor.tasks import DeploymentCounters
from onebox.security.quotas import LimitsCache, QuotaGate, Ticket, tokens_from_usage
from onebox.serve.supervisor import Replica, Route, Supervisor
from onebox.services import search as search_service
from onebox.services.context import open_app

log = logging.getLogger(__name__)

PASS_HEADERS = ("content-type", "retry-after", "x-request-id")
RETRY_AFTER_S = 2


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "onebox"
    deployment: str = Field(description="The deployment serving this model id.")
    status: str = Field(description="The deployment's status.")


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: str
    version: str
    deployments: dict[str, str] = Field(description="Deployment name -> status.")


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


def create_app(
    settings: Settings | None = None,
    *,
    supervise: bool = True,
    monitor: bool | None = None,
    **supervisor_options: Any,
) -> FastAPI:
    """The gateway app. With ``supervise`` it runs the deployments' workers (one such gateway per
    home); without, it only serves the control plane and routes nothing. ``monitor`` (default:
    as ``supervise``) runs the monitor unless ``monitor_interval_s`` is 0."""
    settings = settings or load_settings()
    onebox = open_app(settings)
    supervisor = Supervisor(onebox, **supervisor_options)
    metrics = GatewayMetrics()
    monitoring = (supervise if monitor is None else monitor) and settings.monitor_interval_s > 0
    if monitoring and settings.alerts_enabled:  # a bad rules file stops the start, naming every problem
        load_rules(settings.alert_rules_file, settings.alert_webhooks)

    async def counters() -> list[DeploymentCounters]:
        stats = await supervisor.worker_stats() if supervise else []
        return deployment_counters(supervisor, metrics, stats)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=2.0, read=None, write=60.0, pool=None),
            limits=httpx.Limits(max_connections=2048, max_keepalive_connections=256),
        )
        keeper: search_service.Keeper | None = None
        try:  # whatever fails to start, what did start is stopped below
            if supervise:
                await supervisor.start()
            if monitoring:
                mon = await asyncio.to_thread(Monitor, onebox.db, MonitorConfig.from_settings(settings))
                app.state.monitor = MonitorTask(mon, counters)
                app.state.monitor.start()
                keeper = search_service.Keeper(onebox)  # the search index kept current off the request path
                keeper.start()
            yield
        finally:
            if keeper is not None:
                await keeper.stop()
            if app.state.monitor is not None:
                await app.state.monitor.stop()
            if supervise:
                await supervisor.stop()
            await app.state.http.aclose()
            onebox.close()

    app = FastAPI(
        title="onebox gateway",
        version=__version__,
        description="OpenAI-compatible inference (`/v1`) and the onebox control plane (`/api/v1`).",
        lifespan=lifespan,
        dependencies=[Depends(authorize)],
        openapi_tags=[
            {"name": "openai", "description": "OpenAI-compatible API, routed by `model`."},
            {"name": "deployments", "description": "Deploy, scale and undeploy models; manage adapters."},
            {
                "name": "knowledge bases",
                "description": "Index documents; search them; answer questions with citations. "
                "`/v1/chat/completions` takes an optional `knowledge_base` to ground its answer.",
            },
            {"name": "monitoring", "description": "Time series of the four levels; nodes and their health."},
            {"name": "system", "description": "Health and Prometheus metrics."},
        ],
    )
    app.state.onebox = onebox
    app.state.supervisor = supervisor
    app.state.metrics = metrics
    app.state.monitor = None
    app.state.quota_gate = QuotaGate()
    app.state.quota_limits = LimitsCache(onebox.db)
    install_error_handlers(app, openai_shape_prefix="/v1")
    install_auth(app)  # innermost: body limit and security headers wrap its 401s too
    install_middleware(app, settings)
    app.include_router(deployments_router)
    app.include_router(kbs_routes.router)
    app.include_router(identity_routes.router)
    app.include_router(metrics_routes.router)
    app.include_router(topology_router)
    app.include_router(search_router)
    app.include_router(events_routes.router)

    @app.post("/v1/chat/completions", tags=["openai"], summary="Chat completion (streaming or not)")
    async def chat_completions(request: Request) -> Response:
        return await _proxy(request, "/v1/chat/completions")

    @app.post("/v1/completions", tags=["openai"], summary="Text completion (streaming or not)")
    async def completions(request: Request) -> Response:
        return await _proxy(request, "/v1/completions")

    @app.post("/v1/embeddings", tags=["openai"], summary="Embeddings")
    async def embeddings(request: Request) -> Response:
        return await _proxy(request, "/v1/embeddings")

    @app.get("/v1/models", tags=["openai"], response_model=ModelList, summary="Models served")
    async def list_models(request: Request) -> dict[str, Any]:
        return {"object": "list", "data": _model_cards(supervisor, principal_of(request).project_id)}

    @app.get("/v1/models/{model:path}", tags=["openai"], response_model=ModelCard, summary="One model")
    async def get_model(request: Request, model: str) -> dict[str, Any]:
        project_id = principal_of(request).project_id
        route = supervisor.route(model, project_id)
        return next(c for c in _model_cards(supervisor, project_id) if c["id"] == route.model_id)

    @app.get("/health", tags=["system"], response_model=Health, summary="Gateway liveness")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "deployments": {s.name: s.status for s in supervisor.specs.values()},
        }

    @app.get("/metrics", tags=["system"], summary="Prometheus metrics", response_class=Response)
    async def prometheus(request: Request) -> Response:
        metrics.set_workers(supervisor, await supervisor.worker_stats())
        body = metrics.render()
        task: MonitorTask | None = app.state.monitor
        if task is not None:
            # a caller who is not an administrator sees only its own project's task series
            principal = getattr(request.state, "principal", None)
            projects = None if principal is None or principal.system_admin else [principal.project_id]
            try:
                snapshot = await task.snapshot()
            except Exception:  # the store is unreachable: still serve the gateway's own metrics
                log.exception("no monitoring snapshot for /metrics")
            else:
                body += exposition.render(snapshot, task.monitor.node, projects)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _model_cards(supervisor: Supervisor, project_id: str) -> list[dict[str, Any]]:
    cards = []
    for route in sorted(supervisor.routes_of(project_id), key=lambda r: r.model_id):
        spec = supervisor.specs.get(route.deployment_id)
        cards.append(
            {
                "id": route.model_id,
                "object": "model",
                "created": int(time.time()),
                "owned_by": "onebox",
                "deployment": route.deployment,
                "status": spec.status if spec else "starting",
            }
        )
    return cards


def _parse_body(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise InvalidInputError(
            "the request body is not valid JSON", problems=[Problem("body", f"not JSON: {exc}")]
        ) from None
    if not isinstance(payload, dict):
        raise InvalidInputError(
            "the request body must be a JSON object", problems=[Problem("body", "not an object")]
        )
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidInputError(
            "the request names no model",
            problems=[Problem("model", "is required", "set it to one of the ids of GET /v1/models")],
        )
    return payload


def _unavailable(exc: UnavailableError) -> JSONResponse:
    resp = error_response(exc, openai=True)
    resp.headers["Retry-After"] = str(exc.details.get("retry_after", RETRY_AFTER_S))
    return resp


def _error(exc: OneboxError) -> JSONResponse:
    return _unavailable(exc) if isinstance(exc, UnavailableError) else error_response(exc, openai=True)


async def _proxy(request: Request, path: str) -> Response:
    app = request.app
    supervisor: Supervisor = app.state.supervisor
    metrics: GatewayMetrics = app.state.metrics
    endpoint = path.removeprefix("/v1/").replace("/", ".")  # chat.completions, completions, embeddings
    started = time.perf_counter()
    model = "-"
    grounding: kbs_routes.Grounding | None = None
    principal = principal_of(request)
    project_id = principal.project_id
    ticket: Ticket | None = None
    try:
        payload = _parse_body(await request.body())
        model = payload["model"]
        key_limits, project_limits = await asyncio.to_thread(app.state.quota_limits.get, principal)
        ticket = app.state.quota_gate.admit(principal, key_limits, project_limits)
        if path == "/v1/chat/completions" and "knowledge_base" in payload:
            model = supervisor.route(model, project_id).model_id  # unknown models fail before retrieval
            if payload.get("knowledge_base") is not None:
                grounding = await kbs_routes.ground(request, payload)
            payload.pop("knowledge_base", None)
            if grounding is not None and grounding.not_found:
                resp = kbs_routes.not_found_response(grounding, model, bool(payload.get("stream")))
                metrics.requests.labels(model, endpoint, str(resp.status_code)).inc()
                return resp
        route, replica = supervisor.pick(model, project_id)
        model = route.model_id
        payload["model"] = route.model_id  # the worker matches ids exactly; clients may vary case
        body = json.dumps(payload, ensure_ascii=False).encode()
        upstream = await _send(request, supervisor, route, replica, path, body)
    except OneboxError as exc:
        resp = _error(exc)
        metrics.requests.labels(model, endpoint, str(resp.status_code)).inc()
        return resp
    except ClientGone:
        metrics.requests.labels(model, endpoint, "499").inc()
        return Response(status_code=499)
    resp_replica, resp = upstream
    headers = {k: v for k, v in resp.headers.items() if k.lower() in PASS_HEADERS}
    headers.update(ticket.headers if ticket is not None else {})
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        return StreamingResponse(
            _relay(
                request, resp, resp_replica, supervisor, metrics, model, endpoint, started, grounding, ticket
            ),
            status_code=resp.status_code,
            headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    gone = False
    try:
        content = await _read_or_gone(request, resp.aread())
    except ClientGone:
        gone = True
        metrics.requests.labels(model, endpoint, "499").inc()
        return Response(status_code=499)
    except httpx.HTTPError:
        supervisor.mark_unreachable(resp_replica)
        err = UnavailableError(
            f"the worker serving {model!r} stopped while answering; retry", retry_after=RETRY_AFTER_S
        )
        resp_err = _unavailable(err)
        metrics.requests.labels(model, endpoint, str(resp_err.status_code)).inc()
        return resp_err
    finally:
        resp_replica.outstanding -= 1
        await _close_upstream(resp, client_gone=gone)
    metrics.requests.labels(model, endpoint, str(resp.status_code)).inc()
    metrics.latency.labels(model, endpoint).observe(time.perf_counter() - started)
    if resp.status_code == 200:
        usage = None
        with contextlib.suppress(ValueError, AttributeError):
            usage = json.loads(content).get("usage")
        if endpoint != "embeddings":
            metrics.observe_usage(model, usage)
        if ticket is not None:
            request.app.state.quota_gate.record_tokens(ticket, tokens_from_usage(usage))
    if grounding is not None and resp.status_code == 200:
        content = kbs_routes.decorate_body(grounding, content)
    return Response(content, status_code=resp.status_code, headers=headers)


async def _send(
    request: Request, supervisor: Supervisor, route: Route, replica: Replica, path: str, body: bytes
) -> tuple[Replica, httpx.Response]:
    """Open the upstream request (headers received, body not read); one retry on another replica
    when the first cannot be connected to (it just died)."""
    client: httpx.AsyncClient = request.app.state.http
    headers = {"content-type": "application/json", "accept": request.headers.get("accept", "*/*")}
    for attempt in range(2):
        replica.outstanding += 1
        req = client.build_request("POST", replica.url + path, content=body, headers=headers)
        try:
            return replica, await _read_or_gone(request, client.send(req, stream=True))
        except httpx.ConnectError:
            replica.outstanding -= 1
            supervisor.mark_unreachable(replica)
            if attempt == 0:
                route, replica = supervisor.pick(route.model_id, route.project_id)  # or UnavailableError
        except httpx.HTTPError as exc:
            replica.outstanding -= 1
            supervisor.mark_unreachable(replica)
            raise UnavailableError(
                f"the worker serving {route.model_id!r} did not answer ({type(exc).__name__}); retry",
                retry_after=RETRY_AFTER_S,
            ) from exc
        except BaseException:
            replica.outstanding -= 1
            raise
    raise UnavailableError(
        f"no worker serving {route.model_id!r} can be reached; retry", retry_after=RETRY_AFTER_S
    )


async def _close_upstream(resp: httpx.Response, *, client_gone: bool) -> None:
    """Close the worker's response even while being cancelled. When the client went away, close
    the socket itself: after a cancelled read httpcore may keep the half-read connection open, and
    the worker would go on generating into its buffers instead of freeing the slot."""
    with anyio.CancelScope(shield=True):
        if client_gone:
            stream = resp.extensions.get("network_stream")
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.aclose()
        await resp.aclose()


async def _read_or_gone(request: Request, awaitable: Any) -> Any:
    """Await ``awaitable`` unless the client disconnects first (then cancel it: closing the
    upstream connection makes the worker abort the request)."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _relay(
    request: Request,
    resp: httpx.Response,
    replica: Replica,
    supervisor: Supervisor,
    metrics: GatewayMetrics,
    model: str,
    endpoint: str,
    started: float,
    grounding: kbs_routes.Grounding | None = None,
    ticket: Ticket | None = None,
) -> AsyncIterator[bytes]:
    """Pass SSE bytes through as they come; a worker lost mid-stream ends it with an error event.
    A grounded stream is passed event by event and ends with a chunk carrying the citations."""
    meter = StreamMeter(metrics, model, started)
    status = str(resp.status_code)
    chunks = resp.aiter_raw()
    citing = kbs_routes.CitingRelay(grounding, model) if grounding is not None else None
    try:
        while True:
            # Between chunks the client may hang up: notice it while waiting, not only at the
            # next send, so the worker's slot is freed at once (a stream may pause for long).
            try:
                chunk = await _read_or_gone(request, chunks.__anext__())
            except StopAsyncIteration:
                if citing is not None and resp.status_code == 200:
                    yield citing.finish()
                break
            meter.feed(chunk)
            if citing is None:
                yield chunk
            elif out := citing.feed(chunk):
                yield out
    except ClientGone:
        status = "499"
    except httpx.HTTPError:
        status = "503"
        supervisor.mark_unreachable(replica)
        err = UnavailableError(f"the worker serving {model!r} stopped while streaming; retry")
        body = openai_error_body(err, 503)
        yield f"data: {json.dumps(body)}\n\n".encode() + b"data: [DONE]\n\n"
    except BaseException:  # the client went away: closing the upstream aborts the generation
        status = "499"
        raise
    finally:
        replica.outstanding -= 1
        await _close_upstream(resp, client_gone=status == "499")
        metrics.requests.labels(model, endpoint, status).inc()
        metrics.latency.labels(model, endpoint).observe(time.perf_counter() - started)
        meter.finish()
        if ticket is not None:  # streams without usage are charged their content chunks
            tokens = tokens_from_usage(meter.usage, fallback=meter.token_chunks)
            request.app.state.quota_gate.record_tokens(ticket, tokens)
