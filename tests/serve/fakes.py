"""A fake TextEngine (echoes, scripted replies, overload, abort) and a byte-level tokenizer.

Every byte is one token (ids 0-255), so a Chinese character or an emoji is always split over
several tokens: the hard case for streaming detokenization, for free.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from onebox.engine.types import EngineStats, RequestOutput, SamplingParams, TokenLogprob
from onebox.errors import InvalidInputError, NotFoundError, OverloadedError, Problem
from onebox.evaluate.chat import FALLBACK_CHAT_TEMPLATE
from tests.byte_bpe import bytes_to_unicode

IM_START, IM_END, PAD = 256, 257, 258


def byte_tokenizer() -> Any:
    """A fast tokenizer with one token per byte, ChatML specials and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = bytes_to_unicode()
    tok = Tokenizer(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>", "<|pad|>"])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|pad|>"
    )
    hf.chat_template = FALLBACK_CHAT_TEMPLATE
    return hf


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


class FakeEngine:
    """Satisfies ``TextEngine``. Replies with ``reply(prompt_ids)`` (default: echo the prompt,
    cyclically) ``tokens_per_step`` tokens at a time, ``delay`` seconds apart."""

    def __init__(
        self,
        *,
        max_model_len: int = 256,
        reply: Callable[[list[int]], list[int]] | None = None,
        tokens_per_step: int = 1,
        delay: float = 0.0,
    ) -> None:
        self.max_model_len = max_model_len
        self.eos_token_ids = frozenset({IM_END})
        self.reply = reply
        self.tokens_per_step = tokens_per_step
        self.delay = delay
        self.overloaded = False
        self.fail_after: int | None = None
        """Raise a RuntimeError (an engine crash) once this many tokens were produced."""
        self.requests: list[tuple[str, list[int], SamplingParams, str | None]] = []
        self.running: set[str] = set()
        self.closed_early: set[str] = set()
        self.abort_calls: list[str] = []
        self._aborted: set[str] = set()
        self._adapters: dict[str, Path] = {}
        self.shut_down = False

    def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, adapter: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        return self._generate(request_id, list(prompt_token_ids), params, adapter)

    async def _generate(
        self, rid: str, prompt: list[int], params: SamplingParams, adapter: str | None
    ) -> AsyncIterator[RequestOutput]:
        if self.overloaded:
            raise OverloadedError("the request queue is full", retry_after=2.5)
        if adapter is not None and adapter not in self._adapters:
            raise InvalidInputError("unknown adapter", problems=[Problem("model", adapter)])
        if len(prompt) + params.max_tokens > self.max_model_len:
            raise InvalidInputError("too long", problems=[Problem("max_tokens", "does not fit")])
        self.requests.append((rid, prompt, params, adapter))
        self.running.add(rid)
        script = self.reply(prompt) if self.reply else None
        finished = False
        try:
            produced = 0
            while True:
                await asyncio.sleep(self.delay)
                if self.fail_after is not None and produced >= self.fail_after:
                    raise RuntimeError("engine step failed")
                if rid in self._aborted:
                    finished = True
                    yield RequestOutput(rid, [], True, "abort", None, len(prompt), produced)
                    return
                new: list[int] = []
                reason = None
                for _ in range(self.tokens_per_step):
                    if script is not None:
                        if produced >= len(script):
                            reason = "stop"  # script exhausted: as if EOS (not included)
                            break
                        tok = script[produced]
                    else:
                        tok = prompt[produced % len(prompt)]
                    if tok in self.eos_token_ids and not params.ignore_eos and produced >= params.min_tokens:
                        reason = "stop"
                        break
                    if tok in params.stop_token_ids and produced >= params.min_tokens:
                        reason = "stop"
                        break
                    new.append(tok)
                    produced += 1
                    if produced >= params.max_tokens:
                        reason = "length"
                        break
                lps = None
                if params.logprobs is not None:
                    lps = [
                        TokenLogprob(t, -0.25, tuple((t + k, -0.25 - k) for k in range(params.logprobs)))
                        for t in new
                    ]
                finished = reason is not None
                yield RequestOutput(rid, new, finished, reason, lps, len(prompt), produced)
                if finished:
                    return
        finally:
            self.running.discard(rid)
            if not finished:
                self.closed_early.add(rid)

    def abort(self, request_id: str) -> None:
        self.abort_calls.append(request_id)
        if request_id in self.running:
            self._aborted.add(request_id)

    def load_adapter(self, name: str, path: Path) -> None:
        if not (Path(path) / "adapter_config.json").is_file():
            raise InvalidInputError("not an adapter", problems=[Problem("path", "no adapter_config.json")])
        self._adapters[name] = Path(path)

    def unload_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise NotFoundError(f"no adapter {name!r}", problems=[Problem("name", "not loaded")])
        del self._adapters[name]

    def adapters(self) -> list[str]:
        return sorted(self._adapters)

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self.running),
            max_running=8,
            kv_tokens_used=sum(1 for _ in self.running) * 10,
            kv_tokens_total=1000,
            adapters=self.adapters(),
        )

    async def shutdown(self) -> None:
        self.shut_down = True
