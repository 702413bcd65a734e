"""Inference engine: token ids in, token ids out, continuous batching. No HTTP, no tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from onebox.engine.config import EngineConfig, engine_config
from onebox.engine.types import EngineStats, RequestOutput, SamplingParams, TokenLogprob

if TYPE_CHECKING:
    from onebox.engine.async_engine import AsyncLLMEngine

__all__ = [
    "EngineConfig",
    "EngineStats",
    "RequestOutput",
    "SamplingParams",
    "TokenLogprob",
    "build_engine",
    "engine_config",
]


def build_engine(model_dir: Path, config: EngineConfig | None = None) -> AsyncLLMEngine:
    """Load a causal LM directory (HF layout, safetensors) into a running engine.

    Must be called from a thread with a running asyncio loop or before one starts; the engine
    steps in its own background thread.
    """
    from onebox.engine.async_engine import AsyncLLMEngine

    return AsyncLLMEngine.from_model_dir(Path(model_dir), config or EngineConfig())
