"""Deployments service: desired state in the store (on SQLite and PostgreSQL), adapters that must
share the base, model ids unique per project, adapters following their newest version."""

from __future__ import annotations

from pathlib import Path

import pytest

from onebox.errors import AlreadyExistsError, ConfigError, InUseError, InvalidInputError, NotFoundError
from onebox.services import deployments, events, models
from onebox.services.context import App


@pytest.fixture
def reg(app: App, tiny_model_dir: Path, tiny_lora_dirs: list[Path]) -> App:
    base = models.register(app, "tiny", str(tiny_model_dir)).version
    models.register(app, "tiny-lora", str(tiny_lora_dirs[0]), base_version_id=base.id)
    models.register(app, "emb", str(tiny_model_dir), kind="embedding")
    return app


def test_deploy_base_list_show_scale_delete(reg: App) -> None:
    d = deployments.deploy(reg, "tiny", replicas=2, engine={"max_model_len": 64, "max_num_seqs": 4})
    assert d["name"] == "tiny" and d["model"] == "tiny:1" and d["kind"] == "text"
    assert d["status"] == "starting" and d["replicas"] == 2
    assert d["engine"] == {"max_model_len": 64, "max_num_seqs": 4}
    assert [x["name"] for x in deployments.list_deployments(reg)] == ["tiny"]
    assert deployments.scale(reg, "TINY", 3)["replicas"] == 3
    shown = deployments.show(reg, "tiny")
    assert [e["kind"] for e in shown["events"]] == ["deployment.created", "deployment.scaled"]
    with pytest.raises(InUseError, match="deployment 'tiny'"):
        models.delete(reg, "tiny:1")
    deployments.delete(reg, "tiny")
    assert deployments.list_deployments(reg) == []
    with pytest.raises(NotFoundError, match="does not exist"):
        deployments.show(reg, "tiny")
    # the name is free again
    assert deployments.deploy(reg, "tiny")["name"] == "tiny"


def test_deploying_an_adapter_deploys_its_base(reg: App) -> None:
    d = deployments.deploy(reg, "tiny-lora")
    assert d["name"] == "tiny-lora-base" and d["model"] == "tiny:1"
    expected = {"name": "tiny-lora", "ref": "tiny-lora", "version": "tiny-lora:1", "error": None}
    assert d["adapters"] == [expected]
    assert d["model_ids"] == ["tiny-lora-base", "tiny-lora"]
    spec = deployments.desired_state(reg)[0]
    assert spec.adapters["tiny-lora"].version_ref == "tiny-lora:1"


def test_adapter_on_another_base_is_refused(
    reg: App, tiny_model_dir: Path, tiny_lora_dirs: list[Path]
) -> None:
    with pytest.raises(InvalidInputError) as err:
        deployments.deploy(reg, "emb", adapters=["tiny-lora"])
    assert err.value.problems[0].field == "adapter"
    # a second base: same files under another name is another version id
    models.register(reg, "tiny2", str(tiny_model_dir))
    with pytest.raises(InvalidInputError, match="does not fit") as err:
        deployments.deploy(reg, "tiny2", adapters=["tiny-lora"])
    assert "trained on tiny:1" in str(err.value)
    with pytest.raises(InvalidInputError, match="not a LoRA"):
        deployments.deploy(reg, "tiny", adapters=["tiny2"])
    assert deployments.list_deployments(reg) == []


def test_model_ids_are_unique_per_project(reg: App) -> None:
    deployments.deploy(reg, "tiny", adapters=["tiny-lora"])
    with pytest.raises(AlreadyExistsError, match="already served"):
        deployments.deploy(reg, "tiny")
    with pytest.raises(AlreadyExistsError, match="already served") as err:
        deployments.deploy(reg, "tiny", name="Tiny-LoRA")
    assert err.value.problems[0].field == "name"
    with pytest.raises(AlreadyExistsError):
        deployments.deploy(reg, "tiny", name="second", adapters=["tiny-lora"])
    with pytest.raises(InvalidInputError):
        deployments.deploy(reg, "tiny", name="bad/name")


def test_bad_options_name_the_field(reg: App) -> None:
    with pytest.raises(InvalidInputError) as err:
        deployments.deploy(reg, "tiny", replicas=-1)
    assert err.value.problems[0].field == "replicas"
    with pytest.raises(ConfigError) as cerr:
        deployments.deploy(reg, "tiny", engine={"max_num_seqs": 0, "dtype": "int3"})
    assert {p.field for p in cerr.value.problems} == {"max_num_seqs", "dtype"}
    with pytest.raises(InvalidInputError) as err:
        deployments.deploy(reg, "tiny", engine={"adapters": {}})
    assert err.value.problems[0].field == "engine.adapters"
    with pytest.raises(NotFoundError):
        deployments.deploy(reg, "nope")
    with pytest.raises(InvalidInputError) as err:
        deployments.deploy(reg, "emb", engine={"max_model_len": 64})
    assert err.value.problems[0].field == "engine.max_model_len"


def test_embedding_deployment(reg: App) -> None:
    d = deployments.deploy(reg, "emb")
    assert d["kind"] == "embedding" and d["model_ids"] == ["emb"]
    with pytest.raises(InvalidInputError):
        deployments.add_adapter(reg, "emb", "tiny-lora")


def test_adapters_follow_new_versions_unless_pinned(reg: App, tiny_lora_dirs: list[Path]) -> None:
    deployments.deploy(reg, "tiny")
    d = deployments.add_adapter(reg, "tiny", "tiny-lora")
    assert d["adapters"][0]["version"] == "tiny-lora:1"
    base_id = d["model_version_id"]
    models.register(reg, "tiny-lora", str(tiny_lora_dirs[1]), new_version=True, base_version_id=base_id)
    assert deployments.desired_state(reg)[0].adapters["tiny-lora"].version_ref == "tiny-lora:2"
    pinned = deployments.add_adapter(reg, "tiny", "tiny-lora:1")  # replaces, pinned
    assert pinned["adapters"] == [
        {"name": "tiny-lora", "ref": "tiny-lora:1", "version": "tiny-lora:1", "error": None}
    ]
    # deleting the newest version falls back to the one before
    deployments.add_adapter(reg, "tiny", "tiny-lora")
    models.delete(reg, "tiny-lora:2")
    assert deployments.desired_state(reg)[0].adapters["tiny-lora"].version_ref == "tiny-lora:1"
    d = deployments.remove_adapter(reg, "tiny", "TINY-LORA")
    assert d["adapters"] == [] and d["model_ids"] == ["tiny"]
    with pytest.raises(NotFoundError, match="does not serve"):
        deployments.remove_adapter(reg, "tiny", "tiny-lora")


def test_status_and_events_from_the_supervisor(reg: App) -> None:
    d = deployments.deploy(reg, "tiny")
    deployments.set_status(reg, d["id"], "ready")
    deployments.set_status(reg, d["id"], "ready")  # no second event
    deployments.record_event(reg, d["id"], "deployment.replica_crashed", "replica 0 exited")
    shown = deployments.show(reg, "tiny")
    assert shown["status"] == "ready" and shown["restarts"] == 1
    with reg.db.session() as s:
        kinds = [e.kind for e in events.for_resource(s, "deployment", d["id"])]
    assert kinds == ["deployment.created", "deployment.ready", "deployment.replica_crashed"]
    deployments.set_status(reg, d["id"], "failed", "boom")
    assert deployments.scale(reg, "tiny", 1)["status"] == "starting"  # scaling retries a failure
