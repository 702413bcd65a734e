"""Real documents made by the writer libraries (the demo set), generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from onebox.rag.demo.make_docs import write_demo_docs


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("demo_docs")
    write_demo_docs(dest)
    return dest
