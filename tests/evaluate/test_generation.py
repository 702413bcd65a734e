"""Batched greedy generation with left padding and the chat template."""

from __future__ import annotations

from pathlib import Path

import pytest

from onebox.evaluate.generation import build_prompt, generate_answers, stop_token_ids
from onebox.evaluate.loading import load_for_eval

from .conftest import IM_END

QUESTIONS = ["hi", "VX-200 多少钱？", "What is the warranty of the VX-500 gateway?", "保修多久"]


@pytest.fixture(scope="module")
def tiny(tiny_chat_dir: Path):  # type: ignore[no-untyped-def]
    return load_for_eval(tiny_chat_dir, dtype="float32", device="cpu")


def test_prompt_uses_the_chat_template(tiny) -> None:  # type: ignore[no-untyped-def]
    _, tok = tiny
    assert build_prompt(tok, "你好", "be brief") == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    )
    assert stop_token_ids(tiny[0], tok) == [IM_END]


def test_batched_answers_equal_one_by_one_in_caller_order(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    seen: list[tuple[str, int, int | None]] = []
    batched = generate_answers(
        model, tok, QUESTIONS, max_new_tokens=6, batch_size=3, progress=lambda *a: seen.append(a)
    )
    single = [generate_answers(model, tok, [q], max_new_tokens=6, batch_size=1)[0] for q in QUESTIONS]
    assert batched == single
    assert all(len(a) <= 6 for a in batched)  # one byte per token: at most one character each
    assert seen == [("generate", 0, 4), ("generate", 3, 4), ("generate", 4, 4)]


def test_bad_arguments(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    assert generate_answers(model, tok, []) == []
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_answers(model, tok, ["hi"], max_new_tokens=0)


@pytest.mark.slow
def test_smollm2_answers_in_batches(builtin_app) -> None:  # type: ignore[no-untyped-def]
    from onebox.services import models

    model, tok = load_for_eval(models.checkout(builtin_app, "smollm2-135m-instruct"))
    questions = ["What is the capital of France?", "What is 2 + 2?", "法国的首都是哪里？"]
    answers = generate_answers(model, tok, questions, max_new_tokens=12, batch_size=3)
    assert len(answers) == 3 and all(isinstance(a, str) and a for a in answers)
    assert "Paris" in answers[0]
    assert "<|im_end|>" not in "".join(answers)
