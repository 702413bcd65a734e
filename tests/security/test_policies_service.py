"""Use policies enforced on a real store (SQLite and PostgreSQL) where keys are released: deploy
(base and adapters), load (every checkout), train (model and dataset), download; every decision on
a policed version audited, denials with the failed condition, the chain still verifying."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from onebox.errors import InvalidInputError, PermissionDeniedError, PolicyDeniedError
from onebox.security import fingerprint
from onebox.security.principal import Principal
from onebox.services import datasets, deployments, jobs, models, policies, training
from onebox.services.context import App
from onebox.store.tables import AuditRecord, Job

HOST_A = "a" * 32
HOST_B = "b" * 32
WED_10 = datetime(2025, 6, 4, 10, 0, tzinfo=UTC)


@pytest.fixture
def reg(app: App, tiny_model_dir: Path, tiny_lora_dirs: list[Path]) -> App:
    base = models.register(app, "tiny", str(tiny_model_dir)).version
    models.register(app, "tiny-lora", str(tiny_lora_dirs[0]), base_version_id=base.id)
    return app


def _records(app: App, action: str) -> list[AuditRecord]:
    with app.db.session() as s:
        rows = list(
            s.scalars(select(AuditRecord).where(AuditRecord.action == action).order_by(AuditRecord.seq))
        )
        for r in rows:
            s.expunge(r)
        return rows


def _as(app: App, username: str, role: str) -> App:
    me = app.actor()
    return app.acting_as(Principal(f"usr_{username}", username, me.project_id, me.project, role))


def test_set_show_check_clear(reg: App) -> None:
    out = policies.set_policy(
        reg,
        "model",
        "tiny:1",
        {"allowed_roles": ["operator"], "windows": ["mon-fri 09:00-18:00 Asia/Shanghai"], "hosts": [HOST_A]},
    )
    assert out["resource"] == "tiny:1" and out["policy"]["rules"]["hosts"] == [HOST_A]
    assert policies.show_policy(reg, "model", "tiny:1")["policy"]["rules"]["allowed_roles"] == ["operator"]
    # dry run, not audited: the local operator is admin, so the role fails first
    d = policies.check(reg, "model", "tiny:1", "model.deploy", now=WED_10, fingerprint=HOST_A)
    assert not d["allowed"] and d["condition"] == "role"
    op = _as(reg, "olga", "operator")
    shanghai_10 = WED_10 - timedelta(hours=8)

    def condition(now: datetime, host: str) -> str | None:
        return policies.check(op, "model", "tiny:1", "model.deploy", now=now, fingerprint=host)["condition"]

    assert condition(WED_10, HOST_A) == "window"  # 18:00 in Shanghai: the window has closed
    assert condition(shanghai_10, HOST_B) == "host"
    assert condition(shanghai_10, HOST_A) is None
    assert _records(reg, "policy.denied") == []
    assert len(_records(reg, "policy.set")) == 1
    cleared = policies.clear_policy(reg, "model", "tiny:1")
    assert cleared["cleared"] and policies.show_policy(reg, "model", "tiny:1")["policy"] is None
    assert reg.audit_log.verify().ok


def test_set_refuses_bad_rules_and_non_operators(reg: App) -> None:
    with pytest.raises(InvalidInputError) as err:
        policies.set_policy(
            reg, "model", "tiny:1", {"valid_from": "2025-07-01", "valid_until": "x", "hosts": ["h"]}
        )
    assert {p.field for p in err.value.problems} == {"valid_until", "hosts"}
    with pytest.raises(InvalidInputError, match="restricts nothing"):
        policies.set_policy(reg, "model", "tiny:1", {})
    with pytest.raises(InvalidInputError):
        policies.set_policy(reg, "blob", "tiny:1", {"hosts": [HOST_A]})
    with pytest.raises(PermissionDeniedError):
        policies.set_policy(_as(reg, "dev", "developer"), "model", "tiny:1", {"hosts": [HOST_A]})
    assert policies.show_policy(reg, "model", "tiny:1")["policy"] is None


def test_deploy_enforces_base_and_adapter_policies(reg: App) -> None:
    past = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    policies.set_policy(reg, "model", "tiny-lora:1", {"valid_until": past})
    with pytest.raises(PolicyDeniedError) as err:
        deployments.deploy(reg, "tiny", adapters=["tiny-lora"])
    assert err.value.details["condition"] == "valid_until" and "tiny-lora:1" in err.value.message
    assert "renewed" in err.value.message  # says how to fix it
    assert deployments.list_deployments(reg) == []
    policies.clear_policy(reg, "model", "tiny-lora:1")
    policies.set_policy(reg, "model", "tiny:1", {"allowed_users": ["alice"]})
    with pytest.raises(PolicyDeniedError) as err:
        deployments.deploy(_as(reg, "bob", "operator"), "tiny")
    assert err.value.details["condition"] == "user"
    dep = deployments.deploy(_as(reg, "alice", "operator"), "tiny", adapters=["tiny-lora"])
    assert dep["model"] == "tiny:1"
    denied = _records(reg, "policy.denied")
    assert [r.details["condition"] for r in denied] == ["valid_until", "user"]
    assert denied[1].actor == "bob" and denied[1].outcome == "denied"
    assert denied[1].details["attempted"] == "model.deploy"
    ok = [r for r in _records(reg, "model.deploy") if r.details.get("policy") == "applied"]
    assert [r.actor for r in ok] == ["alice"]  # every deploy is audited; this one passed a policy
    assert reg.audit_log.verify().ok


def test_add_adapter_is_a_deploy(reg: App) -> None:
    deployments.deploy(reg, "tiny")
    policies.set_policy(reg, "model", "tiny-lora:1", {"hosts": [HOST_B]})
    with fingerprint.pinned(HOST_A), pytest.raises(PolicyDeniedError, match="host"):
        deployments.add_adapter(reg, "tiny", "tiny-lora")
    with fingerprint.pinned(HOST_B):
        assert deployments.add_adapter(reg, "tiny", "tiny-lora")["adapters"][0]["name"] == "tiny-lora"


def test_load_checks_when_and_where_not_who(reg: App) -> None:
    policies.set_policy(reg, "model", "tiny:1", {"allowed_users": ["alice"], "hosts": [HOST_A]})
    # a worker loading for an authorised deployment: the local process is not alice, and may load
    with fingerprint.pinned(HOST_A):
        assert (models.checkout(reg, "tiny:1") / "config.json").is_file()
    with fingerprint.pinned(HOST_B), pytest.raises(PolicyDeniedError) as err:
        models.checkout(reg, "tiny:1")
    assert err.value.details["condition"] == "host" and err.value.details["action"] == "model.load"
    assert [r.details["condition"] for r in _records(reg, "policy.denied")] == ["host"]
    assert len(_records(reg, "model.load")) == 1
    # every load is audited, policed or not
    models.checkout(reg, "tiny-lora:1")
    loads = _records(reg, "model.load")
    assert len(loads) == 2 and loads[1].details["policy"] == "none"


def test_download_with_injected_clock_and_host(reg: App, tmp_path: Path) -> None:
    policies.set_policy(
        reg, "model", "tiny:1", {"windows": ["mon-fri 09:00-18:00 Asia/Shanghai"], "hosts": [HOST_A]}
    )
    open_now = datetime(2025, 6, 4, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai, a Wednesday
    with pytest.raises(PolicyDeniedError) as err:
        models.export(reg, "tiny:1", tmp_path / "late", now=open_now + timedelta(hours=9), fingerprint=HOST_A)
    assert err.value.details["condition"] == "window" and not (tmp_path / "late").exists()
    with pytest.raises(PolicyDeniedError, match="host"):
        models.export(reg, "tiny:1", tmp_path / "other", now=open_now, fingerprint=HOST_B)
    out = models.export(reg, "tiny:1", tmp_path / "ok", now=open_now, fingerprint=HOST_A)
    assert (
        out["files"] >= 2 and json.loads((tmp_path / "ok" / "config.json").read_text())["vocab_size"] == 256
    )
    with pytest.raises(InvalidInputError, match="not an empty folder"):
        models.export(reg, "tiny:1", tmp_path / "ok", now=open_now, fingerprint=HOST_A)
    # plaintext downloads are audited even without a policy
    models.export(reg, "tiny-lora:1", tmp_path / "lora")
    assert [r.details["policy"] for r in _records(reg, "model.download")] == ["applied", "none"]
    assert [r.details["condition"] for r in _records(reg, "policy.denied")] == ["window", "host"]
    assert reg.audit_log.verify().ok


ROWS = [{"instruction": f"question {i}?", "output": f"answer {i}."} for i in range(24)]


def test_train_enforces_model_and_dataset(reg: App, tmp_path: Path) -> None:
    from onebox.train.config import SFTConfig

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    datasets.import_file(reg, data, "qa")
    recipe = SFTConfig.from_dict({"method": "lora", "lora_r": 2, "max_seq_len": 64, "max_steps": 2})
    future = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    policies.set_policy(reg, "dataset", "qa:1", {"valid_from": future})
    with pytest.raises(PolicyDeniedError) as err:
        training.submit_train(reg, "tiny:1", "qa:1", recipe)
    assert err.value.details["condition"] == "valid_from" and err.value.details["action"] == "dataset.train"
    with reg.db.session() as s:
        assert s.scalars(select(Job)).all() == []
    policies.clear_policy(reg, "dataset", "qa:1")
    policies.set_policy(reg, "model", "tiny:1", {"allowed_roles": ["operator"]})
    with pytest.raises(PolicyDeniedError, match="role"):
        training.submit_train(_as(reg, "dev", "developer"), "tiny:1", "qa:1", recipe)
    job = training.submit_train(_as(reg, "olga", "operator"), "tiny:1", "qa:1", recipe)
    assert jobs.show(reg, job.id)["status"] == "queued"
    assert [r.action for r in _records(reg, "model.train")] == ["model.train"]
    assert reg.audit_log.verify().ok
