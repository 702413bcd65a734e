"""The one error table: status per error class, OpenAI shape under /v1, onebox shape elsewhere."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from onebox import errors as e
from onebox.api.errors import error_response, install_error_handlers, status_for


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (e.InvalidInputError("x"), 400),
        (e.EncodingError("x"), 400),
        (e.ConfigError("x"), 400),
        (e.NotFoundError("x"), 404),
        (e.AlreadyExistsError("x"), 409),
        (e.JobStateError("x"), 409),
        (e.OverloadedError("x"), 429),
        (e.UnavailableError("x"), 503),
        (e.DependencyMissingError("x"), 501),
        (e.StoreError("x"), 500),
        (e.ModelLoadError("x"), 500),
        (RuntimeError("boom"), 500),
    ],
)
def test_status_table(exc: BaseException, status: int) -> None:
    assert status_for(exc) == status


def test_openai_shape_names_the_first_problem_and_sets_retry_after() -> None:
    err = e.InvalidInputError(
        "invalid sampling parameters",
        problems=[e.Problem("temperature", "must be between 0 and 2"), e.Problem("top_p", "bad")],
    )
    r = error_response(err, openai=True)
    body = r.body.decode()
    assert (
        r.status_code == 400 and '"param":"temperature"' in body and '"type":"invalid_request_error"' in body
    )
    r = error_response(e.OverloadedError("full", retry_after=2.2), openai=True)
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    r = error_response(RuntimeError("secret detail"), openai=True)
    assert r.status_code == 500 and "secret detail" not in r.body.decode()


class Body(BaseModel):
    temperature: float = Field(default=1.0, ge=0, le=2)


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/thing")
    def v1_thing(body: Body) -> dict[str, float]:
        return {"t": body.temperature}

    @app.post("/api/v1/thing")
    def api_thing(body: Body) -> dict[str, float]:
        return {"t": body.temperature}

    @app.get("/v1/missing")
    def v1_missing() -> None:
        raise e.NotFoundError("no such model", problems=[e.Problem("model", "unknown")])

    @app.get("/api/v1/missing")
    def api_missing() -> None:
        raise e.NotFoundError("no such thing", problems=[e.Problem("name", "unknown")])

    @app.get("/v1/crash")
    def crash() -> None:
        raise RuntimeError("boom")

    return app


def test_handlers_pick_the_shape_by_path() -> None:
    client = TestClient(_app(), raise_server_exceptions=False)
    r = client.post("/v1/thing", json={"temperature": 5})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "temperature" and err["type"] == "invalid_request_error"
    assert "temperature" in err["message"]
    r = client.post("/api/v1/thing", json={"temperature": "hot"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_input"
    assert r.json()["error"]["problems"][0]["field"] == "temperature"
    r = client.post("/v1/thing", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    assert client.get("/v1/missing").json()["error"]["param"] == "model"
    assert client.get("/api/v1/missing").json()["error"]["problems"][0]["field"] == "name"
    r = client.get("/v1/nowhere")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = client.get("/v1/crash")
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
