"""Chat and text completions on top of a token-level engine: the OpenAI semantics live here.

One :class:`TextGenerationService` per deployment replica holds the engine, the tokenizer and the
chat template. It validates a request against the engine's context, turns ``n`` choices (and
several prompts) into separate engine requests, merges their outputs into one response or one
stream, detokenizes incrementally, applies stop strings (aborting the engine request at once),
and counts usage. Admission errors (overload: 429) surface before any byte of a stream is sent.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from onebox.engine.config import EngineConfig
from onebox.engine.protocol import TextEngine
from onebox.engine.types import EngineStats, SamplingParams
from onebox.errors import InvalidInputError, NotFoundError, OneboxError, Problem
from onebox.evaluate.chat import FALLBACK_CHAT_TEMPLATE
from onebox.serve.choices import Choice, EngineRun, Prompt, TokenInfo
from onebox.serve.detokenize import TokenBytes
from onebox.serve.protocol import ChatCompletionRequest, CompletionRequest, SamplingRequest, model_card


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
        await _drain(run)
        choices = [
            {
                "index": ch.index,
                "message": {"role": "assistant", "content": "".join(ch.text)},
                "logprobs": self._chat_logprobs(ch.tokens) if req.logprobs else None,
                "finish_reason": ch.finish_reason,
            }
            for ch in run.choices
        ]
        return _envelope(
            rid, "chat.completion", req.model, int(time.time()), choices, usage=_usage(prompts, run.choices)
        )

    async def chat_stream(self, req: ChatCompletionRequest) -> AsyncIterator[dict[str, Any]]:
        """Admit the request (raising 4xx errors now), then return its ``chat.completion.chunk``s."""
        run, rid, prompts = await self._start_chat(req)
        return self._chat_chunks(req, run, rid, prompts)

    async def _chat_chunks(
        self, req: ChatCompletionRequest, run: EngineRun, rid: str, prompts: list[Prompt]
    ) -> AsyncIterator[dict[str, Any]]:
        created = int(time.time())
        usage_field = {"usage": None} if req.include_usage else {}

        def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
            return _envelope(rid, "chat.completion.chunk", req.model, created, choices, **usage_field)

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

    async def _start_chat(self, req: ChatCompletionRequest) -> tuple[EngineRun, str, list[Prompt]]:
        adapter = self.resolve_adapter(req.model)
        prompt = Prompt(self._chat_prompt_ids(req))
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

    def _chat_logprobs(self, tokens: list[TokenInfo]) -> dict[str, Any]:
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
        await _drain(run)
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
        return _envelope(
            rid, "text_completion", req.model, int(time.time()), choices, usage=_usage(prompts, run.choices)
        )

    async def completion_stream(self, req: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
        """Admit the request (raising 4xx errors now), then return its ``text_completion`` chunks."""
        run, rid, prompts = await self._start_completion(req)
        return self._completion_chunks(req, run, rid, prompts)

    async def _completion_chunks(
        self, req: CompletionRequest, run: EngineRun, rid: str, prompts: list[Prompt]
    ) -> AsyncIterator[dict[str, Any]]:
        created = int(time.time())
        usage_field = {"usage": None} if req.include_usage else {}

        def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
            return _envelope(rid, "text_completion", req.model, created, choices, **usage_field)

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

    async def _start_completion(self, req: CompletionRequest) -> tuple[EngineRun, str, list[Prompt]]:
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

    def _completion_prompt(self, prompt: str | list[int], i: int, count: int) -> Prompt:
        field_name = "prompt" if count == 1 else f"prompt.{i}"
        if isinstance(prompt, str):
            ids = list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
            if not ids:
                raise InvalidInputError(
                    "empty prompt", problems=[Problem(field_name, "tokenizes to nothing")]
                )
            return Prompt(ids, prompt)
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
        return Prompt(list(prompt))

    def _prompt_text(self, prompt: Prompt) -> str:
        if prompt.text is None:
            prompt.text = self.tokenizer.decode(prompt.token_ids, skip_special_tokens=False)
        return prompt.text

    def _completion_logprobs(self, tokens: list[TokenInfo]) -> dict[str, Any]:
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
        prompts: list[Prompt],
        max_tokens: int | list[int],
        logprobs: int | None,
        adapter: str | None,
    ) -> EngineRun:
        limits = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
        choices = []
        for p, (prompt, limit) in enumerate(zip(prompts, limits, strict=True)):
            for j in range(req.n):
                index = p * req.n + j
                params = self._params(req, limit, logprobs, None if req.seed is None else req.seed + index)
                choices.append(
                    Choice(index, f"{rid}-{index}", prompt, params, req.stop_strings, self.tokenizer)
                )
        return EngineRun(self.engine, choices, adapter)

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


def _usage(prompts: list[Prompt], choices: list[Choice]) -> dict[str, int]:
    """Each prompt counts once, however many choices it had."""
    prompt_tokens = sum(len(p.token_ids) for p in prompts)
    completion_tokens = sum(ch.num_tokens for ch in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def build_text_service(
    deployment: str, model_dir: Path, engine_config: EngineConfig | None = None
) -> TextGenerationService:
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


async def _drain(run: EngineRun) -> None:
    """Run a request to its end (the whole-response endpoints collect its choices)."""
    try:
        async for _ in run.deltas():
            pass
    finally:
        await run.close()


def _envelope(
    rid: str, obj: str, model: str, created: int, choices: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """The fields every OpenAI response and chunk shares."""
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        **extra,
    }
