"""Request models: extra fields ignored, nulls mean defaults, bad values name their field."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from onebox.api.errors import validation_error
from onebox.serve.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

MSG = [{"role": "user", "content": "hi"}]


def field_of(model: Any, body: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as err:
        model.model_validate(body)
    errors = [{**e, "loc": ("body", *e["loc"])} for e in err.value.errors()]
    return validation_error(RequestValidationError(errors)).problems[0].field


def test_chat_accepts_what_openai_clients_send() -> None:
    req = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": None, "tool_calls": []},
            ],
            "temperature": None,
            "stop": "END",
            "parallel_tool_calls": True,  # unknown: ignored
            "max_completion_tokens": 9,
        }
    )
    assert req.temperature == 1.0 and req.stop_strings == ["END"] and req.output_limit == 9
    assert [m.text() for m in req.messages] == ["be brief", "a\nb", ""]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.0.content",
        ),
        ({"top_k": "many"}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_chat_bad_values_name_the_field(body: dict[str, Any], field: str) -> None:
    assert field_of(ChatCompletionRequest, {"model": "m", "messages": MSG, **body}) == field


def test_completion_and_embedding_inputs() -> None:
    assert CompletionRequest.model_validate({"model": "m", "prompt": [1, 2]}).prompts() == [[1, 2]]
    assert CompletionRequest.model_validate({"model": "m", "prompt": ["a", "b"]}).prompts() == ["a", "b"]
    assert CompletionRequest.model_validate({"model": "m", "prompt": [[1], [2, 3]]}).prompts() == [
        [1],
        [2, 3],
    ]
    assert field_of(CompletionRequest, {"model": "m", "prompt": "x", "echo": True, "logprobs": 1}) == "echo"
    assert field_of(CompletionRequest, {"model": "m", "prompt": []}) == "prompt"
    assert field_of(CompletionRequest, {"model": "m"}) == "prompt"
    assert EmbeddingRequest.model_validate({"model": "e", "input": "x"}).inputs() == ["x"]
    assert EmbeddingRequest.model_validate({"model": "e", "input": [5, 6]}).inputs() == [[5, 6]]
    assert field_of(EmbeddingRequest, {"model": "e", "input": ""}) == "input"
    assert (
        field_of(EmbeddingRequest, {"model": "e", "input": "x", "encoding_format": "int8"})
        == "encoding_format"
    )
