from __future__ import annotations

from pathlib import Path

import pytest

from onebox.config import load_settings
from onebox.errors import ConfigError


def test_defaults_live_in_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ONEBOX_HOME", str(tmp_path))
    monkeypatch.delenv("ONEBOX_DATABASE_URL", raising=False)
    monkeypatch.delenv("ONEBOX_ARTIFACTS", raising=False)
    s = load_settings()
    assert s.db_url == f"sqlite:///{tmp_path / 'onebox.db'}"
    assert s.artifacts_url == str(tmp_path / "artifacts")


def test_environment_switches_to_cluster_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEBOX_DATABASE_URL", "postgresql+psycopg://u:p@db/onebox")
    monkeypatch.setenv("ONEBOX_ARTIFACTS", "s3://bucket/onebox")
    s = load_settings()
    assert s.db_url.startswith("postgresql") and s.artifacts_url == "s3://bucket/onebox"


def test_all_bad_fields_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEBOX_MAX_IMPORT_BYTES", "-5")
    monkeypatch.setenv("ONEBOX_GC_GRACE_SECONDS", "soon")
    with pytest.raises(ConfigError) as info:
        load_settings()
    fields = {p.field for p in info.value.problems}
    assert fields == {"ONEBOX_MAX_IMPORT_BYTES", "ONEBOX_GC_GRACE_SECONDS"}
