"""The ``onebox`` command as a user runs it: real processes, real files, exit codes, JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ONEBOX = [sys.executable, "-m", "onebox"]


@pytest.fixture
def home(builtin_home_copy: Path) -> Path:
    return builtin_home_copy


def run(home: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ONEBOX_HOME": str(home), "ONEBOX_GC_GRACE_SECONDS": "0", "COLUMNS": "200"}
    return subprocess.run([*ONEBOX, *args], env=env, capture_output=True, text=True, timeout=300, input=input)


def ok_json(home: Path, *args: str) -> object:
    res = run(home, *args, "--json")
    assert res.returncode == 0, res.stderr + res.stdout
    return json.loads(res.stdout)


def test_help_everywhere(home: Path) -> None:
    for args in ([], ["models"], ["data"], ["models", "register"], ["data", "import"], ["gc"]):
        res = run(home, *args, "--help")
        assert res.returncode == 0 and "Usage" in res.stdout, args


def test_init_and_models_list(home: Path) -> None:
    info = ok_json(home, "init")
    assert [b["created"] for b in info["builtins"]] == [False, False]
    rows = {r["name"]: r for r in ok_json(home, "models", "list")}
    assert rows["smollm2-135m-instruct"]["status"] == "ready"
    assert rows["all-minilm-l6-v2"]["status"] == "ready"
    table = run(home, "models", "list")
    assert "smollm2-135m-instruct" in table.stdout and "ready" in table.stdout


def test_demo_import_report_preview(home: Path, demo_dir: Path) -> None:
    src = str(demo_dir / "varnolia_sft.jsonl")
    first = ok_json(home, "data", "import", src, "--name", "varnolia", "--redact-pii")
    assert first["created"] and first["version"] == 1 and first["num_quarantined"] > 0
    again = ok_json(home, "data", "import", src, "--name", "varnolia", "--redact-pii")
    assert not again["created"] and again["version"] == 1
    report = ok_json(home, "data", "report", "varnolia")
    bad_lines = [r["line"] for r in report["invalid_rows"]]
    assert 172 in bad_lines  # the deliberately malformed JSON line of the demo file
    quarantine = ok_json(home, "data", "preview", "varnolia", "--split", "quarantine", "--limit", "50")
    reasons = {q["reason"] for q in quarantine}
    assert {"exact_duplicate", "near_duplicate"} <= reasons
    rows = ok_json(home, "data", "preview", "varnolia:1", "--limit", "3")
    assert len(rows) == 3 and rows[0]["messages"][-1]["role"] == "assistant"
    listing = ok_json(home, "data", "list")
    assert listing[0]["name"] == "varnolia" and listing[0]["versions"] == 1
    human = run(home, "data", "report", "varnolia")
    assert human.returncode == 0 and "172" in human.stdout


def test_bad_inputs_exit_codes(home: Path, tmp_path: Path, tiny_model_dir: Path) -> None:
    weird = tmp_path / "data.docx"
    weird.write_bytes(b"PK\x03\x04 not a dataset")
    res = run(home, "data", "import", str(weird))
    assert res.returncode == 4 and "format" in res.stderr.lower()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert run(home, "data", "import", str(empty)).returncode == 4
    err = json.loads(run(home, "data", "import", str(empty), "--json").stdout)
    assert err["error"]["code"] == "empty_input"
    assert run(home, "models", "show", "no-such-model").returncode == 3
    assert run(home, "models", "register", "bad", str(tmp_path)).returncode == 4
    assert run(home, "models", "alias", "smollm2-135m-instruct", "prod", "9").returncode == 3
    assert run(home, "models", "alias", "smollm2-135m-instruct", "prod", "1").returncode == 0
    res = run(home, "models", "delete", "smollm2-135m-instruct:1", "--yes")
    assert res.returncode == 5 and "@prod" in res.stderr
    assert run(home, "models", "register", "tiny", str(tiny_model_dir)).returncode == 0
    res = run(home, "models", "register", "tiny", str(tiny_model_dir))
    assert res.returncode == 5 and "already exists" in res.stderr


def test_corrupted_blob_is_reported(home: Path, demo_dir: Path) -> None:
    from onebox.config import Settings
    from onebox.services import datasets
    from onebox.services.context import open_app

    ok_json(home, "data", "import", str(demo_dir / "varnolia_sft.jsonl"), "--name", "v")
    app = open_app(Settings(home=home))
    _, files = datasets._manifest(app, "v")
    app.close()
    digest = files["train.parquet"]["digest"]
    blob = home / "artifacts" / "objects" / digest[:2] / digest[2:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.unlink()  # blobs are hard-linked from the shared home: replace, never write through
    blob.write_bytes(bytes(data))
    res = run(home, "verify", "--json")
    assert res.returncode == 6 and digest in json.loads(res.stdout)["bad"]
    res = run(home, "data", "preview", "v", "--split", "train")
    assert res.returncode == 6 and "corrupted" in res.stderr
    assert run(home, "data", "preview", "v", "--split", "validation").returncode == 0  # other blobs fine


def test_delete_and_gc(home: Path, tiny_model_dir: Path) -> None:
    assert run(home, "models", "register", "tiny", str(tiny_model_dir)).returncode == 0
    assert ok_json(home, "models", "delete", "tiny") == {"deleted": ["tiny:1"]}
    report = ok_json(home, "gc")
    assert report["blobs_deleted"] > 0 and report["bytes_freed"] > 0
    assert ok_json(home, "gc")["blobs_deleted"] == 0
