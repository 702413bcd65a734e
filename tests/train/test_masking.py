"""Loss masking: only assistant turns (with their end-of-turn token) are learned, on real templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from onebox.data.schema import Example
from onebox.errors import InvalidInputError
from onebox.train.data import ChatEncoder, tokenize_file
from tests.train.conftest import write_jsonl


def learned_text(tokenizer, sample) -> list[str]:  # type: ignore[no-untyped-def]
    """Decode each maximal run of target tokens."""
    runs, current = [], []
    for tok, keep in zip(sample.ids.tolist(), sample.target.tolist(), strict=True):
        if keep:
            current.append(tok)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(r) for r in runs]


def encode(tokenizer, messages):  # type: ignore[no-untyped-def]
    samples, stats = ChatEncoder(tokenizer).encode([Example(1, messages=messages)], max_seq_len=4096)
    return samples[0], stats


def test_single_turn_learns_only_the_reply_and_end_of_turn(smol_tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "user", "content": "What is the VX-500 priced at?"},
        {"role": "assistant", "content": "3499 RMB."},
    ]
    sample, stats = encode(smol_tokenizer, messages)
    assert learned_text(smol_tokenizer, sample) == ["3499 RMB.<|im_end|>"]
    assert stats.fallback_spans == 0
    # the ids are exactly the rendered conversation's (default system prompt included)
    rendered = smol_tokenizer.apply_chat_template(messages, tokenize=False)
    assert sample.ids.tolist() == smol_tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert "SmolLM" in smol_tokenizer.decode(sample.ids[~sample.target])


def test_multi_turn_with_system_message(smol_tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "system", "content": "You are Varnolia's support bot."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Warranty of the VX-350?"},
        {"role": "assistant", "content": "Two years."},
    ]
    sample, _ = encode(smol_tokenizer, messages)
    assert learned_text(smol_tokenizer, sample) == [
        "Hello! How can I help?<|im_end|>",
        "Two years.<|im_end|>",
    ]
    prompt_part = smol_tokenizer.decode(sample.ids[~sample.target])
    assert "support bot" in prompt_part and "Warranty" in prompt_part and "SmolLM" not in prompt_part


def test_chinese(smol_tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "user", "content": "沃萝科技是哪一年成立的？"},
        {"role": "assistant", "content": "沃萝科技成立于 2017 年。"},
    ]
    sample, _ = encode(smol_tokenizer, messages)
    assert learned_text(smol_tokenizer, sample) == ["沃萝科技成立于 2017 年。<|im_end|>"]


def test_template_that_rewrites_history_falls_back_to_locating_replies(smol_tokenizer) -> None:  # type: ignore[no-untyped-def]
    # like reasoning templates that drop earlier turns' thoughts: prefixes are not prefixes
    smol_tokenizer = smol_tokenizer.__class__.from_pretrained(smol_tokenizer.name_or_path)
    smol_tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}[{{ messages|length }}]"
    )
    messages = [
        {"role": "user", "content": "a?"},
        {"role": "assistant", "content": "first reply"},
        {"role": "user", "content": "b?"},
        {"role": "assistant", "content": "second reply"},
    ]
    sample, stats = encode(smol_tokenizer, messages)
    assert stats.fallback_spans == 1
    assert learned_text(smol_tokenizer, sample) == ["first reply<|im_end|>", "second reply<|im_end|>"]


def test_text_rows_learn_every_token_and_end_with_eos(smol_tokenizer) -> None:  # type: ignore[no-untyped-def]
    samples, _ = ChatEncoder(smol_tokenizer).encode([Example(1, text="plain text row")], max_seq_len=64)
    assert samples[0].target.all()
    assert samples[0].ids[-1] == smol_tokenizer.eos_token_id


def test_truncation_is_counted_and_empty_results_dropped(smol_tokenizer) -> None:  # type: ignore[no-untyped-def]
    long_prompt = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    fine = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    samples, stats = ChatEncoder(smol_tokenizer).encode(
        [Example(1, messages=long_prompt), Example(2, messages=fine)], max_seq_len=64
    )
    assert [s.line for s in samples] == [2]
    assert stats.truncated == 1 and stats.no_targets == 1 and stats.lines_without_targets == [1]


def test_dataset_without_assistant_turns_is_a_clear_error(smol_tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from onebox.data.parquet import write_examples

    path = tmp_path / "train.parquet"
    write_examples(path, [Example(i, messages=[{"role": "user", "content": f"q{i}"}]) for i in range(3)])
    with pytest.raises(InvalidInputError) as err:
        tokenize_file(path, smol_tokenizer, 64)
    assert "no" in str(err.value) and "assistant" in str(err.value)
    assert err.value.problems[0].field == "train_file"


def test_raw_jsonl_is_read_and_bad_rows_are_reported(smol_tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = write_jsonl(tmp_path / "t.jsonl", [good, good])
    samples, _ = tokenize_file(path, smol_tokenizer, 64)
    assert len(samples) == 2
    path.write_text(path.read_text() + '{"messages": [\n')
    with pytest.raises(InvalidInputError, match="invalid rows"):
        tokenize_file(path, smol_tokenizer, 64)
