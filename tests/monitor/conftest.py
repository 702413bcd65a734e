"""Fixtures the monitoring API tests share: each module defines its own ``settings`` (a home of
its own), and gets an open app and an administrator's key for it from here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from onebox.config import Settings
from onebox.services.context import App, open_app
from tests.auth_helpers import admin_key, bearer


@pytest.fixture(scope="module")
def box(settings: Settings) -> Iterator[App]:
    app = open_app(settings)
    yield app
    app.close()


@pytest.fixture(scope="module")
def admin(settings: Settings, box: App) -> dict[str, str]:
    return bearer(admin_key(settings))
