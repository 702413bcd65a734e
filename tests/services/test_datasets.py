"""Dataset versions on SQLite and PostgreSQL: content-hashed, atomic, protected when in use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onebox.data.clean import CleanConfig
from onebox.data.importer import ImportOptions
from onebox.errors import (
    EmptyInputError,
    EncodingError,
    InputTooLargeError,
    InUseError,
    InvalidInputError,
    NotFoundError,
    SchemaError,
    TooManyBadRowsError,
    UnsupportedFormatError,
)
from onebox.services import artifacts, datasets, models
from onebox.services.context import App
from onebox.store import refs
from onebox.store.tables import Dataset, DatasetVersion

ROWS = [
    {
        "instruction": f"问题 {i}：沃萝科技的第 {i} 个事实是什么？",
        "output": f"事实编号 {i} 的答案是 {i * 7}。",
    }
    for i in range(40)
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _count_versions(app: App) -> int:
    with app.db.session() as s:
        return s.query(DatasetVersion).count()


def test_import_versions_and_dedupe(app: App, tmp_path: Path) -> None:
    dv, created = datasets.import_file(app, _jsonl(tmp_path / "a.jsonl", ROWS), "facts")
    assert created and dv.version == 1 and dv.num_train + dv.num_validation == 40
    # the same rows as CSV are the same data: no new version
    csv = tmp_path / "a.csv"
    csv.write_text(
        "instruction,output\n" + "".join(f'"{r["instruction"]}","{r["output"]}"\n' for r in ROWS),
        encoding="utf-8",
    )
    same, created = datasets.import_file(app, csv, "facts")
    assert not created and same.id == dv.id
    v2, created = datasets.import_file(app, _jsonl(tmp_path / "b.jsonl", ROWS[:30]), "facts")
    assert created and v2.version == 2 and v2.parent_version_id == dv.id
    info = datasets.show(app, "facts")
    assert [v["version"] for v in info["versions"]] == [1, 2]
    assert datasets.show(app, "facts:1")["content_hash"] != datasets.show(app, "facts:2")["content_hash"]
    rows = datasets.preview(app, "facts:2", "train", 3)
    assert len(rows) == 3 and rows[0]["messages"][0]["role"] == "user"
    assert datasets.report(app, "facts:1")["schema"] == "alpaca"


def test_failed_import_leaves_previous_version_intact(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets.import_file(app, _jsonl(tmp_path / "a.jsonl", ROWS), "facts")
    before = datasets.preview(app, "facts", "train", 100)

    def crash(*args, **kwargs):
        raise RuntimeError("power cut while recording references")

    monkeypatch.setattr(datasets, "add_refs", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        datasets.import_file(app, _jsonl(tmp_path / "b.jsonl", ROWS[:20]), "facts")
    monkeypatch.setattr(datasets, "add_refs", refs.add_refs)
    assert _count_versions(app) == 1
    assert datasets.show(app, "facts")["versions"][-1]["version"] == 1
    assert datasets.preview(app, "facts", "train", 100) == before
    # the blobs the crashed import wrote are orphans that gc removes; v1 is untouched
    report = artifacts.gc(app)
    assert report.orphans_deleted > 0
    assert datasets.preview(app, "facts", "train", 100) == before
    assert artifacts.verify_all(app)["bad"] == {}


def test_failed_import_into_new_name_creates_nothing(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = app.blobs.put_file
    calls = {"n": 0}

    def flaky(path, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return original(path, *a, **kw)

    monkeypatch.setattr(app.blobs, "put_file", flaky)
    with pytest.raises(OSError, match="disk full"):
        datasets.import_file(app, _jsonl(tmp_path / "a.jsonl", ROWS), "facts")
    with app.db.session() as s:
        assert s.query(Dataset).count() == 0
    with pytest.raises(NotFoundError):
        datasets.show(app, "facts")


@pytest.mark.parametrize(
    "name, content, error, match",
    [
        ("a.docx", b"PK\x03\x04", UnsupportedFormatError, "docx"),
        ("a.jsonl", b"", EmptyInputError, "is empty"),
        ("a.jsonl", "你好".encode("gbk") + b"\n", EncodingError, "line 1"),
        ("a.csv", "instruction,answer\n问,答\n".encode(), SchemaError, "missing: output"),
        ("a.jsonl", b'{"text": "ok"}\n{"text": \n{"text": "fine"}\n', TooManyBadRowsError, "line 2"),
    ],
)
def test_bad_files_change_nothing(
    app: App, tmp_path: Path, name: str, content: bytes, error: type, match: str
) -> None:
    datasets.import_file(app, _jsonl(tmp_path / "good.jsonl", ROWS), "facts")
    bad = tmp_path / name
    bad.write_bytes(content)
    with pytest.raises(error, match=match):
        datasets.import_file(app, bad, "facts")
    assert _count_versions(app) == 1


def test_size_limit(app: App, tmp_path: Path) -> None:
    opts = ImportOptions(max_bytes=100)
    with pytest.raises(InputTooLargeError, match="ONEBOX_MAX_IMPORT_BYTES"):
        datasets.import_file(app, _jsonl(tmp_path / "a.jsonl", ROWS), "facts", opts)


def test_malformed_line_reported_with_its_number(app: App, tmp_path: Path) -> None:
    lines = [json.dumps(r, ensure_ascii=False) for r in ROWS]
    lines.insert(11, '{"instruction": "broken"')  # becomes line 12
    src = tmp_path / "a.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    datasets.import_file(app, src, "facts")
    rep = datasets.report(app, "facts")
    assert [r["line"] for r in rep["invalid_rows"]] == [12]
    quarantine = datasets.preview(app, "facts", "quarantine", 10)
    assert quarantine[0]["line"] == 12 and quarantine[0]["reason"] == "invalid_row"


def test_text_into_chat_dataset_is_refused(app: App, tmp_path: Path) -> None:
    datasets.import_file(app, _jsonl(tmp_path / "a.jsonl", ROWS), "facts")
    with pytest.raises(SchemaError, match="holds chat data"):
        datasets.import_file(
            app, _jsonl(tmp_path / "t.jsonl", [{"text": f"行 {i}"} for i in range(5)]), "facts"
        )


def test_delete_refuses_versions_models_were_trained_on(
    app: App, tmp_path: Path, tiny_model_dir: Path
) -> None:
    dv, _ = datasets.import_file(app, _jsonl(tmp_path / "a.jsonl", ROWS), "facts")
    models.register(app, "tuned", str(tiny_model_dir), dataset_version_id=dv.id)
    with pytest.raises(InUseError, match="tuned:1"):
        datasets.delete(app, "facts:1")
    models.delete(app, "tuned")
    assert datasets.delete(app, "facts") == ["facts:1"]
    with pytest.raises(NotFoundError):
        datasets.show(app, "facts")
    again, created = datasets.import_file(app, _jsonl(tmp_path / "a.jsonl", ROWS), "facts")
    assert created and again.version == 2  # a deleted version's content may come back


def test_preview_validates_arguments(sqlite_app: App, tmp_path: Path) -> None:
    datasets.import_file(sqlite_app, _jsonl(tmp_path / "a.jsonl", ROWS), "facts")
    with pytest.raises(InvalidInputError, match="split"):
        datasets.preview(sqlite_app, "facts", "test")
    with pytest.raises(InvalidInputError):
        datasets.preview(sqlite_app, "facts", "train", 0)
    with pytest.raises(InvalidInputError):
        datasets.show(sqlite_app, "facts@prod")


def test_demo_dataset_imports_cleanly(sqlite_app: App, demo_dir: Path) -> None:
    dv, _ = datasets.import_file(
        sqlite_app,
        demo_dir / "varnolia_sft.jsonl",
        "varnolia",
        ImportOptions(clean=CleanConfig(redact_pii=True)),
    )
    rep = datasets.report(sqlite_app, "varnolia")
    assert 172 in [r["line"] for r in rep["invalid_rows"]]
    assert rep["pii"].get("email", 0) >= 1 and rep["pii"].get("phone", 0) >= 1
    assert dv.num_train > 250 and dv.num_validation > 20
    removed = rep["cleaning"]["removed"]
    assert (removed["exact_duplicate"], removed["near_duplicate"]) == (2, 2)  # the deliberate dirty rows


def test_bad_file_into_new_name_creates_nothing(app: App, tmp_path: Path) -> None:
    from onebox.store.tables import ArtifactRef, Blob

    bad = tmp_path / "a.csv"
    bad.write_text("instruction,answer\n问,答\n", encoding="utf-8")
    with pytest.raises(SchemaError):
        datasets.import_file(app, bad, "new")
    with app.db.session() as s:
        assert (
            s.query(Dataset).count() == 0 and s.query(Blob).count() == 0 and s.query(ArtifactRef).count() == 0
        )
    assert list(app.blobs.backend.list()) == []


def test_dataset_names_ignore_case(app: App, tmp_path: Path) -> None:
    datasets.import_file(app, _jsonl(tmp_path / "a.jsonl", ROWS), "Données")
    v2, created = datasets.import_file(app, _jsonl(tmp_path / "b.jsonl", ROWS[:30]), "DONNÉES")
    assert created and v2.version == 2
    assert datasets.show(app, "données")["name"] == "Données"
