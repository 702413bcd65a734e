"""``onebox kb to-dataset``: a KB's chunks -> filtered Q/A dataset version with lineage, review report
and retrieval eval set. The model is faked in the fast test; the slow one runs the built-in SmolLM2."""

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
from onebox.services import datasets, kbs, models
from onebox.services.context import open_app

runner = CliRunner()


def _use_home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("ONEBOX_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "200")
    state.settings.cache_clear()
    state.get_app.cache_clear()


def _reset() -> None:
    kbs.clear_caches()
    state.get_app.cache_clear()
    state.settings.cache_clear()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    a = open_app(Settings(home=home))
    models.install_builtin(a, "all-minilm-l6-v2")
    a.close()
    _use_home(monkeypatch, home)
    yield home
    _reset()


def invoke(*args: str, code: int = 0) -> str:
    res = runner.invoke(cli, list(args))
    rc = res.exception.exit_code if isinstance(res.exception, OneboxError) else res.exit_code
    assert rc == code, f"{args}: {res.exit_code}\n{res.output}\n{res.exception!r}"
    return res.stdout if "--json" in args else res.output


def docs(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    (d / "travel.md").write_text(
        "# 差旅制度\n\n员工出差住宿费每晚不超过500元，超出部分需要部门经理书面批准。\n", encoding="utf-8"
    )
    (d / "vpn.txt").write_text(
        "The VPN password rotates every ninety days. Staff get a reminder email a week before.\n",
        encoding="utf-8",
    )
    return d


def test_to_dataset_registers_kept_pairs_with_lineage(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    invoke("kb", "create", "policies")
    invoke("kb", "add", "policies", str(docs(tmp_path)))

    def fake(messages: list[dict[str, str]]) -> str:
        if "VPN" in messages[-1]["content"]:
            return "Question: How often does the VPN password rotate?\nAnswer: every ninety days"
        return "I cannot write a question."

    monkeypatch.setattr(kbs, "local_generator", lambda *a, **kw: fake)
    out = json.loads(invoke("kb", "to-dataset", "policies", "--json", "--out", str(tmp_path / "review")))
    assert out["summary"]["generations"] == 2 and out["summary"]["kept"] == 1
    assert out["summary"]["rejected_by_reason"] == {"unparsable": 1}
    ds = out["dataset"]
    assert (ds["ref"], ds["schema"], ds["num_train"] + ds["num_validation"]) == (
        "policies-qa:1",
        "messages",
        1,
    )
    assert out["lineage"]["kb"] == "policies" and out["lineage"]["model"] == "smollm2-135m-instruct"
    assert out["retrieval"]["questions"] == 1 and out["retrieval"]["hit@1"] == 1.0
    files = {n: Path(p) for n, p in out["files"].items()}
    assert files["review.md"].parent == tmp_path / "review"
    assert "unparsable" in files["review.md"].read_text(encoding="utf-8")
    gold = json.loads(files["retrieval_eval.jsonl"].read_text().splitlines()[0])
    assert gold["source"] == "vpn.txt" and gold["gold_chunk_id"].endswith(":0")

    a = state.get_app()
    assert datasets.preview(a, "policies-qa")[0]["messages"][0]["content"].startswith("How often")
    rep = datasets.report(a, "policies-qa:1")  # the stored import report
    assert rep["ref"] == "policies-qa:1"
    with a.db.session() as s:
        dv = datasets.resolve(s, datasets._pid(s, a), "policies-qa:1")
        from_kb = dv.report["from_kb"]
    assert from_kb["kb_id"] == out["lineage"]["kb_id"] and set(from_kb["files"]) == {
        "review.md", "review.jsonl", "retrieval_eval.jsonl"
    }  # fmt: skip
    assert (
        a.blobs.read_bytes(from_kb["files"]["retrieval_eval.jsonl"]["digest"])
        == files["retrieval_eval.jsonl"].read_bytes()
    )
    assert "kb.to_dataset" in {e["kind"] for e in kbs.show(a, "policies")["events"]}

    text = invoke("kb", "to-dataset", "policies", "--dataset", "vpn-qa")  # human output
    assert "registered vpn-qa:1" in text and "kept 1 of 2" in text and "review:" in text

    monkeypatch.setattr(kbs, "local_generator", lambda *a, **kw: lambda m: "no idea")
    invoke("kb", "to-dataset", "policies", "--dataset", "none-qa", code=4)  # nothing passed: nothing made
    invoke("data", "show", "none-qa", code=3)
    invoke("kb", "to-dataset", "policies", "--max-chunks", "0", code=4)
    invoke("kb", "to-dataset", "policies", "--per-chunk", "9", code=4)
    invoke("kb", "to-dataset", "nope", code=3)


@pytest.mark.slow
def test_to_dataset_with_the_built_in_model(
    builtin_home_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real SmolLM2 on two chunks: whatever it writes, the run ends with an honest report."""
    _use_home(monkeypatch, builtin_home_copy)
    try:
        invoke("kb", "create", "docs")
        invoke("kb", "add", "docs", str(docs(tmp_path)))
        res = runner.invoke(cli, ["kb", "to-dataset", "docs", "--max-chunks", "2", "--json"])
        rc = res.exception.exit_code if isinstance(res.exception, OneboxError) else res.exit_code
        review = builtin_home_copy / "kbs"
        if rc == 0:
            out = json.loads(res.stdout)
            assert out["summary"]["generations"] == 2 and out["summary"]["kept"] >= 1
            assert out["lineage"]["model"] == "smollm2-135m-instruct" and out["lineage"]["via"] == "local"
            assert Path(out["files"]["review.md"]).is_file()
        else:  # the 135M model may write nothing usable: exit 4, and the review says why
            assert rc == 4 and "passed the filter" in str(res.exception)
            mds = list(review.glob("*/to_dataset/*-rejected/review.md"))
            assert mds and "generations" in mds[0].read_text(encoding="utf-8")
    finally:
        _reset()
