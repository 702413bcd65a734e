"""``onebox kb`` through Typer's CliRunner on a real home (MiniLM built in; the answer model faked,
or the real SmolLM2 in the slow test)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from onebox.cli import state
from onebox.cli.main import app as cli
from onebox.config import Settings
from onebox.errors import OneboxError
from onebox.services import kbs, models
from onebox.services.context import open_app

runner = CliRunner()


@pytest.fixture(scope="module")
def minilm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("kbcli") / "home"
    a = open_app(Settings(home=home))
    models.install_builtin(a, "all-minilm-l6-v2")
    a.close()
    return home


def _use_home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("ONEBOX_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "200")
    state.settings.cache_clear()
    state.get_app.cache_clear()


@pytest.fixture
def home(minilm_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    _use_home(monkeypatch, minilm_home)
    yield minilm_home
    kbs.clear_caches()
    state.get_app.cache_clear()
    state.settings.cache_clear()


def invoke(*args: str, code: int = 0) -> str:
    res = runner.invoke(cli, list(args))
    # main() turns a OneboxError into its exit code; the runner calls the Typer app underneath it
    rc = res.exception.exit_code if isinstance(res.exception, OneboxError) else res.exit_code
    assert rc == code, f"{args}: {res.exit_code}\n{res.output}\n{res.exception!r}"
    return res.stdout if "--json" in args else res.output  # progress and model loading go to stderr


def docs(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    (d / "travel.md").write_text("# 差旅制度\n\n员工出差住宿费每晚不超过500元。\n", encoding="utf-8")
    (d / "vpn.txt").write_text("The VPN password rotates every ninety days.\n", encoding="utf-8")
    (d / "empty.txt").write_bytes(b"")
    return d


def test_help() -> None:
    for cmd in ([], ["create"], ["add"], ["list"], ["show"], ["search"], ["ask"], ["remove"], ["delete"]):
        assert "Usage" in invoke("kb", *cmd, "--help")


def test_create_add_search_ask_remove_delete(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = json.loads(invoke("kb", "create", "制度", "--description", "公司制度", "--json"))
    assert created["name"] == "制度" and created["dim"] == 384
    invoke("kb", "create", "制度", code=5)  # already exists
    invoke("kb", "create", "bad name", code=4)

    report = json.loads(invoke("kb", "add", "制度", str(docs(tmp_path)), "--tag", "hr", "--json"))
    assert report["counts"]["added"] == 2 and report["failed"][0]["source"] == "empty.txt"
    again = invoke("kb", "add", "制度", str(tmp_path / "docs"))
    assert "2 unchanged" in again and "empty.txt" in again

    rows = json.loads(invoke("kb", "list", "--json"))
    assert [(r["name"], r["documents"]) for r in rows] == [("制度", 2)]
    assert "travel.md" in invoke("kb", "show", "制度")
    hits = json.loads(invoke("kb", "search", "制度", "住宿费", "-k", "1", "--json"))
    assert hits[0]["source"] == "travel.md"
    assert "vpn.txt" in invoke("kb", "search", "制度", "VPN password", "--mode", "lexical")
    invoke("kb", "search", "制度", "x", "--mode", "fuzzy", code=4)
    invoke("kb", "search", "nope", "x", code=3)

    monkeypatch.setattr(kbs, "local_generator", lambda *a, **kw: lambda messages: "每晚不超过500元 [1]")
    out = invoke("kb", "ask", "制度", "出差住宿费每晚多少？")
    assert out.index("每晚不超过500元") < out.index("[1] travel.md")
    asked = json.loads(invoke("kb", "ask", "制度", "出差住宿费每晚多少？", "--json"))
    assert asked["citations"][0]["source"] == "travel.md" and asked["via"] == "local"

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "empty.md").write_bytes(b"")
    invoke("kb", "add", "制度", str(only_bad / "empty.md"), code=4)  # nothing could be ingested
    invoke("kb", "add", "制度", str(tmp_path / "missing.pdf"), code=4)

    assert json.loads(invoke("kb", "remove", "制度", "vpn.txt", "--json"))["removed"] == ["vpn.txt"]
    invoke("kb", "remove", "制度", "vpn.txt", code=3)
    detached = json.loads(
        invoke("kb", "add", "制度", str(tmp_path / "docs" / "vpn.txt"), "--detach", "--json")
    )
    assert detached["status"] == "queued"
    invoke("kb", "delete", "制度", "--yes", code=5)  # its ingestion job is queued
    invoke("jobs", "cancel", detached["id"])
    assert "deleted knowledge base 制度" in invoke("kb", "delete", "制度", "--yes")
    assert json.loads(invoke("kb", "list", "--json")) == []


@pytest.mark.slow
def test_ask_with_the_built_in_model(
    builtin_home_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real SmolLM2 loaded by the onebox engine in this process (no deployment)."""
    _use_home(monkeypatch, builtin_home_copy)
    try:
        invoke("kb", "create", "docs")
        invoke("kb", "add", "docs", str(docs(tmp_path)))
        out = json.loads(invoke("kb", "ask", "docs", "How often does the VPN password rotate?", "--json"))
        assert not out["not_found"] and out["model"] == "smollm2-135m-instruct" and out["answer"].strip()
        assert out["sources"][0]["source"] == "vpn.txt"
    finally:
        kbs.clear_caches()
        state.get_app.cache_clear()
        state.settings.cache_clear()
