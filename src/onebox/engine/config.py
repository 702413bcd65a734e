"""Engine configuration: typed, documented, validated up front (all problems at once)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from onebox.errors import ConfigError, Problem


class EngineConfig(BaseModel):
    """How one engine (one base model plus its adapters) is built and scheduled."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Compute and KV-cache dtype; ``auto`` picks bf16 where the hardware is fast at it (CPUs with
    AVX512-BF16/AMX, CUDA GPUs) and fp32 otherwise."""
    weight_quantization: Literal["none", "int8"] = "none"
    """``int8``: also keep a per-channel int8 copy of every projection (weight-only, scales in the
    compute dtype) and use it for steps of at most ``int8_max_tokens`` tokens. Decoding a few
    streams reads every weight once per token, so it is bound by memory bandwidth: half the bytes,
    almost twice the tokens/s at batch 1. Larger steps keep the exact bf16/fp32 weights."""
    int8_max_tokens: int = Field(default=8, ge=1)
    """Largest step (in tokens) that uses the int8 weights when ``weight_quantization='int8'``."""
    device: str = "auto"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available)."""
    max_model_len: int | None = Field(default=2048, ge=16)
    """Longest sequence (prompt + output) a request may reach; None takes the model's own limit.
    Each KV slot reserves this many positions."""
    max_num_seqs: int = Field(default=64, ge=1, le=4096)
    """Most requests decoding at once (KV slots); fewer if the KV budget does not fit them."""
    kv_cache_bytes: int | None = Field(default=None, ge=1)
    """Memory for the KV cache, allocated once at start; None means ``kv_cache_fraction`` of the
    memory available when the engine starts."""
    kv_cache_fraction: float = Field(default=0.25, gt=0.0, le=0.9)
    """Share of available memory used for the KV cache when ``kv_cache_bytes`` is not set."""
    max_waiting: int = Field(default=256, ge=0)
    """Requests that may wait for a slot; beyond that new requests are refused (HTTP 429)."""
    max_num_batched_tokens: int = Field(default=256, ge=16)
    """Token budget of one step (decodes + prefill chunks): a long prompt is prefilled in chunks
    so running streams keep getting tokens between them."""
    prefix_caching: bool = True
    """Start a prompt from the longest prefix another slot already computed (same adapter): the
    chat template's system prompt and shared instructions are copied, not recomputed."""
    max_loras: int = Field(default=8, ge=0)
    """Adapters that may be loaded at once."""
    max_lora_rank: int = Field(default=64, ge=1)
    """Largest adapter rank accepted."""
    threads: int | None = Field(default=None, ge=1)
    """Intra-op CPU threads; None keeps PyTorch's default (one per core)."""
    adapters: dict[str, Path] = Field(default_factory=dict)
    """Adapters to load at start: name -> PEFT adapter directory."""

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.max_model_len is not None and self.max_num_batched_tokens < 16:
            raise ValueError("max_num_batched_tokens must be >= 16")
        return self


def engine_config(**values: Any) -> EngineConfig:
    """Build an :class:`EngineConfig`, reporting every bad field at once as ``ConfigError``."""
    try:
        return EngineConfig(**values)
    except ValidationError as exc:
        problems = [
            Problem(".".join(str(x) for x in err["loc"]) or "engine", err["msg"]) for err in exc.errors()
        ]
        raise ConfigError("invalid engine configuration", problems=problems) from exc
