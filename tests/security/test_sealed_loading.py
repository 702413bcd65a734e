"""transformers/peft consumers on an encrypted home read sealed checkouts: weights go from
ciphertext to tensors in memory, and no plaintext copy of a model's weights exists anywhere
(home folder, the private memory folders of this process and of job workers), also while a
fine-tune (one process or two torchrun ranks) and an evaluation run."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from onebox.config import Settings
from onebox.errors import ConfigError
from onebox.jobs.executor import LocalExecutor
from onebox.models import pretrained
from onebox.security import sealed
from onebox.security.keys import write_key_file
from onebox.security.sealed_child import ensure_reader
from onebox.services import datasets, evaluation, jobs, kbs, models, training
from onebox.services.context import App, open_app
from onebox.train.config import SFTConfig
from tests.conftest import make_lora_adapter
from tests.train.conftest import make_tiny_model

PROMPT = torch.tensor([[1, 17, 42, 99, 7, 250, 3, 64]])


@pytest.fixture(autouse=True)
def own_private_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """A private memory folder of this test's own: the pytest process's folder may already hold
    plaintext checkouts that earlier tests made on purpose (``weights_in_memory=False``)."""
    monkeypatch.setattr(sealed, "_private", None)


def _enc_settings(root: Path) -> Settings:
    key = write_key_file(root / "keys" / "master.key")
    return Settings(home=root / "home", gc_grace_seconds=0, encrypt_artifacts=True, master_key_file=key)


@pytest.fixture
def enc_app(tmp_path: Path) -> Iterator[App]:
    a = open_app(_enc_settings(tmp_path))
    yield a
    a.close()


def _chats(path: Path, n: int = 24) -> Path:
    rows = [
        {"messages": [{"role": "user", "content": f"q {i}?"}, {"role": "assistant", "content": f"a {i}."}]}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def plaintext_weights(root: Path) -> list[str]:
    """Files holding a safetensors header (u64 length, then a JSON object naming tensors)
    anywhere in them, with the tensors it names; sealed pointers and ciphertext have none.

    The SQLite files are skipped: closing a descriptor of the database drops this process's
    POSIX locks on it, and the open app then fails with "disk I/O error"."""
    found = []
    for p in root.rglob("*"):
        if not p.is_file() or p.is_symlink() or p.name.startswith("onebox.db"):
            continue
        data = p.read_bytes()
        i = data.find(b'{"', 8)
        while i >= 0:
            (n,) = struct.unpack("<Q", data[i - 8 : i])
            if 2 <= n <= len(data) - i:
                try:
                    header = json.loads(data[i : i + n])
                except ValueError:
                    header = None
                if isinstance(header, dict):
                    names = sorted(k for k in header if k != "__metadata__")
                    found.append(f"{p} @{i - 8}: {', '.join(names[:3])}")
                    break
            i = data.find(b'{"', i + 1)
    return found


def base_weights(found: list[str]) -> list[str]:
    """The hits that hold a model's own weights (not a freshly trained LoRA adapter, which the
    job writes out itself and which is not a load path)."""
    return [f for f in found if "lora_" not in f.split(": ", 1)[1]]


def memory_folders(*pids: int) -> list[Path]:
    """The private memory folders of these processes (this one's included by the caller)."""
    root = sealed.private_dir().parent
    return [d for pid in pids for d in root.glob(f"onebox-{os.getuid()}-{pid}-*")]


def test_scanner_sees_plaintext_weights(tiny_model_dir: Path, tiny_lora_dirs: list[Path]) -> None:
    assert base_weights(plaintext_weights(tiny_model_dir))
    assert plaintext_weights(tiny_lora_dirs[0]) and not base_weights(plaintext_weights(tiny_lora_dirs[0]))


def test_builtin_chat_model_gives_the_same_logits_sealed(smollm2_dir: Path, tmp_path: Path) -> None:
    """(a) The converted built-in SmolLM2 registered in an encrypted home, loaded for evaluation
    and for training from its sealed checkout, gives the plaintext folder's logits."""
    from onebox.evaluate.loading import load_for_eval
    from onebox.train.model import load_model, resolve_precision

    app = open_app(_enc_settings(tmp_path))
    try:
        models.register(app, "smol", str(smollm2_dir), kind="chat")
        sealed_dir = models.checkout(app, "smol", weights_in_memory=True)
        assert pretrained.is_sealed(sealed_dir) and (sealed_dir / "tokenizer.json").is_file()
        assert base_weights(plaintext_weights(sealed.private_dir())) == []
        assert base_weights(plaintext_weights(app.settings.home)) == []

        with torch.no_grad():
            plain, _ = load_for_eval(smollm2_dir, dtype="float32", device="cpu")
            want = plain(PROMPT).logits
            del plain
            model, tok = load_for_eval(sealed_dir, dtype="float32", device="cpu")
            assert torch.equal(model(PROMPT).logits, want)
            assert tok("hello").input_ids
            assert model.generation_config.eos_token_id is not None
            del model
            cfg = SFTConfig(method="lora", precision="fp32", lora_r=4, compile=False)
            device = torch.device("cpu")
            loaded = load_model(sealed_dir, cfg, resolve_precision("fp32", device, "lora"), device)
            with loaded.model.disable_adapter():
                assert torch.allclose(loaded.model(PROMPT).logits, want, atol=1e-4)
    finally:
        app.close()


def test_fine_tune_and_evaluate_jobs_never_write_plaintext_weights(tmp_path: Path) -> None:
    """(b) A LoRA fine-tune job and an evaluation job (base + the adapter it produced) on an
    encrypted home: while and after they run, no plaintext model weights exist in the home folder
    or in the worker's or this process's private memory folder."""
    app = open_app(_enc_settings(tmp_path))
    try:
        models.register(app, "tiny", str(make_tiny_model(tmp_path / "tiny")), kind="chat")
        datasets.import_file(app, _chats(tmp_path / "chats.jsonl"), "chats")
        recipe = SFTConfig(
            method="lora", lora_r=4, max_seq_len=64, micro_batch_size=2, max_steps=4, save_every=2, lr=1e-2
        )
        job = training.submit_train(app, "tiny", "chats", recipe, output="tiny-lora")
        seen = _run_watching(app, job.id)
        assert seen["status"] == "succeeded", jobs.logs(app, job.id, tail=60)
        assert seen["worker_folders"], "the worker's private memory folder was never seen"
        adapter = seen["result"]["model_version"]

        ev = evaluation.submit_eval(app, ["tiny", adapter], data="chats", max_new_tokens=4)
        seen = _run_watching(app, ev.id)
        assert seen["status"] == "succeeded", jobs.logs(app, ev.id, tail=60)
        ppl = {ref: r["perplexity"]["perplexity"] for ref, r in seen["result"]["models"].items()}
        assert len(set(ppl.values())) == 2  # the adapter was applied
    finally:
        app.close()


def _run_watching(app: App, job_id: str) -> dict[str, Any]:
    """Run the job with a real worker, scanning for plaintext weights every few hundred ms."""
    ex = LocalExecutor(app.settings, heartbeat_interval=0.5)
    folders: set[Path] = set()

    def check() -> bool:
        j = jobs.get(app, job_id)
        if j.pid:
            folders.update(memory_folders(j.pid))
        for root in [app.settings.home, *folders, sealed.private_dir()]:
            if root.is_dir():
                assert base_weights(plaintext_weights(root)) == [], f"plaintext weights under {root}"
        return j.status in ("succeeded", "failed", "cancelled")

    try:
        assert ex.run_until(check, poll=0.3, timeout=600)
    finally:
        ex.close()
    check()
    info = jobs.job_dict(jobs.get(app, job_id))
    return {**info, "worker_folders": sorted(folders)}


def test_sealed_adapter_and_base_evaluate_like_plaintext(enc_app: App, tmp_path: Path) -> None:
    """(d) A PEFT adapter stored sealed (and its sealed base) gives the plaintext output."""
    from onebox.evaluate.loading import load_for_eval

    tiny_model_dir = make_tiny_model(tmp_path / "tiny")
    lora_src = make_lora_adapter(tiny_model_dir, tmp_path / "lora")
    base = models.register(enc_app, "tiny", str(tiny_model_dir)).version
    lora = models.register(enc_app, "tiny-lora", str(lora_src), base_version_id=base.id).version
    base_dir, lora_dir = evaluation.model_dirs(enc_app, lora.id)
    assert lora_dir is not None and pretrained.is_sealed(base_dir) and pretrained.is_sealed(lora_dir)
    with torch.no_grad():
        got = load_for_eval(base_dir, lora_dir, dtype="float32", device="cpu")[0](PROMPT).logits
        want = load_for_eval(tiny_model_dir, lora_src, dtype="float32", device="cpu")[0](PROMPT).logits
        base_only = load_for_eval(tiny_model_dir, dtype="float32", device="cpu")[0](PROMPT).logits
    assert torch.allclose(got, want, atol=1e-6) and not torch.allclose(got, base_only, atol=1e-3)
    assert base_weights(plaintext_weights(sealed.private_dir())) == []


def test_kb_embedder_and_reranker_load_sealed(enc_app: App, tmp_path: Path) -> None:
    """(c) The knowledge-base embedder (built-in MiniLM, sentence-transformers layout) and a
    cross-encoder reranker load from sealed checkouts and score exactly as from plaintext."""
    from onebox.engine.embeddings import EmbeddingEngine
    from onebox.models.catalog import get_entry
    from onebox.rag.rerank import Reranker
    from tests.rag.test_rerank import _tiny_model

    reg = models.install_builtin(enc_app, "all-minilm-l6-v2")
    texts = ["Hotel rooms are refunded up to 500 CNY a night.", "员工出差住宿费每晚不超过500元。"]
    try:
        emb = kbs._embedder(enc_app, reg.version.id)
        plain = EmbeddingEngine.from_model_dir(get_entry("all-minilm-l6-v2").locate())
        assert (emb.engine.embed_sync(texts)[0] == plain.embed_sync(texts)[0]).all()
        plain.close()
    finally:
        kbs.clear_caches()

    ranker_src = _tiny_model(tmp_path / "ce", 1)
    models.register(enc_app, "ce", str(ranker_src), kind="other")
    ranker_dir = models.checkout(enc_app, "ce", weights_in_memory=True)
    assert pretrained.is_sealed(ranker_dir)
    got = Reranker.load(ranker_dir).score("hotel", texts)
    assert (got == Reranker.load(ranker_src).score("hotel", texts)).all()
    assert base_weights(plaintext_weights(sealed.private_dir())) == []
    assert base_weights(plaintext_weights(enc_app.settings.home)) == []


def test_merge_folds_the_adapter_into_the_sealed_base(enc_app: App, tmp_path: Path) -> None:
    """A fine-tune of a sealed base with ``merge`` reloads the base from its pointers and folds the
    adapter in exactly as from a plaintext base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from onebox.train.sft import run_sft

    plain = make_tiny_model(tmp_path / "tiny")
    models.register(enc_app, "tiny", str(plain), kind="chat")
    datasets.import_file(enc_app, _chats(tmp_path / "chats.jsonl"), "chats")
    base_dir = models.checkout(enc_app, "tiny", weights_in_memory=True)
    train = datasets.split_path(enc_app, "chats", "train", tmp_path / "inputs")
    cfg = SFTConfig(max_seq_len=64, micro_batch_size=2, precision="fp32", lr=1e-2, max_steps=2, merge=True)
    result = run_sft(base_dir, train, None, tmp_path / "run", cfg)
    assert result.adapter_dir is not None and result.model_dir is not None
    with torch.no_grad():
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(plain), result.adapter_dir)
        got = AutoModelForCausalLM.from_pretrained(result.model_dir)(PROMPT).logits
        assert torch.allclose(got, want.merge_and_unload()(PROMPT).logits, atol=1e-5)
    assert base_weights(plaintext_weights(sealed.private_dir())) == []


@pytest.mark.slow  # ~25 s: two ranks start torch on a 2-core box
def test_torchrun_ranks_open_the_store_themselves(
    enc_app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two torchrun ranks read the sealed base and sealed data by opening the worker's blob store
    from the ONEBOX_* environment (as the executor sets it), and follow the one-process run."""
    from onebox.jobs.executor import _settings_env
    from onebox.train.launch import run_sft_distributed
    from onebox.train.sft import SFTHooks, run_sft

    models.register(enc_app, "tiny", str(make_tiny_model(tmp_path / "tiny")), kind="chat")
    datasets.import_file(enc_app, _chats(tmp_path / "chats.jsonl", 40), "chats")
    base_dir = models.checkout(enc_app, "tiny", weights_in_memory=True)
    train = datasets.split_path(enc_app, "chats", "train", tmp_path / "inputs")
    assert pretrained.is_sealed(base_dir) and sealed.pointer_digest(train) is not None
    common = dict(max_seq_len=64, micro_batch_size=2, precision="fp32", lr=1e-2, max_steps=4, save_every=4)

    single: dict[int, float] = {}
    run_sft(
        base_dir,
        train,
        None,
        tmp_path / "one",
        SFTConfig(**common, grad_accum=2),
        SFTHooks(on_step=lambda s, t, m: single.__setitem__(s, m["loss"])),
    )
    for name, value in _settings_env(enc_app.settings).items():
        monkeypatch.setenv(name, value)
    multi: dict[int, float] = {}
    two = run_sft_distributed(
        base_dir,
        train,
        None,
        tmp_path / "two",
        SFTConfig(**common, grad_accum=1, nproc=2),
        SFTHooks(on_step=lambda s, t, m: multi.__setitem__(s, m["loss"])),
    )
    assert two.metrics["processes"] == 2 and sorted(multi) == sorted(single)
    for step, loss in single.items():
        assert multi[step] == pytest.approx(loss, rel=1e-4), step


def test_a_rank_without_the_store_settings_says_so(tmp_path: Path, enc_app: App) -> None:
    models.register(enc_app, "tiny", str(make_tiny_model(tmp_path / "tiny")), kind="chat")
    base_dir = models.checkout(enc_app, "tiny", weights_in_memory=True)
    plain_files = [base_dir / "config.json", None]
    assert ensure_reader(plain_files) is None  # nothing sealed: nothing opened
    with pytest.raises(ConfigError, match="names no master key"):
        ensure_reader(pretrained.checkpoint_files(base_dir), Settings(home=tmp_path / "other"))
    store = ensure_reader(pretrained.checkpoint_files(base_dir), enc_app.settings)
    assert store is not None and store.private
    assert pretrained.load_tensors(base_dir / pretrained.SAFETENSORS)
