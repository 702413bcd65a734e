"""Fixtures for the serving layer: the real SmolLM2 tokenizer, a byte-level one, the fake engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.serve.fakes import byte_tokenizer


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir: Path) -> Any:
    from onebox.evaluate.loading import load_tokenizer

    return load_tokenizer(smollm2_dir)


@pytest.fixture(scope="session")
def byte_tok() -> Any:
    return byte_tokenizer()


@pytest.fixture(scope="session")
def sentencepiece_tokenizer() -> Any:
    """A Llama-2-style tokenizer (Metaspace, byte fallback) built in memory: Chinese falls back
    to <0xNN> byte tokens, and decoding strips the leading space of the first token."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in ["▁", "▁Hello", "▁world", "▁the", "▁cat", "!", ",", "▁", "H", "e", "l", "o", "▁a"]:
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
