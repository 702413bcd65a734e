"""TextGenerationService over a fake engine: validation, usage, n, logprobs, stops, streams, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from onebox.errors import InvalidInputError, NotFoundError, OverloadedError
from onebox.serve.protocol import ChatCompletionRequest, CompletionRequest
from onebox.serve.textgen import TextGenerationService
from tests.serve.fakes import IM_END, FakeEngine, encode

T = TypeVar("T")
REPLY = "Hello 世界 🌍! 你好。"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def service(byte_tok: Any, **kw: Any) -> tuple[TextGenerationService, FakeEngine]:
    kw.setdefault("reply", lambda p: [*encode(REPLY), IM_END])
    engine = FakeEngine(**kw)
    return TextGenerationService("base", engine, byte_tok), engine


def chat(**kw: Any) -> ChatCompletionRequest:
    body = {"model": "base", "messages": [{"role": "user", "content": "hi"}], **kw}
    return ChatCompletionRequest.model_validate(body)


async def collect(svc: TextGenerationService, req: ChatCompletionRequest) -> list[dict[str, Any]]:
    return [c async for c in await svc.chat_stream(req)]


def test_chat_reply_usage_and_default_max_tokens(byte_tok: Any) -> None:
    svc, engine = service(byte_tok)
    out = run(svc.chat(chat()))
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": REPLY}
    assert choice["finish_reason"] == "stop"
    assert out["object"] == "chat.completion" and out["model"] == "base"
    rid, prompt, params, adapter = engine.requests[0]
    assert rid == out["id"] + "-0" and adapter is None
    assert params.max_tokens == engine.max_model_len - len(prompt)  # default: the rest of the context
    n_out = len(encode(REPLY))
    assert out["usage"] == {
        "prompt_tokens": len(prompt),
        "completion_tokens": n_out,
        "total_tokens": len(prompt) + n_out,
    }
    assert byte_tok.decode(prompt) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_length_limit_and_context_validation(byte_tok: Any) -> None:
    svc, engine = service(byte_tok, max_model_len=64)
    out = run(svc.chat(chat(max_tokens=5)))
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["choices"][0]["message"]["content"] == "Hello"
    with pytest.raises(InvalidInputError) as err:
        run(svc.chat(chat(max_tokens=60)))
    assert "maximum context length is 64" in str(err.value) and "60 for the completion" in str(err.value)
    assert err.value.problems[0].field == "max_tokens"
    with pytest.raises(InvalidInputError) as err:
        run(svc.chat(chat(max_completion_tokens=60)))
    assert err.value.problems[0].field == "max_completion_tokens"
    with pytest.raises(InvalidInputError) as err:
        run(svc.chat(chat(messages=[{"role": "user", "content": "x" * 100}])))
    assert err.value.problems[0].field == "messages" and "64" in str(err.value)
    assert engine.requests and len(engine.requests) == 1  # refused requests never reached the engine


def test_unknown_model_and_adapters(byte_tok: Any, tmp_path: Any) -> None:
    svc, engine = service(byte_tok)
    with pytest.raises(NotFoundError) as err:
        run(svc.chat(chat(model="nope")))
    assert err.value.problems[0].field == "model"
    (tmp_path / "adapter_config.json").write_text("{}")
    svc.load_adapter("tuned", tmp_path)
    assert svc.model_names() == ["base", "tuned"]
    run(svc.chat(chat(model="tuned")))
    assert engine.requests[-1][3] == "tuned"
    with pytest.raises(InvalidInputError):
        svc.load_adapter("base", tmp_path)
    svc.unload_adapter("tuned")
    assert svc.model_names() == ["base"]


def test_n_choices_seeds_and_usage_counts_prompt_once(byte_tok: Any) -> None:
    svc, engine = service(byte_tok)
    out = run(svc.chat(chat(n=3, seed=7, temperature=0.8)))
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == REPLY for c in out["choices"])
    ids = [r[0] for r in engine.requests]
    assert ids == [f"{out['id']}-{i}" for i in range(3)]
    assert [r[2].seed for r in engine.requests] == [7, 8, 9]
    prompt_len = len(engine.requests[0][1])
    assert out["usage"]["prompt_tokens"] == prompt_len
    assert out["usage"]["completion_tokens"] == 3 * len(encode(REPLY))


def test_stream_chunks_role_first_then_text_then_usage(byte_tok: Any) -> None:
    svc, _ = service(byte_tok, tokens_per_step=2)
    chunks = run(collect(svc, chat(stream=True, stream_options={"include_usage": True})))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    texts = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:] if c["choices"]]
    assert all("\ufffd" not in t for t in texts)
    assert "".join(texts) == REPLY
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(encode(REPLY))
    assert all(c["usage"] is None for c in chunks[:-1])
    assert len({c["id"] for c in chunks}) == 1


def test_stream_equals_non_stream_with_n(byte_tok: Any) -> None:
    svc, _ = service(byte_tok, tokens_per_step=3)
    whole = run(svc.chat(chat(n=2)))
    chunks = run(collect(svc, chat(n=2, stream=True)))
    by_index: dict[int, str] = {0: "", 1: ""}
    for c in chunks:
        for ch in c["choices"]:
            by_index[ch["index"]] += ch["delta"].get("content", "")
    assert by_index == {c["index"]: c["message"]["content"] for c in whole["choices"]}


def test_stop_string_split_across_tokens_aborts_engine_request(byte_tok: Any) -> None:
    svc, engine = service(byte_tok)
    out = run(svc.chat(chat(stop=["世界"])))
    assert out["choices"][0]["message"]["content"] == "Hello "
    assert out["choices"][0]["finish_reason"] == "stop"
    rid = engine.requests[0][0]
    assert rid in engine.abort_calls and not engine.running
    assert out["usage"]["completion_tokens"] == len(encode("Hello 世界"))
    chunks = run(collect(svc, chat(stop="! ", stream=True)))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Hello 世界 🌍"


def test_chat_logprobs_format(byte_tok: Any) -> None:
    svc, engine = service(byte_tok, reply=lambda p: [*encode("A界"), IM_END])
    out = run(svc.chat(chat(logprobs=True, top_logprobs=2)))
    content = out["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == ["A", "bytes:\\xe7", "bytes:\\x95", "bytes:\\x8c"]
    assert bytes(b for c in content for b in c["bytes"]).decode() == "A界"
    assert content[0]["logprob"] == -0.25 and len(content[0]["top_logprobs"]) == 2
    assert set(content[0]["top_logprobs"][0]) == {"token", "logprob", "bytes"}
    assert engine.requests[0][2].logprobs == 2
    assert run(svc.chat(chat()))["choices"][0]["logprobs"] is None


def test_completions_prompts_n_logprobs_echo(byte_tok: Any) -> None:
    svc, engine = service(byte_tok, reply=None)  # echo the prompt
    req = CompletionRequest.model_validate(
        {"model": "base", "prompt": ["abc", "xy"], "n": 2, "max_tokens": 4, "logprobs": 1}
    )
    out = run(svc.completion(req))
    assert [c["text"] for c in out["choices"]] == ["abca", "abca", "xyxy", "xyxy"]
    assert out["usage"] == {"prompt_tokens": 5, "completion_tokens": 16, "total_tokens": 21}
    lp = out["choices"][0]["logprobs"]
    assert lp["tokens"] == ["a", "b", "c", "a"] and lp["text_offset"] == [0, 1, 2, 3]
    assert lp["top_logprobs"][0] == {"a": -0.25}
    echo = CompletionRequest.model_validate(
        {"model": "base", "prompt": [104, 105], "echo": True, "max_tokens": 2}
    )
    assert run(svc.completion(echo))["choices"][0]["text"] == "hihi"
    # OpenAI's default of 16 tokens for completions.
    run(svc.completion(CompletionRequest.model_validate({"model": "base", "prompt": "q"})))
    assert engine.requests[-1][2].max_tokens == 16
    bad = CompletionRequest.model_validate({"model": "base", "prompt": [1, 99999]})
    with pytest.raises(InvalidInputError) as err:
        run(svc.completion(bad))
    assert err.value.problems[0].field == "prompt"


def test_overload_is_raised_before_the_stream_starts(byte_tok: Any) -> None:
    svc, engine = service(byte_tok)
    engine.overloaded = True
    with pytest.raises(OverloadedError) as err:
        run(svc.chat_stream(chat(stream=True)))
    assert err.value.details["retry_after"] == 2.5


def test_closing_the_stream_aborts_the_engine_request(byte_tok: Any) -> None:
    svc, engine = service(byte_tok, reply=lambda p: encode("x" * 200), delay=0.01)

    async def scenario() -> None:
        for n in (1, 2):
            stream = await svc.chat_stream(chat(stream=True, n=n))
            got = 0
            async for _ in stream:
                got += 1
                if got == 4:
                    break
            await stream.aclose()  # what the HTTP layer does when the client goes away
            assert not engine.running
        assert len(engine.closed_early) == 3

    run(scenario())


def test_sampling_errors_name_the_field(byte_tok: Any) -> None:
    svc, _ = service(byte_tok)
    with pytest.raises(InvalidInputError) as err:
        run(svc.chat(chat(max_tokens=3, min_tokens=5)))
    assert err.value.problems[0].field == "min_tokens"
