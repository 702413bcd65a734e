"""Chat-template rendering and assistant-only label masking for evaluation.

Masking works on characters, not tokens: each assistant turn's span in the rendered text is
found from the template itself (render the conversation up to the turn with the generation
prompt, then up to and including the turn), and a token is scored when it starts inside such
a span. Tokens at a boundary therefore never depend on how the turns were split for rendering.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100
"""Label value that ``torch.nn.functional.cross_entropy`` skips."""

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
    """Render ``messages`` and return the text with the character spans of each assistant turn.

    A span runs from after the generation prompt to the end of the turn including its
    end-of-turn marker (``<|im_end|>``: the model must learn to stop), without trailing
    whitespace. If the template is not prefix-stable (some drop earlier reasoning), the turn's
    content is searched for in the full text instead.
    """
    full = render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1])
        if i and full.startswith(prompt) and full.startswith(upto) and len(prompt) <= len(upto):
            start, end = len(prompt), len(upto)
        else:
            start = full.find(message["content"], cursor)
            if start < 0:
                continue  # the template dropped this turn; nothing to score
            end = start + len(message["content"])
        while end > start and full[end - 1].isspace():
            end -= 1
        spans.append((start, end))
        cursor = end
    return full, spans


def encode_chat(tokenizer: Any, messages: list[dict[str, str]], *, max_seq_len: int) -> Encoded:
    """Token ids and assistant-only labels for one conversation, truncated to ``max_seq_len``."""
    text, spans = assistant_spans(tokenizer, messages)
    ids, starts = _tokenize_with_starts(tokenizer, text)
    labels = [
        tok if any(s <= start < e for s, e in spans) else IGNORE_INDEX
        for tok, start in zip(ids, starts, strict=True)
    ]
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


def _tokenize_with_starts(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """Token ids of rendered chat text (the template already holds any BOS) and each token's start char."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [s for s, _ in enc["offset_mapping"]]
    except (NotImplementedError, ValueError, TypeError):
        pass
    # Slow tokenizers have no offsets: a token starts where the decoded prefix before it ends.
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    starts = [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]
    return ids, starts
