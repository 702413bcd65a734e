"""Assistant-only masking and perplexity, on the tiny byte-level chat model (one token per byte)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from onebox.data.schema import Example
from onebox.evaluate.chat import IGNORE_INDEX, assistant_spans, encode_chat, encode_text
from onebox.evaluate.loading import load_for_eval
from onebox.evaluate.perplexity import perplexity

from .conftest import IM_END

CHAT = [
    {"role": "system", "content": "你是沃萝科技的客服。"},
    {"role": "user", "content": "VX-200 多少钱？"},
    {"role": "assistant", "content": "VX-200 的售价是 1299 元。"},
    {"role": "user", "content": "Warranty?"},
    {"role": "assistant", "content": "Two years."},
]


@pytest.fixture(scope="module")
def tiny(tiny_chat_dir: Path):  # type: ignore[no-untyped-def]
    return load_for_eval(tiny_chat_dir, dtype="float32", device="cpu")


def _scored_text(tokenizer, encoded) -> list[str]:  # type: ignore[no-untyped-def]
    """Decoded runs of consecutive scored tokens."""
    runs, run = [], []
    for tok, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label != IGNORE_INDEX:
            run.append(tok)
        elif run:
            runs.append(tokenizer.decode(run))
            run = []
    if run:
        runs.append(tokenizer.decode(run))
    return runs


def test_only_assistant_turns_and_their_end_marker_are_scored(tiny) -> None:  # type: ignore[no-untyped-def]
    _, tok = tiny
    encoded = encode_chat(tok, CHAT, max_seq_len=1024)
    assert _scored_text(tok, encoded) == ["VX-200 的售价是 1299 元。<|im_end|>", "Two years.<|im_end|>"]
    # One token per UTF-8 byte, plus <|im_end|> per turn: counted by hand, not by the code under test.
    expected = len("VX-200 的售价是 1299 元。".encode()) + 1 + len(b"Two years.") + 1
    assert encoded.scored == expected == 43
    assert IM_END in [t for t, lab in zip(encoded.input_ids, encoded.labels, strict=True) if lab != -100]


def test_spans_come_from_the_template(tiny) -> None:  # type: ignore[no-untyped-def]
    _, tok = tiny
    text, spans = assistant_spans(tok, CHAT[1:3])
    assert [text[s:e] for s, e in spans] == ["VX-200 的售价是 1299 元。<|im_end|>"]
    assert text.endswith("<|im_end|>\n")  # the newline after the marker stays unscored


def test_truncation_and_text_rows(tiny) -> None:  # type: ignore[no-untyped-def]
    _, tok = tiny
    short = encode_chat(tok, CHAT, max_seq_len=20)
    assert short.truncated and len(short.input_ids) == 20 and short.scored == 0  # answers cut off
    text = encode_text(tok, "你好 world", max_seq_len=64)
    assert text.input_ids[-1] == IM_END and text.labels == text.input_ids
    assert text.scored == len("你好 world".encode())  # every byte after the first, plus EOS


def test_perplexity_matches_the_models_own_loss(tiny) -> None:  # type: ignore[no-untyped-def]
    import torch

    model, tok = tiny
    encoded = encode_chat(tok, CHAT, max_seq_len=1024)
    with torch.inference_mode():
        reference = model(
            input_ids=torch.tensor([encoded.input_ids]), labels=torch.tensor([encoded.labels])
        ).loss.item()
    result = perplexity(model, tok, [Example(1, messages=CHAT)])
    assert result["tokens"] == 43 and result["examples"] == 1
    assert result["loss"] == pytest.approx(reference, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(reference), rel=1e-5)


def test_batching_and_padding_do_not_change_the_result(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    examples = [
        Example(1, messages=CHAT),
        Example(2, messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "你好！"}]),
        Example(3, text="Varnolia Tech was founded in 2017."),
        Example(4, messages=CHAT[:3]),
    ]
    seen: list[tuple[str, int, int | None]] = []
    one = perplexity(model, tok, examples, batch_size=1)
    batched = perplexity(model, tok, examples, batch_size=3, progress=lambda *a: seen.append(a))
    # chat 43; 你好！ 9 bytes + end marker; text 34 bytes + EOS minus the unpredicted first; 31 + 1.
    assert batched["tokens"] == one["tokens"] == 43 + (9 + 1) + (34 + 1 - 1) + (31 + 1)
    assert batched["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert seen[0] == ("perplexity", 0, 4) and seen[-1] == ("perplexity", 4, 4)


def test_assistant_only_false_scores_everything_and_empty_rows_are_skipped(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    full = perplexity(model, tok, [Example(1, messages=CHAT)], assistant_only=False)
    assert full["tokens"] == len(encode_chat(tok, CHAT, max_seq_len=1024).input_ids) - 1
    cut = perplexity(model, tok, [Example(1, messages=CHAT)], max_seq_len=20)
    assert cut == {**cut, "tokens": 0, "skipped": 1, "truncated": 1, "loss": None, "perplexity": None}


@pytest.mark.slow
def test_smollm2_masks_its_default_system_prompt(builtin_app) -> None:  # type: ignore[no-untyped-def]
    from onebox.services import models

    _, tok = load_for_eval(models.checkout(builtin_app, "smollm2-135m-instruct"), dtype="float32")
    messages = [{"role": "user", "content": "VX-200 多少钱？"}, {"role": "assistant", "content": "1299 元。"}]
    encoded = encode_chat(tok, messages, max_seq_len=1024)
    assert "You are a helpful AI assistant" in tok.decode(encoded.input_ids)  # template adds it...
    assert _scored_text(tok, encoded) == ["1299 元。<|im_end|>"]  # ...but only the answer is scored
    answer_ids = tok("1299 元。<|im_end|>", add_special_tokens=False)["input_ids"]
    assert encoded.scored == len(answer_ids)
