"""Incremental detokenization: token ids arrive one at a time, text leaves as soon as it is stable.

Decoding each token alone is wrong twice over: byte-level BPE (GPT-2, SmolLM2, Llama 3, Qwen) and
sentencepiece byte fallback split one Chinese character or emoji over several tokens, and
sentencepiece drops the leading space of the first token of whatever it decodes. Re-decoding the
whole output at every step is right but quadratic. So, like vLLM, we decode a small sliding
window twice: ``prefix`` (tokens already emitted, for context) and ``prefix + new``; the new text
is the difference. While the window ends in an incomplete UTF-8 sequence (U+FFFD), the text is held
back until the next token completes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

REPLACEMENT = "\ufffd"
PROMPT_CONTEXT = 5
"""Prompt tokens decoded before the output, so the first output token gets its leading space right."""
MAX_HELD_TOKENS = 8
"""A UTF-8 character has at most 4 bytes; if more tokens than this still end in an incomplete
sequence, the bytes are genuinely invalid and are emitted (as U+FFFD) rather than held forever."""
_TRIM_AT = 256


def make_decode(tokenizer: Any, *, skip_special_tokens: bool = True) -> Callable[[list[int]], str]:
    """A fast ``ids -> text`` function: the Rust tokenizer directly when there is one (no Python
    overhead, no ``clean_up_tokenization_spaces`` rewriting text that was already streamed)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens)
    return lambda ids: tokenizer.decode(
        ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
    )


class IncrementalDetokenizer:
    """Turns a stream of output token ids into text deltas that never end mid-character.

    ``add`` costs two decodes of a window of a few tokens, whatever the output length.
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_token_ids: Sequence[int] = (),
        *,
        skip_special_tokens: bool = True,
        decode: Callable[[list[int]], str] | None = None,
    ) -> None:
        self._decode = decode or make_decode(tokenizer, skip_special_tokens=skip_special_tokens)
        self._ids: list[int] = list(prompt_token_ids[-PROMPT_CONTEXT:])
        self._prefix = 0
        self._read = len(self._ids)
        self._prefix_text = self._decode(self._ids)
        self.text = ""
        """Everything emitted so far."""

    def add(self, token_id: int) -> str:
        """Append one token; return the text that became stable ('' while a character is incomplete)."""
        self._ids.append(token_id)
        window = self._ids[self._prefix :]
        new_text = self._decode(window)
        held = len(self._ids) - self._read
        if len(new_text) <= len(self._prefix_text):
            return ""  # e.g. a skipped special token
        if new_text.endswith(REPLACEMENT) and held < MAX_HELD_TOKENS:
            return ""
        return self._emit(new_text)

    def add_many(self, token_ids: Sequence[int]) -> str:
        return "".join(self.add(t) for t in token_ids)

    def flush(self) -> str:
        """At the end of the output: whatever was held back (invalid bytes show as U+FFFD)."""
        if self._read == len(self._ids):
            return ""
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) <= len(self._prefix_text):
            return ""
        return self._emit(new_text)

    def _emit(self, new_text: str) -> str:
        delta = new_text[len(self._prefix_text) :]
        self._prefix, self._read = self._read, len(self._ids)
        if self._prefix > _TRIM_AT:  # keep the id list short; only the window matters
            self._ids = self._ids[self._prefix :]
            self._read -= self._prefix
            self._prefix = 0
        self._prefix_text = self._decode(self._ids[self._prefix : self._read])
        self.text += delta
        return delta


def byte_alphabet() -> list[str]:
    """GPT-2's byte-level alphabet: the printable stand-in character of each byte, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


_BYTE_DECODER = {c: b for b, c in enumerate(byte_alphabet())}


def _decoder_kinds(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None) if backend is not None else None
    if decoder is None:
        return ""
    try:
        return json.dumps(json.loads(decoder.__getstate__()))
    except Exception:  # an exotic decoder: fall back to the generic path
        return ""


class TokenBytes:
    """Each token's own text and raw bytes, as OpenAI's ``logprobs`` report them.

    A token that holds only part of a character has no text of its own; OpenAI writes it as
    ``bytes:\\xe4\\xb8``, and ``bytes`` carries the raw bytes so clients can join them.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        kinds = _decoder_kinds(tokenizer)
        self._byte_level = '"ByteLevel"' in kinds
        self._byte_fallback = '"ByteFallback"' in kinds or '"Metaspace"' in kinds
        self._special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is None:
            raw = self._bytes(token_id)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            hit = (text, list(raw))
            self._cache[token_id] = hit
        return hit

    def _bytes(self, token_id: int) -> bytes:
        piece = self._tok.convert_ids_to_tokens(token_id)
        if piece is None:
            return b""
        if token_id in self._special:
            return piece.encode()
        if self._byte_level and all(c in _BYTE_DECODER for c in piece):
            return bytes(_BYTE_DECODER[c] for c in piece)
        if self._byte_fallback:
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                try:
                    return bytes([int(piece[3:5], 16)])
                except ValueError:
                    pass
            return piece.replace("\u2581", " ").encode()
        return self._tok.decode([token_id]).encode()
