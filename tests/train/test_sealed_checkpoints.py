"""Sealed checkpoints (encryption at rest): the same loss curve as plaintext ones, no plaintext
state on disk, tampering reported and skipped like corruption, and the ranks of a torchrun group
get the sealer without a key file under the output folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from onebox.errors import ConfigError, TamperedError
from onebox.security.streams import Sealer, is_sealed_file
from onebox.train import checkpoint as ckpt
from onebox.train.config import SFTConfig
from onebox.train.sft import run_sft
from tests.train.conftest import write_chats
from tests.train.test_sft import Recorder, conf

SEALER = Sealer(os.urandom(32), "job-test")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("sealed-sft-data")
    return write_chats(d / "train.parquet", 40, max_words=6), write_chats(d / "val.parquet", 8, seed=9)


def _states(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("step-*/state.pt"))


def test_sealed_run_resumes_on_the_same_curve_and_exports_elsewhere(
    tiny_chat_model: Path, data, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    train, val = data
    cfg = conf(max_steps=6, save_every=2, eval_every=3, keep_last=3)
    whole = Recorder()
    run_sft(tiny_chat_model, train, val, tmp_path / "plain", cfg, whole.hooks())

    out, export = tmp_path / "sealed", tmp_path / "private"
    first = Recorder(stop_at=4)
    stopped = run_sft(tiny_chat_model, train, val, out, cfg, first.hooks(), sealer=SEALER, export_dir=export)
    assert stopped.stopped and [s for s, _ in first.checkpoints] == [2, 4]
    for state in _states(out):
        assert is_sealed_file(state)
        assert b"PK\x03\x04" not in state.read_bytes()  # no torch zip (plaintext) inside
        meta = json.loads((state.parent / "meta.json").read_text())
        assert meta["files"]["state.pt"]["sealed"] is True
    second = Recorder()
    resumed = run_sft(tiny_chat_model, train, val, out, cfg, second.hooks(), sealer=SEALER, export_dir=export)
    assert resumed.resumed_from_step == 4
    combined = {**first.losses(), **second.losses()}
    assert combined == pytest.approx(whole.losses(), rel=1e-6, abs=1e-7)
    assert resumed.adapter_dir == export / "adapter"
    assert (export / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / "adapter").exists() and not (out / "model").exists()

    shutil.rmtree(export)  # the private folder is gone (worker exited): a finished run re-exports
    again = run_sft(tiny_chat_model, train, val, out, cfg, sealer=SEALER, export_dir=export)
    assert again.resumed_from_step == 6 and (export / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("attack", ["bit-flip", "swapped-step", "plaintext", "other-key"])
def test_tampered_sealed_checkpoint_is_reported_and_skipped(
    tiny_chat_model: Path, data, tmp_path: Path, attack: str
) -> None:  # type: ignore[no-untyped-def]
    train, _ = data
    cfg = conf(max_steps=6, save_every=2, keep_last=3)
    out = tmp_path / "o"
    run_sft(tiny_chat_model, train, None, out, cfg, Recorder(stop_at=4).hooks(), sealer=SEALER)
    step2, step4 = (out / "checkpoints" / f"step-00000{n}" for n in (2, 4))
    if attack == "bit-flip":
        raw = bytearray((step4 / "state.pt").read_bytes())
        raw[len(raw) // 2] ^= 0x01
        (step4 / "state.pt").write_bytes(bytes(raw))
    elif attack == "swapped-step":  # step 2's sealed state (and a matching meta) under step 4
        (step4 / "state.pt").write_bytes((step2 / "state.pt").read_bytes())
        meta4 = json.loads((step4 / "meta.json").read_text())
        meta4["files"] = json.loads((step2 / "meta.json").read_text())["files"]
        (step4 / "meta.json").write_text(json.dumps(meta4))
    else:  # someone rewrites step 4 with a state of their choosing, fixing meta.json to match
        info = next(c for c in ckpt.list_valid(out / "checkpoints") if c.step == 4)
        forged = ckpt.load(info, SEALER)
        sealer = None if attack == "plaintext" else Sealer(os.urandom(32), "job-test")
        meta = {k: v for k, v in info.meta.items() if k not in ("format", "step", "complete", "files")}
        shutil.rmtree(step4)
        ckpt.save(out / "checkpoints", 4, forged, meta, sealer)
    rec = Recorder()
    result = run_sft(tiny_chat_model, train, None, out, cfg, rec.hooks(), sealer=SEALER)
    assert result.resumed_from_step == 2 and result.metrics["steps"] == 6
    assert any("step-000004" in m and "tampered" in m for m in rec.messages), rec.messages


def test_sealed_checkpoint_without_its_key_is_an_error_not_a_fallback(
    tiny_chat_model: Path, data, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    train, _ = data
    cfg = conf(max_steps=4, save_every=2)
    run_sft(tiny_chat_model, train, None, tmp_path / "o", cfg, Recorder(stop_at=2).hooks(), sealer=SEALER)
    info = ckpt.list_valid(tmp_path / "o" / "checkpoints")[-1]
    with pytest.raises(ConfigError, match="sealed"):
        ckpt.load(info)
    with pytest.raises(ConfigError, match="sealed"):
        run_sft(tiny_chat_model, train, None, tmp_path / "o", cfg)
    with pytest.raises(TamperedError):
        ckpt.load(info, Sealer(SEALER.key, "job-other"))  # another job's key scope


def test_torchrun_ranks_get_the_sealer_from_a_private_file(tiny_chat_model: Path, tmp_path: Path) -> None:
    from onebox.security.sealed import private_dir
    from onebox.train.launch import run_sft_distributed

    train = write_chats(tmp_path / "train.parquet", 24, max_words=6)
    cfg = SFTConfig(max_seq_len=256, micro_batch_size=2, precision="fp32", max_steps=3, save_every=2, nproc=2)
    out, export = tmp_path / "two", private_dir() / "test-export"
    try:
        result = run_sft_distributed(tiny_chat_model, train, None, out, cfg, sealer=SEALER, export_dir=export)
        assert result.adapter_dir == export / "adapter" and (export / "adapter").is_dir()
    finally:
        shutil.rmtree(export, ignore_errors=True)
    assert _states(out) and all(is_sealed_file(p) for p in _states(out))
    assert not list(private_dir().glob("sealer-*")), "the key file outlived the launch"
    for f in out.rglob("*"):
        assert not f.is_file() or SEALER.key.hex().encode() not in f.read_bytes(), f
