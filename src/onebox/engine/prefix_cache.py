"""Which token prefix each KV slot holds, so a new prompt can start from a shared prefix.

Chat traffic repeats itself at the front: the template's system prompt, a RAG instruction block,
a few-shot preamble. Recomputing those keys and values for every request is pure waste; copying
them from a slot that already holds them costs a few memory copies. Plain data, like the scheduler:
it tracks *what* the slots hold and answers matches; the runner does the copies.

A slot's content is exact, not hashed: it is ``tokens[:length]`` of the sequence that last wrote
it (token lists only ever grow, so a reference plus a length stays true), under that sequence's
LoRA adapter (an adapter changes every key and value, so prefixes only match under the same one).
A freed slot keeps its content until it is handed to a new sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_CHUNK = 16  # compare prompts this many tokens at a time (list-slice equality runs in C)


@dataclass
class _Content:
    tokens: list[int]
    length: int
    lora: Any


class PrefixCache:
    """Per-slot record of the cached prefix, with an index on the first ``min_tokens`` tokens."""

    def __init__(self, num_slots: int, min_tokens: int = 16) -> None:
        self.min_tokens = min_tokens
        self._slots: list[_Content | None] = [None] * num_slots
        self._heads: dict[tuple[int, tuple[int, ...]], set[int]] = {}
        self.hit_tokens_total = 0
        """Prompt tokens whose keys/values were copied instead of computed."""

    def _head(self, c: _Content) -> tuple[int, tuple[int, ...]] | None:
        if c.length < self.min_tokens:
            return None
        return (id(c.lora), tuple(c.tokens[: self.min_tokens]))

    def match(self, tokens: list[int], lora: Any, limit: int) -> tuple[int | None, int]:
        """The slot holding the longest prefix of ``tokens`` (at most ``limit`` of them) under
        ``lora``, and that length; ``(None, 0)`` below ``min_tokens``."""
        if limit < self.min_tokens or len(tokens) < self.min_tokens:
            return None, 0
        best, best_n = None, 0
        for slot in self._heads.get((id(lora), tuple(tokens[: self.min_tokens])), ()):
            c = self._slots[slot]
            if c is None or c.lora is not lora:
                continue
            n = _common_prefix(tokens, c.tokens, min(limit, c.length))
            if n > best_n:
                best, best_n = slot, n
        return (best, best_n) if best_n >= self.min_tokens else (None, 0)

    def assign(self, slot: int, tokens: list[int], length: int, lora: Any) -> None:
        """``slot`` now belongs to a sequence whose first ``length`` tokens are (or, after this
        step's copies, will be) in it."""
        self._unindex(slot)
        self._slots[slot] = _Content(tokens, length, lora)
        self._index(slot)

    def advance(self, slot: int, length: int) -> None:
        """The owner of ``slot`` has now computed ``length`` positions."""
        c = self._slots[slot]
        if c is None:
            return
        had_head = c.length >= self.min_tokens
        c.length = length
        if not had_head:
            self._index(slot)

    def _index(self, slot: int) -> None:
        c = self._slots[slot]
        head = self._head(c) if c is not None else None
        if head is not None:
            self._heads.setdefault(head, set()).add(slot)

    def _unindex(self, slot: int) -> None:
        c = self._slots[slot]
        head = self._head(c) if c is not None else None
        if head is not None:
            group = self._heads.get(head)
            if group is not None:
                group.discard(slot)
                if not group:
                    del self._heads[head]


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    while n + _CHUNK <= limit and a[n : n + _CHUNK] == b[n : n + _CHUNK]:
        n += _CHUNK
    while n < limit and a[n] == b[n]:
        n += 1
    return n
