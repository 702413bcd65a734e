"""Closed-loop streaming load for OpenAI-compatible chat servers, and the prompts it sends.

Shared by ``serve_throughput.py`` for every HTTP target (onebox, llama.cpp's server) so that all of
them are measured by the same client code: one request per stream at a time, the next one sent when
the previous finishes, timings taken from the SSE stream as the client sees it.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

# --------------------------------------------------------------------------- prompts

_EN_TOPICS = [
    "the water cycle",
    "how a bicycle gear works",
    "photosynthesis",
    "the history of the printing press",
    "why the sky is blue",
    "how vaccines train the immune system",
    "compound interest",
    "the difference between weather and climate",
    "how a hash table works",
    "the causes of ocean tides",
    "recycling plastic",
    "how bees make honey",
    "the rules of chess",
    "why bread rises",
    "solar panels",
    "the Roman aqueducts",
]
_EN_ASKS = [
    "Explain {t} in simple words.",
    "Write a short paragraph about {t} for a ten-year-old.",
    "Give me three facts about {t}.",
    "What is the most common misunderstanding about {t}?",
    "Summarise {t} in a few sentences, then give one example.",
    "Write a short poem about {t}.",
]
_EN_CONTEXT = [
    "I am preparing a short talk for a community evening class.",
    "The audience has no background in science or engineering.",
    "Please avoid jargon and keep every sentence short.",
    "Last time I tried to explain this, people got lost in the details.",
    "I would like the explanation to start from something people see every day.",
    "It is fine to simplify, as long as nothing you say is actually wrong.",
    "After the explanation, I want to ask the audience one question to check they followed.",
    "My notes so far are messy, so I am starting again from scratch.",
    "The talk is ten minutes long and there will be time for questions afterwards.",
    "Some listeners are teenagers and some are retired, so the tone should suit both.",
]
_ZH_TOPICS = [
    "水循环",
    "光合作用",
    "复利",
    "印刷术的历史",
    "天空为什么是蓝色的",
    "疫苗如何起作用",
    "潮汐的成因",
    "蜜蜂如何酿蜜",
    "太阳能电池板",
    "垃圾分类",
    "高铁为什么这么快",
    "茶叶的种类",
]
_ZH_ASKS = [
    "请用简单的话解释{t}。",
    "请给我三个关于{t}的事实。",
    "请写一段适合小学生阅读的关于{t}的短文。",
    "关于{t}，最常见的误解是什么？",
    "请用几句话概括{t}，并举一个例子。",
]
_ZH_CONTEXT = [
    "我正在为社区讲座准备一个简短的发言。",
    "听众大多没有理工科背景。",
    "请不要使用专业术语，句子尽量简短。",
    "上次我讲这个话题时，大家被细节弄糊涂了。",
    "我希望从日常生活中常见的现象讲起。",
    "讲座时间是十分钟，之后还有提问环节。",
]


def make_prompts(n: int, seed: int = 1234) -> list[list[dict[str, str]]]:
    """``n`` chat conversations (one user turn), about 1/3 Chinese, with 0 to many context sentences.

    Seeded, so every target and every run sends the same mix. The lengths vary from a dozen to a
    couple of hundred template tokens; :func:`fit_prompts` trims any that are too long.
    """
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        chinese = i % 3 == 2
        topics, asks, context = (
            (_ZH_TOPICS, _ZH_ASKS, _ZH_CONTEXT) if chinese else (_EN_TOPICS, _EN_ASKS, _EN_CONTEXT)
        )
        ask = rng.choice(asks).format(t=rng.choice(topics))
        # Lengths: a quarter bare questions, the rest with a growing amount of context.
        k = 0 if i % 4 == 0 else rng.randint(1, len(context))
        sentences = rng.sample(context, k) if k <= len(context) else context
        sep = "" if chinese else " "
        text = sep.join([*sentences, ask]) if sentences else ask
        prompts.append([{"role": "user", "content": text}])
    return prompts


def fit_prompts(
    prompts: list[list[dict[str, str]]], tokenizer: Any, limit: int
) -> tuple[list[list[dict[str, str]]], list[list[int]]]:
    """Trim each prompt (dropping leading context sentences) until its chat-templated length is < limit.

    Returns the prompts and their templated token ids (with the generation prompt), which the
    in-process baselines feed to the model directly so every target sees the same tokens.
    """
    out, ids = [], []
    for msgs in prompts:
        text = msgs[-1]["content"]
        while True:
            m = [{"role": "user", "content": text}]
            tok = tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True)
            if hasattr(tok, "keys"):  # transformers 5 returns a BatchEncoding
                tok = tok["input_ids"]
            tok = list(tok)
            if len(tok) < limit:
                break
            cut = max(text.find(". ") + 2, text.find("。") + 1)
            # Drop the first context sentence; halve a prompt that has none left to drop.
            text = text[: len(text) // 2] if cut <= 1 or cut >= len(text) else text[cut:]
        out.append(m)
        ids.append(tok)
    return out, ids


# --------------------------------------------------------------------------- client


@dataclass
class RequestResult:
    """One streamed request as the client saw it (times in seconds, from the send)."""

    ok: bool
    tokens: int = 0
    chunks: int = 0
    ttft: float | None = None
    tpot: float | None = None
    latency: float = 0.0
    error: str | None = None


@dataclass
class LevelResult:
    """One concurrency level: aggregate throughput and latency percentiles over its requests."""

    streams: int
    requests: int
    ok: int
    errors: int
    output_tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_p50: float | None
    ttft_p95: float | None
    tpot_p50: float | None
    tpot_p95: float | None
    short_outputs: int = 0
    first_error: str | None = None
    timed_out: bool = False
    per_request: list[RequestResult] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("per_request")
        return d


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


async def stream_chat(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    extra: dict[str, Any] | None = None,
) -> RequestResult:
    """Send one streaming chat completion and time it from the SSE chunks.

    TTFT is the time to the first chunk carrying content; output tokens come from the final
    ``usage`` chunk when the server sends one (multi-byte characters may be held back and merged,
    so chunks can undercount), else from the number of content chunks.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.0,
        **(extra or {}),
    }
    t0 = time.perf_counter()
    first = last = None
    chunks = 0
    usage_tokens: int | None = None
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode("utf-8", "replace")[:300]
                return RequestResult(False, error=f"HTTP {resp.status_code}: {text}")
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    return RequestResult(False, error=f"stream error: {str(event['error'])[:300]}")
                usage = event.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    usage_tokens = int(usage["completion_tokens"])
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        now = time.perf_counter()
                        first = first if first is not None else now
                        last = now
                        chunks += 1
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        return RequestResult(False, error=f"{type(exc).__name__}: {exc}"[:300])
    end = time.perf_counter()
    if first is None or last is None:
        return RequestResult(False, latency=end - t0, error="no content in the stream")
    tokens = usage_tokens if usage_tokens is not None else chunks
    tpot = (last - first) / (tokens - 1) if tokens > 1 else None
    return RequestResult(True, tokens, chunks, first - t0, tpot, end - t0)


async def run_level(
    base_url: str,
    model: str,
    prompts: list[list[dict[str, str]]],
    streams: int,
    requests: int,
    max_tokens: int,
    extra: dict[str, Any] | None = None,
    deadline_s: float = 600.0,
    request_timeout_s: float = 300.0,
    offset: int = 0,
    headers: dict[str, str] | None = None,
) -> LevelResult:
    """Closed loop: ``streams`` clients, each sending its next request when the previous one ends.

    ``requests`` in total, prompt i+offset (mod len) for the i-th request. Aggregate tokens/s is
    total output tokens over the wall time from the first send to the last completion. Bounded:
    after ``deadline_s`` the outstanding requests are cancelled and the level is marked timed out.
    """
    url = base_url.rstrip("/") + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    timeout = httpx.Timeout(request_timeout_s, connect=10.0)
    results: list[RequestResult] = []
    counter = iter(range(requests))

    async with httpx.AsyncClient(limits=limits, timeout=timeout, headers=headers) as client:

        async def worker() -> None:
            for i in counter:
                msgs = prompts[(i + offset) % len(prompts)]
                results.append(await stream_chat(client, url, model, msgs, max_tokens, extra))

        t0 = time.perf_counter()
        tasks = [asyncio.create_task(worker()) for _ in range(streams)]
        try:
            done, pending = await asyncio.wait(tasks, timeout=deadline_s)
        finally:  # also on Ctrl-C: no client may outlive the connection pool
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        wall = time.perf_counter() - t0
        for t in done:
            if t.exception() is not None:
                results.append(RequestResult(False, error=repr(t.exception())[:300]))

    good = [r for r in results if r.ok]
    tokens = sum(r.tokens for r in good)
    ttfts = [r.ttft for r in good if r.ttft is not None]
    tpots = [r.tpot for r in good if r.tpot is not None]
    errors = [r for r in results if not r.ok]
    return LevelResult(
        streams=streams,
        requests=len(results),
        ok=len(good),
        errors=len(errors),
        output_tokens=tokens,
        wall_s=wall,
        tokens_per_s=tokens / wall if wall > 0 else 0.0,
        ttft_p50=percentile(ttfts, 50),
        ttft_p95=percentile(ttfts, 95),
        tpot_p50=percentile(tpots, 50),
        tpot_p95=percentile(tpots, 95),
        short_outputs=sum(1 for r in good if r.tokens < max_tokens),
        first_error=errors[0].error if errors else None,
        timed_out=bool(pending),
        per_request=results,
    )
