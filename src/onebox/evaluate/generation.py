"""Greedy answers to questions, batched, through the model's chat template.

Greedy decoding makes evaluation reproducible: the same model and questions give the same
answers, so a difference between two models is the models' and not the sampler's. Questions
are sorted by prompt length before batching (left padding then wastes little), and answers
are returned in the caller's order.
"""

from __future__ import annotations

from typing import Any

from onebox.evaluate.chat import render
from onebox.progress import ProgressFn, null_progress


def build_prompt(tokenizer: Any, question: str, system: str | None = None) -> str:
    """The chat-template text that asks ``question`` and opens the assistant's turn."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    return render(tokenizer, messages, add_generation_prompt=True)


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a turn: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    configured = getattr(config, "eos_token_id", None)
    for value in (tokenizer.eos_token_id, configured):
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None and item not in ids:
                ids.append(int(item))
    return ids


def generate_answers(
    model: Any,
    tokenizer: Any,
    questions: list[str],
    *,
    system: str | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    progress: ProgressFn = null_progress,
) -> list[str]:
    """One greedy answer per question (special tokens removed, surrounding whitespace stripped)."""
    import torch
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    prompts = [build_prompt(tokenizer, q, system) for q in questions]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    stops = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=stops or None,
        pad_token_id=pad_id,
        num_beams=1,
    )
    device = next(model.parameters()).device
    answers: list[str] = [""] * len(prompts)
    progress("generate", 0, len(prompts))
    done = 0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):  # left padding: every row's next token is at the end
                n = len(encoded[i])
                ids[row, width - n :] = torch.tensor(encoded[i])
                mask[row, width - n :] = 1
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
            )
            for row, i in enumerate(chunk):
                new = out[row, width:].tolist()
                answers[i] = tokenizer.decode(_until_stop(new, stops), skip_special_tokens=True).strip()
            done += len(chunk)
            progress("generate", done, len(prompts))
    return answers


def _until_stop(ids: list[int], stops: list[int]) -> list[int]:
    """Ids before the first stop token (rows that finished early are padded after it)."""
    for pos, tok in enumerate(ids):
        if tok in stops:
            return ids[:pos]
    return ids
