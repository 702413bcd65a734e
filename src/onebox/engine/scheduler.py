"""Continuous-batching scheduler: plain data in, plain data out, no tensors and no model.

Every step it decides which tokens the model runner computes: one token for each running
sequence that is decoding, then prompt chunks (new or partially prefilled requests) within the
step's token budget, so a long prompt is prefilled over several steps interleaved with the
decodes of running streams instead of stalling them. Requests join between steps when a KV slot
is free and leave as soon as they finish or are aborted.

Each running sequence owns one KV slot sized for ``max_model_len`` positions, reserved for its
whole life: admission is the only point where memory can run out, so a running request can never
be preempted or fail for lack of cache. When all slots are taken, requests wait in a bounded
queue; when that is full too, :meth:`Scheduler.add` raises :class:`OverloadedError`.
"""

from __future__ import annotations

import contextlib
import enum
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from onebox.engine.kv_cache import SlotAllocator
from onebox.engine.prefix_cache import PrefixCache
from onebox.engine.types import RequestOutput, SamplingParams, TokenLogprob
from onebox.errors import ErrorList, InvalidInputError, OverloadedError


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """Scheduler-side state of one request (one engine request = one sequence)."""

    request_id: str
    prompt_len: int
    params: SamplingParams
    token_ids: list[int]
    """Prompt followed by the generated tokens (one list, appended in place)."""
    adapter: str | None = None
    lora: Any = None
    """The loaded adapter object, pinned at admission: unloading an adapter lets the requests
    already using it finish."""
    eos_token_ids: frozenset[int] = frozenset()
    arrival: float = field(default_factory=time.monotonic)
    num_computed: int = 0
    """Tokens whose keys/values are in the KV cache."""
    slot: int | None = None
    status: SeqStatus = SeqStatus.WAITING
    finish_reason: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed < self.prompt_len


@dataclass
class ScheduledSeq:
    """One sequence's share of a step: feed ``token_ids`` at positions ``start..start+len-1`` and,
    if ``sample``, draw its next token from the logits of the last one."""

    seq: Sequence
    start: int
    num_tokens: int
    sample: bool

    @property
    def token_ids(self) -> list[int]:
        return self.seq.token_ids[self.start : self.start + self.num_tokens]


@dataclass
class SchedulerOutput:
    """The work of one step. Decodes (one token each) come first, then prefill chunks."""

    decodes: list[ScheduledSeq] = field(default_factory=list)
    prefills: list[ScheduledSeq] = field(default_factory=list)
    copies: list[tuple[int, int, int]] = field(default_factory=list)
    """Prefix-cache hits: copy positions ``0..n-1`` of slot ``src`` into slot ``dst`` as
    ``(src, dst, n)``, in order, before the step's forward pass."""

    @property
    def scheduled(self) -> list[ScheduledSeq]:
        return self.decodes + self.prefills

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + sum(p.num_tokens for p in self.prefills)

    @property
    def is_empty(self) -> bool:
        return not self.decodes and not self.prefills


@dataclass(frozen=True)
class SampledToken:
    """What the runner drew for one sequence in one step."""

    token_id: int
    logprob: TokenLogprob | None = None


class Scheduler:
    """Owns the waiting queue, the running set and the KV slots."""

    def __init__(
        self,
        *,
        num_slots: int,
        max_model_len: int,
        max_num_batched_tokens: int,
        max_waiting: int,
        prefix_caching: bool = True,
    ) -> None:
        self.slots = SlotAllocator(num_slots)
        self.prefix = PrefixCache(num_slots) if prefix_caching else None
        self.max_model_len = max_model_len
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_waiting = max_waiting
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._by_id: dict[str, Sequence] = {}
        self._aborted: list[Sequence] = []
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.steps_total = 0
        self._finish_times: deque[float] = deque(maxlen=64)

    # -- admission ---------------------------------------------------------------------------

    def validate(self, prompt_len: int, params: SamplingParams) -> None:
        errs = ErrorList()
        if prompt_len < 1:
            errs.add("prompt", "is empty", "send at least one token")
        elif prompt_len + params.max_tokens > self.max_model_len:
            errs.add(
                "max_tokens",
                f"prompt ({prompt_len} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                f"context length of {self.max_model_len}",
                f"shorten the prompt or ask for at most {max(self.max_model_len - prompt_len, 0)} tokens",
            )
        errs.raise_if_any("request does not fit the model's context", InvalidInputError)

    def add(self, seq: Sequence) -> None:
        """Queue a request; raises InvalidInputError or OverloadedError and changes nothing."""
        self.validate(seq.prompt_len, seq.params)
        if seq.request_id in self._by_id:
            raise InvalidInputError(f"request id {seq.request_id!r} is already in use")
        if len(self.waiting) >= self.max_waiting + self.slots.num_free:  # free slots take queued ones first
            raise OverloadedError(
                f"server busy: {len(self.running)} requests running and {len(self.waiting)} waiting",
                retry_after=self.retry_after(),
            )
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)
        self._by_id[seq.request_id] = seq

    def retry_after(self) -> int:
        """Seconds until a queued request is likely to start: the queue divided by the recent
        completion rate (at least 1)."""
        if len(self._finish_times) >= 2:
            span = self._finish_times[-1] - self._finish_times[0]
            rate = (len(self._finish_times) - 1) / span if span > 0 else 0.0
            if rate > 0:
                return max(1, math.ceil((len(self.waiting) + 1) / rate))
        return max(1, len(self.waiting) // max(1, self.slots.num_slots))

    def abort(self, request_id: str) -> None:
        """Mark a request finished; its slot is freed before the next step. Unknown ids are ignored."""
        seq = self._by_id.get(request_id)
        if seq is None or seq.status is SeqStatus.FINISHED:
            return
        self._finish(seq, "abort")
        self._aborted.append(seq)

    def pop_aborted(self) -> list[RequestOutput]:
        """Final outputs of requests aborted since the last call."""
        out = [self._final(seq, []) for seq in self._aborted]
        self._aborted.clear()
        return out

    def get(self, request_id: str) -> Sequence | None:
        return self._by_id.get(request_id)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._aborted)

    # -- one step ----------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        # Decodes first: every running stream gets its token this step, whatever the budget.
        prefilling: list[Sequence] = []
        for seq in self.running:
            if seq.is_prefilling:
                prefilling.append(seq)
            else:
                out.decodes.append(
                    ScheduledSeq(seq, seq.num_computed, seq.num_tokens - seq.num_computed, True)
                )
        budget -= len(out.decodes)
        # Then prompts already started (oldest first), then new requests while slots are free.
        for seq in prefilling:
            if budget <= 0:
                break
            budget -= self._schedule_chunk(out, seq, budget)
        while self.waiting and budget > 0 and self.slots.num_free > 0:
            seq = self.waiting.popleft()
            self._admit(out, seq)
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            budget -= self._schedule_chunk(out, seq, budget)
        out.decodes.sort(key=lambda s: s.seq.slot or 0)
        return out

    def _admit(self, out: SchedulerOutput, seq: Sequence) -> None:
        """Give ``seq`` a slot, starting it from the longest cached prefix of its prompt (at least
        its last prompt token is always computed: its logits give the first output token)."""
        if self.prefix is None:
            seq.slot = self.slots.allocate()
            return
        src, n = self.prefix.match(seq.token_ids, seq.lora, seq.prompt_len - 1)
        seq.slot = self.slots.allocate(prefer=src)
        if n:
            if src != seq.slot:
                out.copies.append((src, seq.slot, n))  # type: ignore[arg-type]
            seq.num_computed = n
            self.prefix.hit_tokens_total += n
            self.prompt_tokens_total += n
        self.prefix.assign(seq.slot, seq.token_ids, n, seq.lora)

    @staticmethod
    def _schedule_chunk(out: SchedulerOutput, seq: Sequence, budget: int) -> int:
        n = min(seq.prompt_len - seq.num_computed, budget)
        done = seq.num_computed + n == seq.prompt_len
        out.prefills.append(ScheduledSeq(seq, seq.num_computed, n, done))
        return n

    def update_from_output(
        self, out: SchedulerOutput, sampled: dict[str, SampledToken]
    ) -> list[RequestOutput]:
        """Advance the sequences of a finished step; return each one's delta."""
        self.steps_total += 1
        results: list[RequestOutput] = []
        for item in out.scheduled:
            seq = item.seq
            if seq.status is SeqStatus.FINISHED:  # aborted while the step ran
                continue
            seq.num_computed += item.num_tokens
            if self.prefix is not None and seq.slot is not None:
                self.prefix.advance(seq.slot, seq.num_computed)
            if item.start < seq.prompt_len:
                self.prompt_tokens_total += min(item.num_tokens, seq.prompt_len - item.start)
            if not item.sample:
                continue
            tok = sampled[seq.request_id]
            reason = self._stop_reason(seq, tok.token_id)
            new = [] if reason == "stop_token" else [tok.token_id]
            if reason != "stop_token":
                seq.token_ids.append(tok.token_id)
                self.generation_tokens_total += 1
            if reason is None and seq.num_tokens >= self.max_model_len:
                reason = "length"
            lp = [tok.logprob] if tok.logprob is not None and new else None
            if reason is None:
                results.append(
                    RequestOutput(
                        seq.request_id,
                        new,
                        logprobs=lp,
                        num_prompt_tokens=seq.prompt_len,
                        num_output_tokens=seq.num_output,
                    )
                )
            else:
                self._finish(seq, "stop" if reason in ("eos", "stop_token") else reason)
                results.append(self._final(seq, new, lp))
        return results

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.params
        n_after = seq.num_output + 1
        if n_after > p.min_tokens:
            if token in p.stop_token_ids:
                return "stop_token"
            if not p.ignore_eos and token in seq.eos_token_ids:
                return "stop_token"
        if n_after >= p.max_tokens:
            return "length"
        return None

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason
        if seq.slot is not None:
            self.slots.free(seq.slot)
            seq.slot = None
        if seq in self.running:
            self.running.remove(seq)
        else:
            with contextlib.suppress(ValueError):
                self.waiting.remove(seq)
        self._by_id.pop(seq.request_id, None)
        self._finish_times.append(time.monotonic())

    @staticmethod
    def _final(seq: Sequence, new: list[int], lp: list[TokenLogprob] | None = None) -> RequestOutput:
        return RequestOutput(
            seq.request_id,
            new,
            finished=True,
            finish_reason=seq.finish_reason,
            logprobs=lp,
            num_prompt_tokens=seq.prompt_len,
            num_output_tokens=seq.num_output,
        )
