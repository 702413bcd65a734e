"""Property-based API testing: schemathesis generates requests from the OpenAPI spec and sends
them through the real app, with a valid admin key (no 5xx allowed) and without one (every
protected operation must answer 401 whatever the input). Bounded: a few examples per operation."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402

from onebox.api.app import create_app  # noqa: E402
from onebox.api.auth import PUBLIC  # noqa: E402
from onebox.config import Settings  # noqa: E402
from tests.auth_helpers import admin_key, bearer  # noqa: E402

pytestmark = pytest.mark.slow

HOME = Path(tempfile.mkdtemp(prefix="onebox-schemathesis-")) / "home"
SETTINGS = Settings(home=HOME, max_upload_bytes=1024 * 1024)
KEY = admin_key(SETTINGS)
APP = create_app(SETTINGS, supervise=False)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)

BOUNDED = settings(
    max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)


@schema.parametrize()
@BOUNDED
def test_no_server_errors_with_a_valid_key(case: schemathesis.Case) -> None:
    response = case.call(headers=bearer(KEY))
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
    )


@schema.parametrize()
@BOUNDED
def test_no_auth_bypass_without_credentials(case: schemathesis.Case) -> None:
    if (case.method.upper(), case.path) in PUBLIC or case.path == "/metrics":
        return
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in ("authorization", "cookie")}
    case.headers = headers
    case.cookies = {}
    response = case.call()
    assert response.status_code == 401, (
        f"{case.method} {case.formatted_path} answered {response.status_code} without credentials"
    )
