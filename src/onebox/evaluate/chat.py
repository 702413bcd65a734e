"""Chat-template rendering and assistant-only label masking for evaluation.

The masking is training's (:mod:`onebox.train.data`): the same assistant spans, found from the
template itself, and the same rule (a token overlapping a span is scored), so an evaluation loss
is computed over exactly the tokens a fine-tune learns. Base models without a chat template are
rendered as ChatML so they can still be scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from onebox.train import data as train_data

IGNORE_INDEX = train_data.IGNORE_INDEX

FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
"""ChatML, used for tokenizers that ship no chat template (base models): a plain-text format the
model can still be scored on, rather than refusing to evaluate it."""


def render(tokenizer: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool = False) -> str:
    """The conversation as text through the tokenizer's chat template (ChatML if it has none)."""
    template = None if getattr(tokenizer, "chat_template", None) else FALLBACK_CHAT_TEMPLATE
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=template
    )


@dataclass(slots=True)
class Encoded:
    """Token ids of one example and its labels (``IGNORE_INDEX`` where not scored)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def scored(self) -> int:
        """Tokens whose prediction counts: labels not ignored, minus the first (nothing predicts it)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and each assistant turn's character span, exactly as training finds them
    (:func:`onebox.train.data.assistant_spans`): from after the generation prompt through the
    end-of-turn marker (the model must learn to stop), without trailing whitespace."""
    template = None if getattr(tokenizer, "chat_template", None) else FALLBACK_CHAT_TEMPLATE
    full, spans, _ = train_data.assistant_spans(tokenizer, messages, template)
    return full, spans


def encode_chat(tokenizer: Any, messages: list[dict[str, str]], *, max_seq_len: int) -> Encoded:
    """Token ids and assistant-only labels for one conversation, truncated to ``max_seq_len``."""
    text, spans = assistant_spans(tokenizer, messages)
    ids, offsets = _tokenize_with_offsets(tokenizer, text)
    scored = train_data.target_mask(offsets, spans)
    labels = [tok if keep else IGNORE_INDEX for tok, keep in zip(ids, scored.tolist(), strict=True)]
    truncated = len(ids) > max_seq_len
    return Encoded(ids[:max_seq_len], labels[:max_seq_len], truncated)


def encode_text(tokenizer: Any, text: str, *, max_seq_len: int) -> Encoded:
    """Token ids of plain text with every token scored, ending in EOS as pre-training data does."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    truncated = len(ids) > max_seq_len
    ids = ids[:max_seq_len]
    return Encoded(ids, list(ids), truncated)


def _tokenize_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], np.ndarray]:
    """Token ids of rendered chat text (the template already holds any BOS) and each token's
    character range (n x 2)."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    except (NotImplementedError, ValueError, TypeError):
        pass
    # Slow tokenizers have no offsets: a token spans from where the decoded prefix before it ends
    # to where the prefix through it ends.
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ends = [len(tokenizer.decode(ids[: i + 1])) for i in range(len(ids))]
    starts = [0, *ends[:-1]]
    return ids, np.asarray(list(zip(starts, ends, strict=True)), dtype=np.int64).reshape(-1, 2)
