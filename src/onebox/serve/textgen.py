"""Chat and text completions on top of a token-level engine: the OpenAI semantics live here.

One :class:`TextGenerationService` per deployment replica holds the engine, the tokenizer and the
chat template. It validates a request against the engine's context, turns ``n`` choices (and
several prompts) into separate engine requests, merges their outputs into one response or one
stream, detokenizes incrementally, applies stop strings (aborting the engine request at once),
and counts usage. Admission errors (overload: 429) surface before any byte of a stream is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onebox.engine.protocol import TextEngine
from onebox.engine.types import EngineStats, RequestOutput, SamplingParams, TokenLogprob
from onebox.errors import InvalidInputError, NotFoundError, OneboxError, Problem
from onebox.evaluate.chat import FALLBACK_CHAT_TEMPLATE
from onebox.serve.detokenize import IncrementalDetokenizer, TokenBytes
from onebox.serve.protocol import ChatCompletionRequest, CompletionRequest, SamplingRequest, model_card
from onebox.serve.stops import StopMatcher


@dataclass
class _Prompt:
    token_ids: list[int]
    text: str | None = None
    """The prompt as text (for ``echo``); None for token-id prompts until needed."""


@dataclass
class _TokenInfo:
    token_id: int
    logprob: TokenLogprob
    offset: int
    """Characters of output text before this token (``text_offset``)."""


@dataclass
class ChoiceDelta:
    """What one engine step added to one choice, after detokenization and stop strings."""

    index: int
    text: str
    tokens: list[_TokenInfo] = field(default_factory=list)
    finish_reason: str | None = None


class _Choice:
    """One engine request: its detokenizer, stop matcher and counters."""

    def __init__(
        self,
        index: int,
        request_id: str,
        prompt: _Prompt,
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
        self.tokens: list[_TokenInfo] = []

    def process(self, out: RequestOutput) -> ChoiceDelta:
        pieces: list[str] = []
        infos: list[_TokenInfo] = []
        lps = out.logprobs or []
        want_lp = self.params.logprobs is not None
        for i, tid in enumerate(out.new_token_ids):
            offset = len(self.detok.text)
            piece = self.detok.add(tid)
            self.num_tokens += 1
            if want_lp and i < len(lps):
                infos.append(_TokenInfo(tid, lps[i], offset))
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


async def _first_output(ch: _Choice) -> RequestOutput:
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


class _Run:
    """The engine requests behind one API request, merged into one stream of :class:`ChoiceDelta`.

    ``start`` submits every request and waits for each one's first output, so admission errors
    (overload, prompt too long) are raised before the caller commits to a response. ``close``
    (always called, also on cancellation) closes every engine iterator, which aborts the
    requests still running: a client that went away frees its KV slots at once.
    """

    def __init__(self, engine: TextEngine, choices: list[_Choice], adapter: str | None) -> None:
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
        pending: list[_Choice] = []
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
        queue: asyncio.Queue[tuple[_Choice, RequestOutput | None, BaseException | None]] = asyncio.Queue()
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

    def _process(self, ch: _Choice, out: RequestOutput) -> ChoiceDelta:
        was_done = ch.done
        delta = ch.process(out)
        if ch.done and not was_done and not out.finished:
            self.engine.abort(ch.request_id)  # a stop string ended it; free the slot now
        return delta

    @staticmethod
    async def _pump(
        ch: _Choice, queue: asyncio.Queue[tuple[_Choice, RequestOutput | None, BaseException | None]]
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


class TextGenerationService:
    """Chat and completions for one deployment: the base model under the deployment's name,
    and each loaded LoRA adapter under its own name."""

    def __init__(
        self,
        deployment: str,
        engine: TextEngine,
        tokenizer: Any,
        *,
        chat_template: str | None = None,
    ) -> None:
        self.deployment = deployment
        self.engine = engine
        self.tokenizer = tokenizer
        self.chat_template = chat_template or (
            None if getattr(tokenizer, "chat_template", None) else FALLBACK_CHAT_TEMPLATE
        )
        self.created = int(time.time())
        self._token_bytes = TokenBytes(tokenizer)
        self._vocab_size = len(tokenizer)

    # ---- models and adapters -------------------------------------------------------------

    def model_names(self) -> list[str]:
        return [self.deployment, *self.engine.adapters()]

    def model_cards(self) -> list[dict[str, Any]]:
        return [
            model_card(n, root=self.deployment, created=self.created, max_model_len=self.engine.max_model_len)
            for n in self.model_names()
        ]

    def serves(self, model: str) -> bool:
        return model == self.deployment or model in self.engine.adapters()

    def resolve_adapter(self, model: str) -> str | None:
        """The adapter a model name means (None: the base), or 404 in OpenAI's words."""
        if model == self.deployment:
            return None
        if model in self.engine.adapters():
            return model
        raise NotFoundError(
            f"The model `{model}` does not exist",
            problems=[Problem("model", f"not served here; models: {', '.join(self.model_names())}")],
            openai_code="model_not_found",
        )

    def load_adapter(self, name: str, path: Path) -> None:
        if name == self.deployment:
            raise InvalidInputError(
                "adapter name clashes with the deployment",
                problems=[Problem("name", f"{name!r} is the base model's name; choose another")],
            )
        if not Path(path).is_dir():
            raise InvalidInputError(
                "adapter path is not a directory", problems=[Problem("path", f"{path} does not exist")]
            )
        self.engine.load_adapter(name, Path(path))

    def unload_adapter(self, name: str) -> None:
        self.engine.unload_adapter(name)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    async def shutdown(self) -> None:
        await self.engine.shutdown()

    # ---- chat ----------------------------------------------------------------------------

    async def chat(self, req: ChatCompletionRequest) -> dict[str, Any]:
        """A whole ``chat.completion`` response."""
        run, rid, prompts = await self._start_chat(req)
        try:
            async for _ in run.deltas():
                pass
        finally:
            await run.close()
        choices = [
            {
                "index": ch.index,
                "message": {"role": "assistant", "content": "".join(ch.text)},
                "logprobs": self._chat_logprobs(ch.tokens) if req.logprobs else None,
                "finish_reason": ch.finish_reason,
            }
            for ch in run.choices
        ]
        return {
            "id": rid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": choices,
            "usage": _usage(prompts, run.choices),
            "system_fingerprint": None,
        }

    async def chat_stream(self, req: ChatCompletionRequest) -> AsyncIterator[dict[str, Any]]:
        """Admit the request (raising 4xx errors now), then return its ``chat.completion.chunk``s."""
        run, rid, prompts = await self._start_chat(req)
        return self._chat_chunks(req, run, rid, prompts)

    async def _chat_chunks(
        self, req: ChatCompletionRequest, run: _Run, rid: str, prompts: list[_Prompt]
    ) -> AsyncIterator[dict[str, Any]]:
        created = int(time.time())
        usage_field = {"usage": None} if req.include_usage else {}

        def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": req.model,
                "system_fingerprint": None,
                "choices": choices,
                **usage_field,
            }

        try:
            for ch in run.choices:
                yield chunk(
                    [
                        {
                            "index": ch.index,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            async for d in run.deltas():
                if not d.text and not d.tokens and d.finish_reason is None:
                    continue
                yield chunk(
                    [
                        {
                            "index": d.index,
                            "delta": {"content": d.text} if d.text else {},
                            "logprobs": self._chat_logprobs(d.tokens) if req.logprobs else None,
                            "finish_reason": d.finish_reason,
                        }
                    ]
                )
            if req.include_usage:
                yield {**chunk([]), "usage": _usage(prompts, run.choices)}
        finally:
            await run.close()

    async def _start_chat(self, req: ChatCompletionRequest) -> tuple[_Run, str, list[_Prompt]]:
        adapter = self.resolve_adapter(req.model)
        prompt = _Prompt(self._chat_prompt_ids(req))
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        max_tokens = self._fit(len(prompt.token_ids), req.output_limit, "messages", param)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        run = self._plan(req, rid, [prompt], max_tokens, req.num_logprobs, adapter)
        await run.start()
        return run, rid, [prompt]

    def _chat_prompt_ids(self, req: ChatCompletionRequest) -> list[int]:
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages
        ]
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, chat_template=self.chat_template
            )
        except Exception as exc:  # jinja raises TemplateError for conversations it refuses
            raise InvalidInputError(
                "the chat template rejected the messages", problems=[Problem("messages", str(exc))]
            ) from exc
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _chat_logprobs(self, tokens: list[_TokenInfo]) -> dict[str, Any]:
        content = []
        for t in tokens:
            text, raw = self._token_bytes(t.token_id)
            top = []
            for tid, lp in t.logprob.top:
                ttext, traw = self._token_bytes(tid)
                top.append({"token": ttext, "logprob": _finite(lp), "bytes": traw})
            content.append(
                {"token": text, "logprob": _finite(t.logprob.logprob), "bytes": raw, "top_logprobs": top}
            )
        return {"content": content, "refusal": None}

    # ---- completions ---------------------------------------------------------------------

    async def completion(self, req: CompletionRequest) -> dict[str, Any]:
        """A whole ``text_completion`` response."""
        run, rid, prompts = await self._start_completion(req)
        try:
            async for _ in run.deltas():
                pass
        finally:
            await run.close()
        choices = []
        for ch in run.choices:
            text = "".join(ch.text)
            if req.echo:
                text = self._prompt_text(ch.prompt) + text
            choices.append(
                {
                    "index": ch.index,
                    "text": text,
                    "logprobs": self._completion_logprobs(ch.tokens) if req.logprobs is not None else None,
                    "finish_reason": ch.finish_reason,
                }
            )
        return {
            "id": rid,
            "object": "text_completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": choices,
            "usage": _usage(prompts, run.choices),
            "system_fingerprint": None,
        }

    async def completion_stream(self, req: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
        """Admit the request (raising 4xx errors now), then return its ``text_completion`` chunks."""
        run, rid, prompts = await self._start_completion(req)
        return self._completion_chunks(req, run, rid, prompts)

    async def _completion_chunks(
        self, req: CompletionRequest, run: _Run, rid: str, prompts: list[_Prompt]
    ) -> AsyncIterator[dict[str, Any]]:
        created = int(time.time())
        usage_field = {"usage": None} if req.include_usage else {}

        def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": req.model,
                "system_fingerprint": None,
                "choices": choices,
                **usage_field,
            }

        try:
            if req.echo:
                for ch in run.choices:
                    text = self._prompt_text(ch.prompt)
                    yield chunk([{"index": ch.index, "text": text, "logprobs": None, "finish_reason": None}])
            async for d in run.deltas():
                if not d.text and not d.tokens and d.finish_reason is None:
                    continue
                lp = self._completion_logprobs(d.tokens) if req.logprobs is not None else None
                yield chunk(
                    [{"index": d.index, "text": d.text, "logprobs": lp, "finish_reason": d.finish_reason}]
                )
            if req.include_usage:
                yield {**chunk([]), "usage": _usage(prompts, run.choices)}
        finally:
            await run.close()

    async def _start_completion(self, req: CompletionRequest) -> tuple[_Run, str, list[_Prompt]]:
        adapter = self.resolve_adapter(req.model)
        prompts = [self._completion_prompt(p, i, len(req.prompts())) for i, p in enumerate(req.prompts())]
        explicit = "max_tokens" in req.model_fields_set
        limits = [
            self._fit(len(p.token_ids), req.max_tokens if explicit else None, "prompt", "max_tokens")
            for p in prompts
        ]
        if not explicit:  # OpenAI's default of 16, shortened where the context has less room
            limits = [min(req.max_tokens or 16, m) for m in limits]
        rid = f"cmpl-{uuid.uuid4().hex}"
        run = self._plan(req, rid, prompts, limits, req.logprobs, adapter)
        await run.start()
        return run, rid, prompts

    def _completion_prompt(self, prompt: str | list[int], i: int, count: int) -> _Prompt:
        field_name = "prompt" if count == 1 else f"prompt.{i}"
        if isinstance(prompt, str):
            ids = list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
            if not ids:
                raise InvalidInputError(
                    "empty prompt", problems=[Problem(field_name, "tokenizes to nothing")]
                )
            return _Prompt(ids, prompt)
        bad = [t for t in prompt if t >= self._vocab_size]
        if bad:
            raise InvalidInputError(
                "token id out of range",
                problems=[
                    Problem(
                        field_name, f"token id {bad[0]} is not below the vocabulary size {self._vocab_size}"
                    )
                ],
            )
        return _Prompt(list(prompt))

    def _prompt_text(self, prompt: _Prompt) -> str:
        if prompt.text is None:
            prompt.text = self.tokenizer.decode(prompt.token_ids, skip_special_tokens=False)
        return prompt.text

    def _completion_logprobs(self, tokens: list[_TokenInfo]) -> dict[str, Any]:
        out: dict[str, list[Any]] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for t in tokens:
            text, _ = self._token_bytes(t.token_id)
            out["tokens"].append(text)
            out["token_logprobs"].append(_finite(t.logprob.logprob))
            top = {self._token_bytes(tid)[0]: _finite(lp) for tid, lp in t.logprob.top}
            top.setdefault(text, _finite(t.logprob.logprob))  # OpenAI: the chosen token is always listed
            out["top_logprobs"].append(top)
            out["text_offset"].append(t.offset)
        return out

    # ---- shared --------------------------------------------------------------------------

    def _fit(self, n_prompt: int, requested: int | None, prompt_param: str, max_param: str) -> int:
        """Check prompt + output against the context; the default output is the rest of it."""
        limit = self.engine.max_model_len
        if n_prompt >= limit:
            raise InvalidInputError(
                f"This model's maximum context length is {limit} tokens, but the prompt has {n_prompt} "
                "tokens, which leaves no room for output. Shorten the prompt.",
                problems=[Problem(prompt_param, f"{n_prompt} tokens; at most {limit - 1} fit")],
            )
        if requested is None:
            return limit - n_prompt
        if n_prompt + requested > limit:
            raise InvalidInputError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{n_prompt + requested} tokens ({n_prompt} in the prompt, {requested} for the completion). "
                f"Reduce the prompt or {max_param}.",
                problems=[Problem(max_param, f"at most {limit - n_prompt} fit after this prompt")],
            )
        return requested

    def _plan(
        self,
        req: SamplingRequest,
        rid: str,
        prompts: list[_Prompt],
        max_tokens: int | list[int],
        logprobs: int | None,
        adapter: str | None,
    ) -> _Run:
        limits = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
        choices = []
        for p, (prompt, limit) in enumerate(zip(prompts, limits, strict=True)):
            for j in range(req.n):
                index = p * req.n + j
                params = self._params(req, limit, logprobs, None if req.seed is None else req.seed + index)
                choices.append(
                    _Choice(index, f"{rid}-{index}", prompt, params, req.stop_strings, self.tokenizer)
                )
        return _Run(self.engine, choices, adapter)

    @staticmethod
    def _params(
        req: SamplingRequest, max_tokens: int, logprobs: int | None, seed: int | None
    ) -> SamplingParams:
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=req.temperature,
                top_p=req.top_p,
                top_k=req.top_k,
                min_p=req.min_p,
                repetition_penalty=req.repetition_penalty,
                presence_penalty=req.presence_penalty,
                frequency_penalty=req.frequency_penalty,
                seed=seed,
                stop_token_ids=tuple(req.stop_token_ids or ()),
                ignore_eos=req.ignore_eos,
                min_tokens=req.min_tokens,
                logprobs=logprobs,
            )
        except OneboxError as exc:
            if isinstance(req, CompletionRequest):  # completions call it ``logprobs``
                exc.problems = [
                    Problem("logprobs", p.reason) if p.field == "top_logprobs" else p for p in exc.problems
                ]
            raise


def _finite(logprob: float) -> float:
    """JSON has no -inf; OpenAI reports impossible tokens as -9999."""
    return logprob if math.isfinite(logprob) else -9999.0


def _usage(prompts: list[_Prompt], choices: list[_Choice]) -> dict[str, int]:
    """Each prompt counts once, however many choices it had."""
    prompt_tokens = sum(len(p.token_ids) for p in prompts)
    completion_tokens = sum(ch.num_tokens for ch in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def build_text_service(deployment: str, model_dir: Path, engine_config: Any) -> TextGenerationService:
    """Load the engine and tokenizer of ``model_dir`` and wrap them for one deployment."""
    from onebox.engine import build_engine
    from onebox.evaluate.loading import load_tokenizer

    tokenizer = load_tokenizer(Path(model_dir))
    if not getattr(tokenizer, "is_fast", True):
        raise InvalidInputError(
            f"{model_dir} has only a slow tokenizer; serving needs a fast one (tokenizer.json)",
            problems=[Problem("model", "no tokenizer.json")],
        )
    engine = build_engine(Path(model_dir), engine_config)
    return TextGenerationService(deployment, engine, tokenizer)
