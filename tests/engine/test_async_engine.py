"""The async driver with the real model: concurrent mixed requests, adapters loaded at run time,
cancellation, overload."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from onebox.engine.async_engine import AsyncLLMEngine
from onebox.engine.config import EngineConfig
from onebox.engine.types import RequestOutput, SamplingParams
from onebox.errors import InvalidInputError, NotFoundError, OverloadedError

pytestmark = pytest.mark.slow

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def engine(smollm2_dir: Path) -> Iterator[AsyncLLMEngine]:
    cfg = EngineConfig(
        dtype="float32",
        max_model_len=256,
        max_num_seqs=3,
        max_waiting=3,
        kv_cache_bytes=2**28,
        max_num_batched_tokens=32,
    )
    eng = AsyncLLMEngine.from_model_dir(smollm2_dir, cfg)
    yield eng
    asyncio.run(eng.shutdown())


async def collect(
    eng: AsyncLLMEngine,
    rid: str,
    prompt: list[int],
    params: SamplingParams = GREEDY,
    adapter: str | None = None,
) -> tuple[list[int], RequestOutput]:
    toks: list[int] = []
    last = None
    async for out in eng.generate(rid, prompt, params, adapter):
        toks += out.new_token_ids
        last = out
    assert last is not None and last.finished
    return toks, last


def test_concurrent_mixed_requests_match_solo_runs(
    engine: AsyncLLMEngine, chat_prompts: list[list[int]], lora_dirs: dict[str, Path]
) -> None:
    engine.load_adapter("alpha", lora_dirs["alpha"])  # hot-load: the engine is already running
    engine.load_adapter("beta", lora_dirs["beta"])
    jobs = [(p, a) for p in chat_prompts for a in (None, "alpha", "beta")][:6]  # 3 run, 3 wait

    async def run() -> tuple[list, list]:
        solo = [await collect(engine, f"solo{i}", p, adapter=a) for i, (p, a) in enumerate(jobs)]
        together = await asyncio.gather(
            *(collect(engine, f"mix{i}", p, adapter=a) for i, (p, a) in enumerate(jobs))
        )
        return solo, list(together)

    solo, together = asyncio.run(run())
    assert [t for t, _ in together] == [t for t, _ in solo]
    for (toks, last), (p, _) in zip(together, jobs, strict=True):
        assert last.num_prompt_tokens == len(p) and last.num_output_tokens == len(toks)
        assert last.finish_reason in ("stop", "length")
    assert engine.stats().running == 0 and engine.stats().kv_slots_used == 0
    engine.unload_adapter("beta")
    assert engine.adapters() == ["alpha"]
    with pytest.raises(NotFoundError):
        asyncio.run(collect(engine, "x", chat_prompts[0], adapter="beta"))
    engine.unload_adapter("alpha")


def test_closing_the_stream_frees_the_slot_at_once(
    engine: AsyncLLMEngine, chat_prompts: list[list[int]]
) -> None:
    async def run() -> None:
        gen = engine.generate("c1", chat_prompts[0], SamplingParams(max_tokens=200, ignore_eos=True))
        await gen.__anext__()
        assert engine.stats().running == 1
        await gen.aclose()  # what the server does when the client disconnects
        assert engine.stats().running == 0 and engine.stats().kv_slots_used == 0

    asyncio.run(run())


def test_abort_ends_the_stream(engine: AsyncLLMEngine, chat_prompts: list[list[int]]) -> None:
    async def run() -> RequestOutput:
        last = None
        async for out in engine.generate(
            "a1", chat_prompts[0], SamplingParams(max_tokens=200, ignore_eos=True)
        ):
            last = out
            if out.num_output_tokens == 2:
                engine.abort("a1")
        assert last is not None
        return last

    last = asyncio.run(run())
    assert last.finished and last.finish_reason == "abort"


def test_overload_and_bad_requests_are_refused_before_streaming(
    engine: AsyncLLMEngine, chat_prompts: list[list[int]]
) -> None:
    long = SamplingParams(max_tokens=100, ignore_eos=True)

    async def run() -> None:
        tasks = [asyncio.ensure_future(collect(engine, f"o{i}", chat_prompts[0], long)) for i in range(6)]
        for _ in range(200):  # 3 slots run, 3 requests wait
            await asyncio.sleep(0.01)
            st = engine.stats()
            if st.running == 3 and st.waiting == 3:
                break
        with pytest.raises(OverloadedError) as exc:
            await engine.generate("o-extra", chat_prompts[0], long).__anext__()
        assert exc.value.details["retry_after"] >= 1
        for i in range(6):
            engine.abort(f"o{i}")
        results = await asyncio.gather(*tasks)
        assert {last.finish_reason for _, last in results} == {"abort"}
        with pytest.raises(InvalidInputError) as bad:
            await engine.generate("big", [1] * 250, SamplingParams(max_tokens=10)).__anext__()
        assert bad.value.problems[0].field == "max_tokens"

    asyncio.run(run())
    assert engine.stats().running == 0
