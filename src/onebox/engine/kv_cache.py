"""The KV cache: allocated once, up front, within a memory budget, as fixed-size slots.

Layout per layer: ``[num_slots, kv_heads, max_model_len, head_dim]``. A slot holds one sequence's
keys and values at positions ``0..len-1``, so attention reads a *view* of the cache (no gather
copy per step, which on a CPU costs as much as the attention itself) and decode attention for a
batch is one call over ``cache[:max_slot+1, :, :max_len]``. The allocator hands out the lowest
free slot so the slots in use stay packed at the front and that range stays tight.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch

from onebox.errors import ConfigError, Problem


class SlotAllocator:
    """Lowest-free-first slot numbers (plain data; the scheduler owns it)."""

    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self._free = list(range(num_slots))
        heapq.heapify(self._free)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_slots - len(self._free)

    def allocate(self, prefer: int | None = None) -> int:
        """The lowest free slot, or ``prefer`` when it is free (it already holds a wanted prefix)."""
        if not self._free:
            raise RuntimeError("no free KV slot (the scheduler must check num_free first)")
        if prefer is not None and prefer in self._free:
            self._free.remove(prefer)
            heapq.heapify(self._free)
            return prefer
        return heapq.heappop(self._free)

    def free(self, slot: int) -> None:
        heapq.heappush(self._free, slot)


@dataclass(frozen=True)
class CacheShape:
    num_layers: int
    kv_heads: int
    head_dim: int
    max_model_len: int
    dtype: torch.dtype

    @property
    def bytes_per_slot(self) -> int:
        item = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.kv_heads * self.head_dim * self.max_model_len * item


def plan_slots(shape: CacheShape, budget_bytes: int, max_num_seqs: int) -> int:
    """How many slots fit the budget (at most ``max_num_seqs``); ConfigError if not even one."""
    n = min(max_num_seqs, budget_bytes // shape.bytes_per_slot)
    if n < 1:
        need = shape.bytes_per_slot
        raise ConfigError(
            "the KV-cache budget does not fit a single sequence",
            problems=[
                Problem(
                    "kv_cache_bytes",
                    f"{budget_bytes / 2**20:.0f} MiB < {need / 2**20:.0f} MiB needed for one sequence of "
                    f"{shape.max_model_len} tokens",
                    "raise kv_cache_bytes or lower max_model_len",
                )
            ],
        )
    return int(n)


class KVCache:
    """The tensors. Written by the model runner at the positions the scheduler assigned."""

    def __init__(self, shape: CacheShape, num_slots: int, device: torch.device) -> None:
        self.shape = shape
        self.num_slots = num_slots
        dims = (num_slots, shape.kv_heads, shape.max_model_len, shape.head_dim)
        # zeros, not empty: masked-out positions must not hold NaN/Inf (0 * NaN is NaN in softmax @ V)
        self.k = [torch.zeros(dims, dtype=shape.dtype, device=device) for _ in range(shape.num_layers)]
        self.v = [torch.zeros(dims, dtype=shape.dtype, device=device) for _ in range(shape.num_layers)]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)
