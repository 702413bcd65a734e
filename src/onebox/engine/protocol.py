"""The contract between the serving layer and an engine backend (onebox's own, or vLLM).

The serving layer (``onebox.serve``) holds one object satisfying :class:`TextEngine` and never
looks inside it. All methods are safe to call from the asyncio event loop thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from onebox.engine.types import EngineStats, RequestOutput, SamplingParams


class TextEngine(Protocol):
    """Token ids in, token ids out, with continuous batching behind it."""

    max_model_len: int
    """Prompt tokens + max_tokens must fit in this many positions."""
    eos_token_ids: frozenset[int]
    """Tokens that end a sequence unless ``ignore_eos``/``min_tokens`` say otherwise."""

    def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        adapter: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream the request's deltas; the last one has ``finished=True``.

        Admission happens before the first item: ``InvalidInputError`` (prompt too long for
        ``max_model_len``, unknown adapter) or ``OverloadedError`` (queue full; carries
        ``details['retry_after']``) is raised from the first ``__anext__``. Closing the iterator
        early (client went away) aborts the request and frees its KV slot at once.
        """
        ...

    def abort(self, request_id: str) -> None:
        """Stop a request (e.g. a stop string was seen); its stream ends with ``finish_reason='abort'``
        unless it already finished. Unknown ids are ignored."""
        ...

    def load_adapter(self, name: str, path: Path) -> None:
        """Load (or replace) a LoRA adapter of this base model, under ``name``, without a restart.
        Raises ``InvalidInputError`` if it does not fit the base (wrong shapes, modules)."""
        ...

    def unload_adapter(self, name: str) -> None:
        """Forget an adapter; requests already running with it finish first. ``NotFoundError``
        if unknown."""
        ...

    def adapters(self) -> list[str]:
        """Names of loaded adapters."""
        ...

    def stats(self) -> EngineStats: ...

    async def shutdown(self) -> None:
        """Abort everything and stop the engine's thread."""
        ...
