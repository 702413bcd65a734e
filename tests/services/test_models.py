"""The model registry on SQLite and PostgreSQL: versions, aliases, lineage, in-use protection."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from onebox.errors import (
    AlreadyExistsError,
    InUseError,
    InvalidInputError,
    NotAModelError,
    NotFoundError,
)
from onebox.services import artifacts, models
from onebox.services.context import App
from onebox.store.tables import Deployment, ModelVersion, new_id


def _variant(src: Path, dst: Path, tag: str) -> Path:
    shutil.copytree(src, dst)
    (dst / "generation_config.json").write_text(f'{{"tag": "{tag}"}}')
    return dst


def test_register_list_show(app: App, tiny_model_dir: Path) -> None:
    reg = models.register(app, "tiny", str(tiny_model_dir))
    assert reg.created and reg.version.version == 1
    info = models.show(app, "tiny:1")
    assert info["format"] == "safetensors" and info["kind"] == "chat"
    assert info["architecture"] == "LlamaForCausalLM" and info["parameters"] > 0
    assert info["license"] == "mit" and len(info["checksum"]) == 64
    assert info["size_bytes"] == sum(p.stat().st_size for p in tiny_model_dir.iterdir())
    rows = {r["name"]: r for r in models.list_models(app)}
    assert rows["tiny"]["status"] == "ready"
    assert rows["smollm2-135m-instruct"]["status"] == "not_installed"  # catalog shown before init


def test_versions_are_immutable_and_deduplicated(app: App, tiny_model_dir: Path, tmp_path: Path) -> None:
    models.register(app, "tiny", str(tiny_model_dir))
    with pytest.raises(AlreadyExistsError, match="--new-version"):
        models.register(app, "tiny", str(tiny_model_dir))
    with pytest.raises(AlreadyExistsError):
        models.register(app, "TINY", str(tiny_model_dir))  # names are case-insensitive
    again = models.register(app, "tiny", str(tiny_model_dir), new_version=True)
    assert not again.created and again.version.version == 1
    v2 = models.register(app, "tiny", str(_variant(tiny_model_dir, tmp_path / "v2", "2")), new_version=True)
    assert v2.created and v2.version.version == 2
    assert models.show(app, "tiny")["versions"][0]["checksum"] != v2.version.checksum
    with app.db.session() as s:
        assert models.resolve(s, v2.version.project_id, "tiny").version == 2


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p, "missing config.json and weights"),
        (lambda p: (p / "config.json").write_text("{}") and p, "missing weights"),
        (lambda p: (p / "notes.txt").write_text("hello") and p / "notes.txt", "not a GGUF model"),
        (lambda p: p / "nope", "neither an existing path"),
    ],
)
def test_register_rejects_what_is_not_a_model(sqlite_app: App, tmp_path: Path, make, match: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(NotAModelError, match=match):
        models.register(sqlite_app, "bad", str(make(src)))
    assert [r for r in models.list_models(sqlite_app) if r["name"] == "bad"] == []


def test_bad_names_are_rejected(sqlite_app: App, tiny_model_dir: Path) -> None:
    for name in ["", "a b", "x:1", "x@y", "-x", "a/b"]:
        with pytest.raises(InvalidInputError):
            models.register(sqlite_app, name, str(tiny_model_dir))
    assert models.register(sqlite_app, "中文模型", str(tiny_model_dir)).created


def test_aliases_move_and_roll_back(app: App, tiny_model_dir: Path, tmp_path: Path) -> None:
    models.register(app, "tiny", str(tiny_model_dir))
    models.register(app, "tiny", str(_variant(tiny_model_dir, tmp_path / "v2", "2")), new_version=True)
    assert models.set_alias(app, "tiny", "prod", "1")["previous"] is None
    moved = models.set_alias(app, "tiny", "prod", "v2")
    assert (moved["version"], moved["previous"]) == (2, 1)
    assert models.show(app, "tiny@prod")["version"] == 2
    back = models.rollback_alias(app, "tiny", "prod")
    assert back["version"] == 1 and models.show(app, "tiny@prod")["version"] == 1
    with pytest.raises(NotFoundError, match="no earlier version"):
        models.rollback_alias(app, "tiny", "prod")  # walks back, never forward again
    models.set_alias(app, "tiny", "staging", "tiny@prod")
    assert models.show(app, "tiny@staging")["version"] == 1
    with pytest.raises(NotFoundError, match="no version 7"):
        models.set_alias(app, "tiny", "prod", "7")
    with pytest.raises(NotFoundError, match="no alias @nope"):
        models.show(app, "tiny@nope")
    with pytest.raises(InvalidInputError):
        models.set_alias(app, "tiny", "3", "1")
    models.delete_alias(app, "tiny", "staging")
    with pytest.raises(NotFoundError):
        models.show(app, "tiny@staging")


def test_delete_refuses_in_use_versions(app: App, tiny_model_dir: Path, tmp_path: Path) -> None:
    base = models.register(app, "tiny", str(tiny_model_dir)).version
    models.set_alias(app, "tiny", "prod", "1")
    with pytest.raises(InUseError, match="alias @prod"):
        models.delete(app, "tiny:1")
    models.delete_alias(app, "tiny", "prod")
    with app.db.session() as s:
        s.add(
            Deployment(
                id=new_id("dep"),
                project_id=base.project_id,
                name="chat",
                status="running",
                model_version_id=base.id,
            )
        )
    with pytest.raises(InUseError, match="deployment 'chat'"):
        models.delete(app, "tiny:1")
    with app.db.session() as s:
        s.scalar(select(Deployment)).status = "deleted"
    child = models.register(
        app, "tiny-ft", str(_variant(tiny_model_dir, tmp_path / "ft", "ft")), base_version_id=base.id
    ).version
    with pytest.raises(InUseError, match="base of tiny-ft:1"):
        models.delete(app, "tiny")
    assert models.show(app, "tiny-ft:1")["lineage"]["base_version"] == "tiny:1"
    assert models.delete(app, "tiny-ft") == ["tiny-ft:1"]
    assert models.delete(app, "tiny:1") == ["tiny:1"]
    with app.db.session() as s:
        assert s.get(ModelVersion, child.id).status == "deleted"  # tombstone kept for lineage
    with pytest.raises(NotFoundError):
        models.show(app, "tiny:1")


def test_deleted_versions_are_collected(app: App, tiny_model_dir: Path) -> None:
    models.register(app, "tiny", str(tiny_model_dir))
    before = sum(o.size for o in app.blobs.backend.list())
    models.delete(app, "tiny")
    report = artifacts.gc(app)
    assert report.bytes_freed == before and list(app.blobs.backend.list()) == []
    again = models.register(app, "tiny", str(tiny_model_dir))  # the name can be used again
    assert again.created and again.version.version == 2


def test_checkout_gives_a_loadable_directory(sqlite_app: App, tiny_model_dir: Path) -> None:
    from transformers import AutoConfig

    models.register(sqlite_app, "tiny", str(tiny_model_dir))
    out = models.checkout(sqlite_app, "tiny")
    assert AutoConfig.from_pretrained(out).hidden_size == 32


def test_hub_id_offline_gives_a_clear_error(sqlite_app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from onebox.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="register the directory instead"):
        models.register(sqlite_app, "qwen", "Qwen/Qwen2.5-0.5B-Instruct")
    assert [r for r in models.list_models(sqlite_app) if r["name"] == "qwen"] == []


def test_names_are_case_insensitive_in_any_script(app: App, tiny_model_dir: Path) -> None:
    models.register(app, "Ämodel", str(tiny_model_dir))
    assert models.show(app, "ämodel")["name"] == "Ämodel"
    with pytest.raises(AlreadyExistsError):
        models.register(app, "ÄMODEL", str(tiny_model_dir))


def test_overlong_licence_is_refused_on_every_database(app: App, tiny_model_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="limit is 128"):
        models.register(app, "tiny", str(tiny_model_dir), license="x" * 300)


@pytest.mark.parametrize(
    "files, match",
    [
        ({"config.json": "{}", "model.safetensors": "garbage"}, "not a readable safetensors"),
        ({"config.json": "[1, 2]", "model.safetensors": None}, "JSON object"),
        ({"adapter_config.json": "{}"}, "no adapter_model"),
    ],
)
def test_damaged_model_directories_are_refused(
    sqlite_app: App, tmp_path: Path, tiny_model_dir: Path, files: dict, match: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name, text in files.items():
        if text is None:
            shutil.copy(tiny_model_dir / name, src / name)
        else:
            (src / name).write_text(text)
    with pytest.raises(NotAModelError, match=match):
        models.register(sqlite_app, "bad", str(src))


def test_delete_refuses_versions_used_by_jobs_and_knowledge_bases(app: App, tiny_model_dir: Path) -> None:
    from onebox.store.tables import Job, KnowledgeBase

    mv = models.register(app, "tiny", str(tiny_model_dir)).version
    with app.db.session() as s:
        s.add(
            Job(
                id=new_id("job"),
                project_id=mv.project_id,
                name="ft",
                status="running",
                type="train",
                input_model_version_id=mv.id,
            )
        )
    with pytest.raises(InUseError, match="input of job"):
        models.delete(app, "tiny:1")
    with app.db.session() as s:
        s.scalar(select(Job)).status = "succeeded"
        s.add(
            KnowledgeBase(
                id=new_id("kb"),
                project_id=mv.project_id,
                name="docs",
                status="ready",
                embedding_version_id=mv.id,
            )
        )
    with pytest.raises(InUseError, match="knowledge base 'docs'"):
        models.delete(app, "tiny:1")


def test_whole_model_delete_includes_its_own_derived_versions(
    app: App, tiny_model_dir: Path, tmp_path
) -> None:
    base = models.register(app, "tiny", str(tiny_model_dir)).version
    models.register(
        app,
        "tiny",
        str(_variant(tiny_model_dir, tmp_path / "v2", "2")),
        new_version=True,
        base_version_id=base.id,
    )
    assert models.delete(app, "tiny") == ["tiny:1", "tiny:2"]
