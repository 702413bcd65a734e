"""Fixtures for job tests: executors with small capacities and short timeouts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from onebox.services.context import App
from tests.jobs.helpers import MakeExecutor, executor_factory


@pytest.fixture
def make_executor(sqlite_app: App) -> Iterator[MakeExecutor]:
    yield from executor_factory(sqlite_app)
