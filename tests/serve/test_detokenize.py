"""Incremental detokenization: multi-byte text split over tokens never shows U+FFFD, and the
streamed text equals a one-shot decode, for byte-level BPE and sentencepiece tokenizers."""

from __future__ import annotations

from typing import Any

import pytest

from onebox.serve.detokenize import IncrementalDetokenizer, TokenBytes, make_decode

TEXTS = [
    "Hello, world! How are you today?",
    "你好，世界！今天天气很好，我们去公园散步吧。",
    "Emoji: 🌍🚀👩‍👩‍👧‍👦 and flags 🇨🇳🇫🇷 done.",
    "混合 text with 中文, emoji 😀 and code: `def f(x): return x**2`\n\tindented",
    "Ünïcödé àccents — “quotes” … ½ ∑ ∞",
]


def stream(tok: Any, ids: list[int], prompt: list[int] | None = None) -> list[str]:
    d = IncrementalDetokenizer(tok, prompt or [])
    deltas = [d.add(t) for t in ids]
    deltas.append(d.flush())
    assert "".join(deltas) == d.text
    return deltas


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_one_byte_per_token(byte_tok: Any, text: str) -> None:
    ids = list(text.encode("utf-8"))  # every multi-byte character is split over tokens
    deltas = stream(byte_tok, ids)
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_tokenizer_streams_exact_text(smollm2_tokenizer: Any, text: str) -> None:
    tok = smollm2_tokenizer
    prompt = tok("Answer in Chinese:", add_special_tokens=False)["input_ids"]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    deltas = stream(tok, ids, prompt)
    assert all("\ufffd" not in d for d in deltas), deltas
    assert "".join(deltas) == tok.decode(ids) == text
    # Some characters really are split over several tokens in this vocabulary.
    if any(ord(c) > 0x2E80 for c in text):
        assert len(ids) > len([d for d in deltas if d])


def test_smollm2_special_tokens_are_skipped(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    ids = tok("好的", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert "".join(stream(tok, ids)) == "好的"


def test_sentencepiece_byte_fallback_and_leading_space(sentencepiece_tokenizer: Any) -> None:
    tok = sentencepiece_tokenizer
    full = tok("Hello 世界 🌍 the cat!", add_special_tokens=False)["input_ids"]
    assert "<0xE4>" in tok.convert_ids_to_tokens(full)  # Chinese falls back to bytes
    split = 6  # "Hello" is the prompt, " 世界 🌍 the cat!" the output
    prompt, out = full[:split], full[split:]
    deltas = stream(tok, out, [tok.bos_token_id, *prompt])
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == " 世界 🌍 the cat!"  # the first output token keeps its space
    # With no prompt, decoding starts a text: sentencepiece drops the leading space, like decode().
    assert "".join(stream(tok, full)) == tok.decode(full) == "Hello 世界 🌍 the cat!"


def test_invalid_bytes_are_not_held_forever(byte_tok: Any) -> None:
    d = IncrementalDetokenizer(byte_tok)
    out = [d.add(0xE4) for _ in range(12)]  # lead bytes that never complete
    assert any(out), "held back beyond any UTF-8 character length"
    d2 = IncrementalDetokenizer(byte_tok)
    assert d2.add(0xE4) == "" and d2.add(0xB8) == ""
    assert d2.flush() == "\ufffd"  # cut mid-character at the end: shown, not dropped silently


def test_window_stays_small(byte_tok: Any) -> None:
    """Per-token work is a bounded window, not the whole output (no quadratic re-decoding)."""
    base = make_decode(byte_tok)
    widths: list[int] = []

    def counting(ids: list[int]) -> str:
        widths.append(len(ids))
        return base(ids)

    d = IncrementalDetokenizer(byte_tok, list(range(65, 90)), decode=counting)
    text = "流式解码 streaming 🌍 " * 200
    for t in text.encode("utf-8"):
        d.add(t)
    assert d.text == text
    assert max(widths) <= 16


def test_token_bytes_for_logprobs(smollm2_tokenizer: Any, byte_tok: Any) -> None:
    tb = TokenBytes(byte_tok)
    assert tb(ord("a")) == ("a", [97])
    assert tb(0xE4) == ("bytes:\\xe4", [0xE4])
    tok = smollm2_tokenizer
    ids = tok("你好 world", add_special_tokens=False)["input_ids"]
    tb2 = TokenBytes(tok)
    raw = b"".join(bytes(tb2(i)[1]) for i in ids)
    assert raw.decode("utf-8") == "你好 world"
    assert tb2(tok("▁hello world", add_special_tokens=False)["input_ids"][-1])[0] == " world"
