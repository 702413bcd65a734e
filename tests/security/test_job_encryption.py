"""Encryption at rest for job folders: a LoRA job on an encrypted home is stopped, its newest
sealed checkpoint bit-flipped, resumed (falls back, reports the tampering), and registers; an
evaluation job seals its predictions and the CLI still shows them; afterwards nothing under the
home folder is a plaintext safetensors, torch or Parquet file or holds a row of the data."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from onebox.config import Settings
from onebox.jobs.executor import LocalExecutor
from onebox.security.keys import write_key_file
from onebox.security.streams import is_sealed_file
from onebox.services import datasets, encryption, evaluation, jobs, models, training
from onebox.services.context import open_app
from onebox.train.config import SFTConfig

pytestmark = pytest.mark.slow


def _plaintext_headers(root: Path) -> list[str]:
    """Files that start like a safetensors file (u64 length, then ``{"``), a torch zip or Parquet."""
    found = []
    for p in root.rglob("*"):
        if not p.is_file() or p.is_symlink():
            continue
        with open(p, "rb") as fh:
            head = fh.read(10)
        if head[:4] in (b"PK\x03\x04", b"PAR1"):
            found.append(f"{p}: {head[:4]!r}")
        elif len(head) == 10 and head[8:] == b'{"' and struct.unpack("<Q", head[:8])[0] < p.stat().st_size:
            found.append(f"{p}: safetensors header")
    return found


def _files_holding(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            found += [f"{p}: {n[:40]!r}" for n in needles if n in data]
    return found


def _texts(path: Path, n: int) -> list[bytes]:
    """Distinctive strings of the first ``n`` rows (user and assistant turns, or Q/A)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines()[:n]:
        row = json.loads(line)
        parts = [m["content"] for m in row["messages"]] if "messages" in row else [row["question"]]
        out += [t.encode() for t in parts if len(t.encode()) >= 20]
    return out


def _run(app, job_id: str, until) -> None:  # type: ignore[no-untyped-def]
    ex = LocalExecutor(app.settings, heartbeat_interval=0.5)
    try:
        assert ex.run_until(lambda: until(jobs.get(app, job_id)), poll=0.2, timeout=900)
    finally:
        ex.close()


def test_job_folders_hold_no_plaintext(builtin_home_copy: Path, demo_dir: Path, tmp_path: Path) -> None:
    key = write_key_file(tmp_path / "keys" / "master.key")
    settings = Settings(
        home=builtin_home_copy, gc_grace_seconds=0, encrypt_artifacts=True, master_key_file=key
    )
    app = open_app(settings)
    try:
        assert not encryption.encrypt_existing(app).failed  # the copied built-in models were plaintext
        datasets.import_file(app, demo_dir / "varnolia_sft.jsonl", "varnolia")
        config = SFTConfig.from_dict(
            {
                "method": "lora",
                "lora_r": 4,
                "max_seq_len": 128,
                "micro_batch_size": 1,
                "grad_accum": 1,
                "max_steps": 8,
                "save_every": 1,
                "eval_every": 0,
                "keep_last": 3,
                "lr": 1e-3,
            }
        )
        job = training.submit_train(app, "smollm2-135m-instruct", "varnolia", config, output="sealed-lora")

        # 1. stop it (graceful cancel) once it has two checkpoints
        def stop_after_two(j) -> bool:  # type: ignore[no-untyped-def]
            if j.status == "running" and (j.checkpoint_step or 0) >= 2 and not j.cancel_requested:
                jobs.cancel(app, j.id)
            return j.status in ("succeeded", "failed", "cancelled")

        _run(app, job.id, stop_after_two)
        assert jobs.get(app, job.id).status == "cancelled", jobs.logs(app, job.id, tail=40)
        run_dir = settings.home / "jobs" / job.id / "run"
        states = sorted(run_dir.glob("checkpoints/step-*/state.pt"))
        assert len(states) >= 2 and all(is_sealed_file(p) for p in states)
        assert not (run_dir / "adapter").exists()

        # 2. bit-flip the newest checkpoint: resume reports it and continues from the one before
        raw = bytearray(states[-1].read_bytes())
        raw[len(raw) // 2] ^= 0x04
        states[-1].write_bytes(bytes(raw))
        previous = int(states[-2].parent.name.removeprefix("step-"))
        jobs.resume(app, job.id)
        _run(app, job.id, lambda j: j.status in ("succeeded", "failed", "cancelled"))
        info = jobs.job_dict(jobs.get(app, job.id))
        log = jobs.logs(app, job.id, tail=200)
        assert info["status"] == "succeeded", log
        assert info["result"]["resumed_from_step"] == previous
        assert f"skipping {states[-1].parent.name}: tampered with" in log
        version = models.show(app, info["result"]["model_version"])
        assert version["format"] == "lora" and version["metrics"]["steps"] == 8
        assert not (run_dir / "adapter").exists()  # exported to private memory, registered, removed

        # 3. an evaluation job: predictions sealed in the job folder, scores only in the database
        heldout = tmp_path / "q.jsonl"
        lines = (demo_dir / "varnolia_heldout.jsonl").read_text(encoding="utf-8").splitlines()[:2]
        heldout.write_text("\n".join(lines) + "\n", encoding="utf-8")
        ev = evaluation.submit_eval(
            app, ["smollm2-135m-instruct", info["result"]["model_version"]], heldout=heldout, max_new_tokens=4
        )
        _run(app, ev.id, lambda j: j.status in ("succeeded", "failed", "cancelled"))
        stored = jobs.job_dict(jobs.get(app, ev.id))
        assert stored["status"] == "succeeded", jobs.logs(app, ev.id)
        assert stored["result"]["sealed_result"] == jobs.SEALED_RESULT
        assert is_sealed_file(settings.home / "jobs" / ev.id / jobs.SEALED_RESULT)
        assert "rows" not in stored["result"]["models"]["smollm2-135m-instruct:1"]["heldout"]
        assert "questions" not in stored["result"]["side_by_side"]
        assert stored["result"]["models"]["smollm2-135m-instruct:1"]["heldout"]["overall"]["n"] == 2

        env = {
            **os.environ,
            "ONEBOX_HOME": str(settings.home),
            "ONEBOX_ENCRYPT_ARTIFACTS": "true",
            "ONEBOX_MASTER_KEY_FILE": str(key),
        }
        shown = subprocess.run(
            [sys.executable, "-m", "onebox", "jobs", "show", ev.id, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shown.returncode == 0, shown.stderr
        full = json.loads(shown.stdout)["result"]
        rows = full["models"]["smollm2-135m-instruct:1"]["heldout"]["rows"]
        assert [r["question"] for r in rows] == [json.loads(line)["question"] for line in lines]
        assert all(isinstance(r["prediction"], str) for r in rows)
        assert len(full["side_by_side"]["questions"]) == 2

        # 4. nothing plaintext anywhere under the home folder (artifacts, jobs, database, logs)
        assert _plaintext_headers(settings.home) == []
        needles = _texts(demo_dir / "varnolia_sft.jsonl", 12) + _texts(heldout, 2)
        assert len(needles) >= 10
        assert _files_holding(settings.home, needles) == []
    finally:
        app.close()


def test_the_scans_would_find_plaintext(tiny_model_dir: Path, demo_dir: Path, tmp_path: Path) -> None:
    """The checks above are not vacuous: they catch each kind of plaintext file they look for."""
    import torch

    from onebox.data.parquet import write_examples
    from onebox.data.schema import Example

    torch.save({"w": torch.zeros(4)}, tmp_path / "state.pt")
    write_examples(tmp_path / "train.parquet", [Example(1, [{"role": "user", "content": "hello"}])])
    found = _plaintext_headers(tmp_path) + _plaintext_headers(tiny_model_dir)
    assert {f.rsplit(": ", 1)[1] for f in found} >= {"b'PK\\x03\\x04'", "b'PAR1'", "safetensors header"}
    (tmp_path / "copy.jsonl").write_bytes((demo_dir / "varnolia_sft.jsonl").read_bytes())
    assert _files_holding(tmp_path, _texts(demo_dir / "varnolia_sft.jsonl", 3))
