"""A tiny random Llama *with* a byte-level tokenizer and a ChatML template, so chat masking,
perplexity and batched generation are tested in milliseconds without the built-in model.

Every byte is one token (ids 0-255), so a text's token count is its UTF-8 byte length; that
makes assistant-only token counts computable by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onebox.evaluate.chat import FALLBACK_CHAT_TEMPLATE
from tests.byte_bpe import bytes_to_unicode

SPECIALS = ("<|im_start|>", "<|im_end|>", "<|pad|>")
IM_START, IM_END, PAD = 256, 257, 258


def _byte_level_tokenizer():  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    byte_to_char = {b: c for b, c in zip(range(256), bytes_to_unicode(), strict=True)}
    assert set(byte_to_char.values()) == set(alphabet)
    vocab = {byte_to_char[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    return tok


@pytest.fixture(autouse=True)
def one_torch_thread():  # type: ignore[no-untyped-def]
    """Run on one thread: on a busy 2-core box, two OpenMP threads spinning at barriers while the
    other test processes hold the cores made the SmolLM2 tests 20x slower; one thread is immune."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama (vocab 259) with a byte-level tokenizer and ChatML template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-chat")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_tokenizer(),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
    )
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    assert tokenizer.convert_tokens_to_ids(list(SPECIALS)) == [IM_START, IM_END, PAD]
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=259,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=IM_START,
        eos_token_id=IM_END,
        pad_token_id=PAD,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


@pytest.fixture
def write_jsonl(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write rows (dicts, or raw strings for broken lines) as a JSONL file in tmp_path."""

    def write(rows: list, name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return path

    return write
