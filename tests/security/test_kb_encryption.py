"""Knowledge bases with encryption at rest: nothing of a document is readable under the home folder
(sources sealed, index under SQLCipher), yet ingestion, search and ask work; tampering, a wrong
master key, rotation, deletion (crypto-shredding) and converting an older plaintext KB."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from onebox.config import Settings
from onebox.errors import KeyUnavailableError
from onebox.jobs.executor import LocalExecutor
from onebox.rag.index._sqlite import SQLITE_MAGIC
from onebox.security.datakeys import DataKeys
from onebox.security.keys import read_key_file, write_key_file
from onebox.security.sealed import private_dir
from onebox.security.streams import is_sealed_file
from onebox.services import encryption, jobs, kbs, models
from onebox.services.context import App, open_app

pytest.importorskip("sqlcipher3")
docx = pytest.importorskip("docx")

ZH = "沃萝科技的保密柜钥匙存放在三楼前台的蓝色抽屉里。"
EN = "The quarterly penguin audit happens every second Thursday in Reykjavik."
DOCX_ZH = "涡轮机每运行七千小时需要更换镁垫片。"
DOCX_EN = "Zephyr turbines need a magnesium gasket swap every seven thousand hours."
NEEDLES = {
    s: s.encode() for s in (ZH, EN, DOCX_ZH, DOCX_EN, "保密柜钥匙", "penguin audit", "magnesium gasket")
}


def _settings(home: Path, key_file: Path | None, **kw: Any) -> Settings:
    return Settings(home=home, gc_grace_seconds=0, master_key_file=key_file, **kw)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return write_key_file(tmp_path / "keys" / "master.key")


@pytest.fixture
def enc_app(home: Path, key_file: Path) -> Iterator[App]:
    a = open_app(_settings(home, key_file, encrypt_artifacts=True))
    models.install_builtin(a, "all-minilm-l6-v2")
    yield a
    kbs.clear_caches()
    a.close()


def _docs(folder: Path) -> list[tuple[str, Path]]:
    (folder / "policies").mkdir(parents=True)
    (folder / "policies" / "security.md").write_text(
        f"# 保密制度\n\n{ZH}\n\n## Audits\n\n{EN}\n", encoding="utf-8"
    )
    (folder / "notes.txt").write_text("The cafeteria closes at half past two on Fridays.\n", encoding="utf-8")
    d = docx.Document()
    d.add_heading("Maintenance", level=1)
    d.add_paragraph(DOCX_EN)
    d.add_paragraph(DOCX_ZH)
    d.save(str(folder / "manual.docx"))
    return [("policies/security.md", folder / "policies" / "security.md"),
            ("notes.txt", folder / "notes.txt"), ("manual.docx", folder / "manual.docx")]  # fmt: skip


def _run_job(app: App, job_id: str) -> dict[str, Any]:
    """The real worker process: it gets the master key from the settings, like production."""
    ex = LocalExecutor(app.settings, heartbeat_interval=0.5)
    try:
        assert ex.run_until(lambda: ex.is_finished(job_id), poll=0.1, timeout=300)
    finally:
        ex.close()
    done = jobs.job_dict(jobs.get(app, job_id))
    assert done["status"] == "succeeded", done["error"]
    return done["result"]  # type: ignore[no-any-return]


class _Ctx:
    """Just what ``run_ingest_job`` uses of a job context, to ingest in this process (fast)."""

    job_id = "test"
    checkpoint_step = None
    log = logging.getLogger("test-ingest")

    def __init__(self, app: App, spec: dict[str, Any]) -> None:
        self.app, self.spec = app, spec

    def validate_spec(self, _schema: object) -> None: ...

    def open_app(self) -> App:
        return self.app

    def progress(self, *_: object) -> None: ...

    def mark_checkpoint(self, _step: int) -> None: ...

    def should_stop(self) -> bool:
        return False


def _ingest_here(app: App, name: str, items: list[tuple[str, Path]], sync: bool = False) -> dict[str, Any]:
    job = kbs.add(app, name, items, sync=sync)
    jobs.cancel(app, job.id)  # ingested below instead of by a worker
    return kbs.run_ingest_job(_Ctx(app, dict(job.spec)))


def _plaintext(roots: list[Path], *, sqlite_under: Path | None = None) -> list[str]:
    """Files holding a needle's UTF-8 bytes (or, under ``sqlite_under``, a plaintext SQLite header)."""
    found = []
    for root in roots:
        for p in root.rglob("*"):
            if not p.is_file() or p.is_symlink():
                continue
            data = p.read_bytes()
            found += [f"{p}: {s}" for s, b in NEEDLES.items() if b in data]
            if sqlite_under is not None and p.is_relative_to(sqlite_under) and SQLITE_MAGIC in data:
                found.append(f"{p}: plaintext SQLite")
    return found


def test_scan_finds_plaintext_kb(home: Path, key_file: Path, tmp_path: Path) -> None:
    """The scan below is not vacuous: a KB created with encryption off shows every needle."""
    a = open_app(_settings(home, key_file))
    try:
        models.install_builtin(a, "all-minilm-l6-v2")
        info = kbs.create(a, "plain")
        assert info["encrypted"] is False
        _ingest_here(a, "plain", _docs(tmp_path / "docs"))
        found = "\n".join(_plaintext([home / "kbs"], sqlite_under=home / "kbs"))
        assert all(s in found for s in (ZH, EN, DOCX_EN, "plaintext SQLite")), found
    finally:
        kbs.clear_caches()
        a.close()


def test_encrypted_kb_lifecycle(enc_app: App, home: Path, tmp_path: Path) -> None:
    app = enc_app
    info = kbs.create(app, "secrets")
    assert info["encrypted"] is True
    subject = f"kb-{info['id']}"
    result = _run_job(app, kbs.add(app, "secrets", _docs(tmp_path / "docs")).id)
    assert result["counts"]["added"] == 3 and not result["failed"], result
    sources = kbs.sources_dir(app.settings, info["id"])
    assert all(is_sealed_file(p) for p in sources.rglob("*") if p.is_file())

    # search and ask find the right documents, with their citations
    hit = kbs.search(app, "secrets", "保密柜钥匙放在哪里", k=3)[0]
    assert hit["source"] == "policies/security.md" and ZH in hit["text"]
    assert kbs.search(app, "secrets", "penguin audit Reykjavik", mode="dense", k=1)[0]["source"] == (
        "policies/security.md"
    )
    assert kbs.search(app, "secrets", "magnesium gasket turbines", k=1)[0]["source"] == "manual.docx"
    out = kbs.ask(app, "secrets", "保密柜钥匙放在哪里？", generate=lambda _m: "在三楼前台的蓝色抽屉里 [1]。")
    assert not out["not_found"] and out["citations"][0]["source"] == "policies/security.md"
    assert {d["size_bytes"] for d in kbs.documents(app, "secrets")} == {
        p.stat().st_size for _, p in _docs(tmp_path / "again")
    }  # the plaintext sizes, not the sealed ones

    # to_dataset: the dataset and review are sealed blobs; the KB folder's copies are sealed too
    def qa(messages: list[dict[str, str]]) -> str:
        if "penguin" in messages[-1]["content"]:
            return "Question: When does the quarterly penguin audit happen?\nAnswer: every second Thursday"
        return "I cannot write a question."

    made = kbs.to_dataset(app, "secrets", generate=qa)
    assert made["sealed"] and made["summary"]["kept"] == 1
    review = Path(made["files"]["review.md"])
    name = f"to_dataset/{review.parent.name}/review.md"
    assert is_sealed_file(review) and "penguin" in encryption.opener(app, subject).read(review, name).decode()

    # nothing of the documents, and no plaintext SQLite file, anywhere under the home folder
    assert _plaintext([home, private_dir()], sqlite_under=home / "kbs") == []

    # a bit flipped in one sealed source: that file is reported as tampered, the others are fine
    notes = sources / "notes.txt"
    data = bytearray(notes.read_bytes())
    data[-20] ^= 0x01
    notes.write_bytes(bytes(data))
    (sources / "planted.txt").write_text("put there behind onebox's back\n", encoding="utf-8")
    report = kbs.run_ingest_job(_Ctx(app, {**_sync_spec(app, info["id"])}))
    failed = {r["source"]: r for r in report["failed"]}
    assert set(failed) == {"notes.txt", "planted.txt"}
    assert {r["error_code"] for r in failed.values()} == {"tampered"}
    assert "chunk 0" in failed["notes.txt"]["reason"] and "not sealed" in failed["planted.txt"]["reason"]
    assert report["counts"]["unchanged"] == 2
    assert kbs.search(app, "secrets", "cafeteria closes", k=1)[0]["source"] == "notes.txt"  # kept as it was
    (sources / "planted.txt").unlink()

    # another master key, or none: a clear KeyUnavailableError, not a SQLite traceback
    kbs.clear_caches()
    other = open_app(_settings(home, write_key_file(tmp_path / "keys" / "other.key")))
    none = open_app(_settings(home, None))
    try:
        for wrong in (other, none):
            with pytest.raises(KeyUnavailableError):
                kbs.documents(wrong, "secrets")
            assert kbs.show(wrong, "secrets")["status"] == "error"
    finally:
        kbs.clear_caches()
        other.close()
        none.close()

    # rotation re-wraps the KB's key with the others; search works under the new master key
    new_file = write_key_file(tmp_path / "keys" / "new.key")
    rotated = encryption.rotate(app, read_key_file(new_file))
    assert not rotated.failed and rotated.rewrapped >= 1
    kbs.clear_caches()
    app2 = open_app(_settings(home, new_file, encrypt_artifacts=True))
    try:
        assert kbs.search(app2, "secrets", "保密柜钥匙", k=1)[0]["source"] == "policies/security.md"
        keys = DataKeys.from_codec(app2.blobs.codec)
        assert keys is not None and keys.exists(subject)
        kbs.delete(app2, "secrets")
        assert not keys.exists(subject) and not kbs.kb_dir(app2.settings, info["id"]).exists()
    finally:
        kbs.clear_caches()
        app2.close()


def _sync_spec(app: App, kb_id: str) -> dict[str, Any]:
    """The spec of a sync ingestion over the whole snapshot (every file is read again)."""
    from onebox.rag.ingest import ParseOptions

    return {"kb": "secrets", "kb_id": kb_id, "sources": None, "sync": True, "tags": None,
            "options": ParseOptions().as_dict()}  # fmt: skip


def test_kb_created_before_encryption_stays_readable_and_converts(
    home: Path, key_file: Path, tmp_path: Path
) -> None:
    off = open_app(_settings(home, key_file))
    try:
        models.install_builtin(off, "all-minilm-l6-v2")
        info = kbs.create(off, "legacy")
        items = _docs(tmp_path / "docs")
        _ingest_here(off, "legacy", items[:1])
    finally:
        kbs.clear_caches()
        off.close()

    app = open_app(_settings(home, key_file, encrypt_artifacts=True))
    try:
        assert kbs.show(app, "legacy")["encrypted"] is False  # readable as it is
        assert kbs.search(app, "legacy", "保密柜钥匙", k=1)[0]["source"] == "policies/security.md"
        _ingest_here(app, "legacy", items[1:])  # new documents are sealed even in an old KB
        sources = kbs.sources_dir(app.settings, info["id"])
        assert is_sealed_file(sources / "manual.docx") and not is_sealed_file(
            sources / "policies/security.md"
        )
        assert kbs.search(app, "legacy", "magnesium gasket", k=1)[0]["source"] == "manual.docx"

        report = kbs.encrypt_existing(app)
        assert report["encrypted"] == ["legacy"] and not report["failed"]
        assert kbs.encrypt_existing(app)["already"] == 1  # a second run has nothing to do
        kbs.clear_caches()
        assert kbs.show(app, "legacy")["encrypted"] is True
        assert kbs.search(app, "legacy", "保密柜钥匙", k=1)[0]["source"] == "policies/security.md"
        assert _plaintext([home / "kbs"], sqlite_under=home / "kbs") == []
    finally:
        kbs.clear_caches()
        app.close()
