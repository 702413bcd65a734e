"""Shared fixtures of the knowledge-base tests: the built-in MiniLM encoder, loaded once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from onebox.models.catalog import get_entry
from onebox.rag.embedding import Embedder, EmbedderConfig


@pytest.fixture(scope="session")
def minilm_embedder() -> Iterator[Embedder]:
    """The real all-MiniLM-L6-v2 in fp32 (tests compare bf16 against it), one thread."""
    emb = Embedder.load(get_entry("all-minilm-l6-v2").locate(), EmbedderConfig(dtype="float32", threads=1))
    yield emb
    emb.close()
