"""Quota administration: the service (who may set, validation, audit, usage) and ``onebox quotas``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from onebox.cli.main import main
from onebox.cli.state import get_app, settings
from onebox.config import Settings
from onebox.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from onebox.security.principal import Principal
from onebox.security.quotas import Limits, LimitsCache, QuotaGate
from onebox.services import quotas
from onebox.services.context import App, open_app
from onebox.store.tables import ApiKey, AuditRecord, Project, User, new_id


def _key(app: App) -> tuple[str, str]:
    with app.db.session() as s:
        user = User(id=new_id("usr"), username="bob", password_hash="x")
        s.add(user)
        s.flush()
        prefix = "0123456789ab"
        key = ApiKey(
            id=new_id("key"), prefix=prefix, secret_hash="0" * 64, user_id=user.id,
            project_id=app.actor().project_id, name="ci",
        )  # fmt: skip
        s.add(key)
        return key.id, f"obx_{prefix}"


def test_set_project_and_key_quota_audited_and_cache_invalidated(sqlite_app: App) -> None:
    app = sqlite_app
    pid = app.actor().project_id
    kid, prefix = _key(app)
    cache = LimitsCache(app.db, ttl_s=3600)
    assert cache.project_limits(pid) == Limits()
    out = quotas.set_project_quota(app, "default", rpm=60, storage=10 * 1024**3, cache=cache)
    assert out["limits"] == {"rpm": 60, "tpm": None, "jobs": None, "storage": 10 * 1024**3}
    assert cache.project_limits(pid) == Limits(rpm=60)  # invalidated, not waiting for the TTL
    quotas.set_project_quota(app, "default", rpm=None, tpm=1000)  # None: unlimited again
    with app.db.session() as s:
        p = s.get(Project, pid)
        assert p is not None and (p.rpm_limit, p.tpm_limit, p.storage_limit_bytes) == (
            None,
            1000,
            10 * 1024**3,
        )
    out = quotas.set_key_quota(app, prefix, tpm=500)
    assert out["key"] == kid and out["limits"] == {"rpm": None, "tpm": 500}
    with app.db.session() as s:
        actions = [(r.action, r.resource_type) for r in s.query(AuditRecord).order_by(AuditRecord.seq)]
    assert actions.count(("quota.set", "project")) == 2 and ("quota.set", "api_key") in actions


def test_validation_and_permissions(sqlite_app: App) -> None:
    app = sqlite_app
    with pytest.raises(InvalidInputError) as ei:
        quotas.set_project_quota(app, "default", rpm=-1, jobs="3")  # type: ignore[arg-type]
    assert {p.field for p in ei.value.problems} == {"rpm", "jobs"}
    with pytest.raises(InvalidInputError, match="nothing to change"):
        quotas.set_project_quota(app, "default")
    with pytest.raises(NotFoundError):
        quotas.set_key_quota(app, "key_nope", rpm=1)
    pid = app.actor().project_id
    dev = app.acting_as(Principal("u1", "dev", pid, "default", "admin"))  # project admin, not system admin
    with pytest.raises(PermissionDeniedError, match="only system administrators"):
        quotas.set_project_quota(dev, "default", rpm=10**6)
    assert quotas.show(dev)["limits"]["rpm"] is None  # but may read them


def test_show_with_usage_and_gateway_rates(sqlite_app: App) -> None:
    app = sqlite_app
    kid, _ = _key(app)
    quotas.set_project_quota(app, "default", rpm=10, jobs=3)
    quotas.set_key_quota(app, kid, rpm=5)
    gate = QuotaGate()
    p = Principal("u", "bob", app.actor().project_id, "default", "developer", key_id=kid)
    for _ in range(2):
        gate.admit(p, Limits(rpm=5), Limits(rpm=10))
    out = quotas.show(app, gate=gate)
    assert out["usage"]["jobs"] == 0 and out["usage"]["storage"] == 0
    assert out["usage"]["rpm"] == pytest.approx(2, abs=0.01)
    assert out["keys"][0]["limits"] == {"rpm": 5, "tpm": None}
    assert out["keys"][0]["usage"]["rpm"] == pytest.approx(2, abs=0.01)


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    open_app(Settings(home=home)).close()
    monkeypatch.setenv("ONEBOX_HOME", str(home))
    settings.cache_clear()
    get_app.cache_clear()
    yield home
    settings.cache_clear()
    get_app.cache_clear()


def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["onebox", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    captured = capsys.readouterr()
    return int(exit_.value.code or 0), captured.out + captured.err


def test_cli_set_and_show(cli_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code, out = run(capsys, monkeypatch, "quotas", "set", "--rpm", "600", "--storage", "10GiB", "--jobs", "2")
    assert code == 0, out
    assert "rpm 600" in out and "storage 10.0 GiB" in out and "jobs 2" in out
    code, out = run(capsys, monkeypatch, "quotas", "show", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["limits"] == {"rpm": 600, "tpm": None, "jobs": 2, "storage": 10 * 1024**3}
    code, out = run(capsys, monkeypatch, "quotas", "set", "--rpm", "none", "--json")
    assert code == 0 and json.loads(out)["limits"]["rpm"] is None
    code, out = run(capsys, monkeypatch, "quotas", "show")
    assert code == 0 and "concurrent jobs" in out and "unlimited" in out
    code, out = run(capsys, monkeypatch, "quotas", "set", "--storage", "lots")
    assert code == 4 and "--storage" in out and "10GiB" in out
    code, out = run(capsys, monkeypatch, "quotas", "set", "--key", "key_x", "--jobs", "1")
    assert code == 4 and "a key has only --rpm and --tpm" in out
