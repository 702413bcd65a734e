"""Perplexity of a causal LM on examples: chat rows score the assistant's tokens, text rows all tokens.

The loss is the token-weighted mean negative log-likelihood over every scored token of the set
(not a mean of per-row means), so long answers weigh as much as their tokens; perplexity is its
exponential. Rows are sorted by length before batching so padding costs little.
"""

from __future__ import annotations

import math
from typing import Any

from onebox.data.schema import Example
from onebox.evaluate.chat import IGNORE_INDEX, Encoded, encode_chat, encode_text
from onebox.progress import ProgressFn, null_progress


def encode_example(tokenizer: Any, example: Example, *, max_seq_len: int, assistant_only: bool) -> Encoded:
    """Token ids and labels of one example (``assistant_only=False`` scores a chat row's prompt too)."""
    if example.messages is not None:
        encoded = encode_chat(tokenizer, example.messages, max_seq_len=max_seq_len)
        if not assistant_only:
            encoded.labels = list(encoded.input_ids)
        return encoded
    assert example.text is not None
    return encode_text(tokenizer, example.text, max_seq_len=max_seq_len)


def perplexity(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    *,
    max_seq_len: int = 1024,
    batch_size: int = 8,
    assistant_only: bool = True,
    progress: ProgressFn = null_progress,
) -> dict[str, Any]:
    """Score ``examples`` and return ``{loss, perplexity, tokens, examples, skipped, truncated}``.

    ``tokens`` counts scored tokens; ``skipped`` counts rows with nothing left to score (e.g. the
    answer fell beyond ``max_seq_len``). With no scored token at all, loss and perplexity are None.
    """
    import torch
    import torch.nn.functional as F

    if max_seq_len < 2:
        raise ValueError("max_seq_len must be at least 2")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    encoded = [
        encode_example(tokenizer, e, max_seq_len=max_seq_len, assistant_only=assistant_only) for e in examples
    ]
    usable = [e for e in encoded if e.scored > 0]
    usable.sort(key=lambda e: len(e.input_ids), reverse=True)  # longest first: memory peaks early
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    total_nll = 0.0
    total_tokens = 0
    progress("perplexity", 0, len(usable))
    with torch.inference_mode():
        for start in range(0, len(usable), batch_size):
            batch = usable[start : start + batch_size]
            width = max(len(e.input_ids) for e in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, e in enumerate(batch):  # right padding: positions stay 0..n-1 without position_ids
                n = len(e.input_ids)
                ids[row, :n] = torch.tensor(e.input_ids)
                labels[row, :n] = torch.tensor(e.labels)
                mask[row, :n] = 1
            ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            targets = labels[:, 1:]
            keep = targets != IGNORE_INDEX
            # Only the scored positions are upcast to fp32, never the whole (batch, seq, vocab) tensor.
            picked = logits[:, :-1][keep].float()
            total_nll += F.cross_entropy(picked, targets[keep], reduction="sum").item()
            total_tokens += int(keep.sum().item())
            progress("perplexity", min(start + batch_size, len(usable)), len(usable))
    loss = total_nll / total_tokens if total_tokens else None
    return {
        "loss": loss,
        "perplexity": _safe_exp(loss) if loss is not None else None,
        "tokens": total_tokens,
        "examples": len(usable),
        "skipped": len(encoded) - len(usable),
        "truncated": sum(1 for e in encoded if e.truncated),
        "assistant_only": assistant_only,
        "max_seq_len": max_seq_len,
    }


def _safe_exp(x: float) -> float:
    """exp that saturates at inf instead of raising on an absurd loss."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
