"""The engine requests behind one API request: per-choice detokenization and stop strings, and
the merge of n choices (and several prompts) into one stream of deltas.

Each choice is one engine request. ``EngineRun.start`` submits them all and waits for each first
output, so admission errors (overload, prompt too long) surface before a response is committed;
``EngineRun.close`` (always called, also on cancellation) closes every engine iterator, which
aborts whatever still runs: a client that went away frees its KV slots at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from onebox.engine.protocol import TextEngine
from onebox.engine.types import RequestOutput, SamplingParams, TokenLogprob
from onebox.serve.detokenize import IncrementalDetokenizer
from onebox.serve.stops import StopMatcher


@dataclass
class Prompt:
    token_ids: list[int]
    text: str | None = None
    """The prompt as text (for ``echo``); None for token-id prompts until needed."""


@dataclass
class TokenInfo:
    token_id: int
    logprob: TokenLogprob
    offset: int
    """Characters of output text before this token (``text_offset``)."""


@dataclass
class ChoiceDelta:
    """What one engine step added to one choice, after detokenization and stop strings."""

    index: int
    text: str
    tokens: list[TokenInfo] = field(default_factory=list)
    finish_reason: str | None = None


class Choice:
    """One engine request: its detokenizer, stop matcher and counters."""

    def __init__(
        self,
        index: int,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams,
        stops: Sequence[str],
        tokenizer: Any,
    ) -> None:
        self.index = index
        self.request_id = request_id
        self.prompt = prompt
        self.params = params
        self.detok = IncrementalDetokenizer(tokenizer, prompt.token_ids)
        self.stops = StopMatcher(stops) if stops else None
        self.iterator: AsyncIterator[RequestOutput] | None = None
        self.num_tokens = 0
        self.done = False
        self.finish_reason: str | None = None
        self.text: list[str] = []
        self.tokens: list[TokenInfo] = []

    def process(self, out: RequestOutput) -> ChoiceDelta:
        pieces: list[str] = []
        infos: list[TokenInfo] = []
        lps = out.logprobs or []
        want_lp = self.params.logprobs is not None
        for i, tid in enumerate(out.new_token_ids):
            offset = len(self.detok.text)
            piece = self.detok.add(tid)
            self.num_tokens += 1
            if want_lp and i < len(lps):
                infos.append(TokenInfo(tid, lps[i], offset))
            if self.stops is not None:
                piece, stopped = self.stops.feed(piece)
                pieces.append(piece)
                if stopped:
                    self.done, self.finish_reason = True, "stop"
                    break
            else:
                pieces.append(piece)
        if out.finished and not self.done:
            tail = self.detok.flush()
            stopped = False
            if self.stops is not None:
                tail, stopped = self.stops.feed(tail)
                if not stopped:
                    tail += self.stops.flush()
            pieces.append(tail)
            self.done = True
            self.finish_reason = "stop" if stopped else (out.finish_reason or "stop")
        delta = ChoiceDelta(self.index, "".join(pieces), infos, self.finish_reason if self.done else None)
        self.text.append(delta.text)
        self.tokens.extend(infos)
        return delta


async def _first_output(ch: Choice) -> RequestOutput:
    assert ch.iterator is not None
    try:
        return await anext(ch.iterator)
    except StopAsyncIteration:
        return RequestOutput(ch.request_id, [], True, "abort")


async def _aclose(iterator: Any) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


class EngineRun:
    """The engine requests behind one API request, merged into one stream of :class:`ChoiceDelta`.

    ``start`` submits every request and waits for each one's first output, so admission errors
    (overload, prompt too long) are raised before the caller commits to a response. ``close``
    (always called, also on cancellation) closes every engine iterator, which aborts the
    requests still running: a client that went away frees its KV slots at once.
    """

    def __init__(self, engine: TextEngine, choices: list[Choice], adapter: str | None) -> None:
        self.engine = engine
        self.choices = choices
        self.adapter = adapter
        self._first: list[RequestOutput] = []
        self._pumps: list[asyncio.Task[None]] = []
        self._tasks: list[asyncio.Task[RequestOutput]] = []

    async def start(self) -> None:
        try:
            for ch in self.choices:
                ch.iterator = aiter(
                    self.engine.generate(ch.request_id, ch.prompt.token_ids, ch.params, self.adapter)
                )
            if len(self.choices) == 1:
                self._first = [await _first_output(self.choices[0])]
                return
            # All at once, so the engine batches their prefills.
            self._tasks = [asyncio.create_task(_first_output(ch)) for ch in self.choices]
            results = await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            self._first = results  # type: ignore[assignment]
        except BaseException:
            await self.close()
            raise

    async def deltas(self) -> AsyncIterator[ChoiceDelta]:
        """Every choice's deltas, in arrival order; ends when all choices are done."""
        pending: list[Choice] = []
        for ch, out in zip(self.choices, self._first, strict=True):
            yield self._process(ch, out)
            if not ch.done:
                pending.append(ch)
        if len(pending) == 1:  # the common case: no tasks, no queue
            ch = pending[0]
            assert ch.iterator is not None
            async for out in ch.iterator:
                yield self._process(ch, out)
                if ch.done:
                    break
            if not ch.done:  # the engine ended the stream without saying it finished
                yield self._process(ch, RequestOutput(ch.request_id, [], True, "abort"))
            return
        queue: asyncio.Queue[tuple[Choice, RequestOutput | None, BaseException | None]] = asyncio.Queue()
        self._pumps = [asyncio.create_task(self._pump(ch, queue)) for ch in pending]
        tasks = dict(zip((id(ch) for ch in pending), self._pumps, strict=True))
        active = len(pending)
        while active:
            ch, out, exc = await queue.get()
            if exc is not None:
                raise exc
            if ch.done:
                continue
            if out is None:
                out = RequestOutput(ch.request_id, [], True, "abort")
            yield self._process(ch, out)
            if ch.done:
                active -= 1
                tasks[id(ch)].cancel()

    def _process(self, ch: Choice, out: RequestOutput) -> ChoiceDelta:
        was_done = ch.done
        delta = ch.process(out)
        if ch.done and not was_done and not out.finished:
            self.engine.abort(ch.request_id)  # a stop string ended it; free the slot now
        return delta

    @staticmethod
    async def _pump(
        ch: Choice, queue: asyncio.Queue[tuple[Choice, RequestOutput | None, BaseException | None]]
    ) -> None:
        assert ch.iterator is not None
        try:
            async for out in ch.iterator:
                queue.put_nowait((ch, out, None))
                if out.finished:
                    return
            queue.put_nowait((ch, None, None))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            queue.put_nowait((ch, None, exc))
        finally:
            await _aclose(ch.iterator)

    async def close(self) -> None:
        tasks = [*self._tasks, *self._pumps]
        for task in tasks:
            task.cancel()
        if tasks:  # wait until none of them is inside an iterator, so the iterators can be closed
            await asyncio.gather(*tasks, return_exceptions=True)
        for ch in self.choices:
            if ch.iterator is not None:
                await _aclose(ch.iterator)
