"""Plain data that crosses the engine boundary: what a request asks for and what each step yields.

The engine speaks token ids only. Tokenization, chat templates, stop *strings* and detokenization
belong to the serving layer that wraps it (``onebox.serve``), which also turns ``n > 1`` into n
engine requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from onebox.errors import ErrorList, InvalidInputError

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop. Field names follow the OpenAI API so that
    validation errors name the request field the user sent."""

    max_tokens: int = 16
    """Upper bound on generated tokens (``finish_reason='length'`` when reached)."""
    temperature: float = 1.0
    """0 means greedy (argmax); otherwise logits are divided by it."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability sums to ``top_p``."""
    top_k: int = -1
    """Keep only the ``top_k`` most likely tokens; -1 (or 0) keeps all."""
    min_p: float = 0.0
    """Drop tokens whose probability is below ``min_p`` times the most likely token's."""
    repetition_penalty: float = 1.0
    """CTRL-style: logits of tokens seen in prompt or output are divided (if > 0) or multiplied
    (if < 0) by this; 1 disables it."""
    presence_penalty: float = 0.0
    """OpenAI: subtracted once from the logit of every token already generated."""
    frequency_penalty: float = 0.0
    """OpenAI: subtracted per occurrence from the logit of every token already generated."""
    seed: int | None = None
    """Makes sampling reproducible: the same seed and inputs give the same tokens, whatever else
    is in the batch."""
    stop_token_ids: tuple[int, ...] = ()
    """Extra token ids that end the sequence (``finish_reason='stop'``); not included in output."""
    ignore_eos: bool = False
    """Keep generating past EOS (load-testing tools send this to fix the output length)."""
    min_tokens: int = 0
    """EOS and stop tokens are suppressed until this many tokens were generated."""
    logprobs: int | None = None
    """None: no log-probabilities; k >= 0: the chosen token's logprob plus the top k."""

    def __post_init__(self) -> None:
        errs = ErrorList()
        if self.max_tokens < 1:
            errs.add("max_tokens", f"must be >= 1, got {self.max_tokens}")
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 100.0):
            errs.add("temperature", f"must be between 0 and 100, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            errs.add("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            errs.add("top_k", f"must be -1 (off) or >= 0, got {self.top_k}")
        if not (0.0 <= self.min_p <= 1.0):
            errs.add("min_p", f"must be in [0, 1], got {self.min_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0.0):
            errs.add("repetition_penalty", f"must be > 0, got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not (math.isfinite(v) and -2.0 <= v <= 2.0):
                errs.add(name, f"must be between -2 and 2, got {v}")
        if self.min_tokens < 0:
            errs.add("min_tokens", f"must be >= 0, got {self.min_tokens}")
        elif self.min_tokens > self.max_tokens:
            errs.add("min_tokens", f"must not exceed max_tokens ({self.max_tokens}), got {self.min_tokens}")
        if self.logprobs is not None and not (0 <= self.logprobs <= MAX_TOP_LOGPROBS):
            errs.add("top_logprobs", f"must be between 0 and {MAX_TOP_LOGPROBS}, got {self.logprobs}")
        if any(t < 0 for t in self.stop_token_ids):
            errs.add("stop_token_ids", "token ids must be >= 0")
        errs.raise_if_any("invalid sampling parameters", InvalidInputError)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class TokenLogprob:
    """Log-probability of one generated token (after penalties, before temperature) and the top
    alternatives at that position, most likely first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class RequestOutput:
    """What one engine step produced for one request (a delta, not the whole text so far)."""

    request_id: str
    new_token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None
    """``stop`` (EOS or a stop token), ``length`` (max_tokens or the context end), ``abort``."""
    logprobs: list[TokenLogprob] | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    """Cumulative output tokens of the request after this step."""


@dataclass
class EngineStats:
    """A snapshot for /metrics and the scheduler's admission decisions."""

    running: int = 0
    waiting: int = 0
    max_running: int = 0
    max_waiting: int = 0
    kv_slots_total: int = 0
    kv_slots_used: int = 0
    kv_tokens_used: int = 0
    kv_tokens_total: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    steps_total: int = 0
    prefix_cache_hit_tokens_total: int = 0
    """Prompt tokens served from the prefix cache (counted in ``prompt_tokens_total`` too)."""
    adapters: list[str] = field(default_factory=list)

    @property
    def kv_usage(self) -> float:
        return self.kv_tokens_used / self.kv_tokens_total if self.kv_tokens_total else 0.0
