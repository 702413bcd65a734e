"""The synchronous engine: scheduler + model runner + adapters, one ``step()`` at a time.

:class:`onebox.engine.async_engine.AsyncLLMEngine` drives it from a background thread; tests and
offline batch jobs can call ``step()`` directly.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import psutil
import torch

from onebox.engine.config import EngineConfig
from onebox.engine.kv_cache import CacheShape, KVCache, plan_slots
from onebox.engine.llama import LlamaModel
from onebox.engine.lora import LoraRegistry
from onebox.engine.runner import ModelRunner
from onebox.engine.scheduler import Scheduler, SchedulerOutput, Sequence
from onebox.engine.types import EngineStats, RequestOutput, SamplingParams
from onebox.errors import ConfigError, InvalidInputError, NotFoundError, Problem

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "CUDA is not available on this machine",
            problems=[
                Problem("device", f"{name!r} requested but no GPU is visible", "use device=cpu or auto")
            ],
        )
    return torch.device(name)


class LLMEngine:
    def __init__(self, model: LlamaModel, config: EngineConfig) -> None:
        cfg = model.cfg
        self.config = config
        self.model = model
        max_len = min(config.max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
        if cfg.sliding_window and max_len > cfg.sliding_window:
            raise ConfigError(
                "sliding-window attention is not implemented",
                problems=[
                    Problem(
                        "max_model_len",
                        f"{max_len} exceeds the model's sliding window of {cfg.sliding_window}",
                        f"set max_model_len <= {cfg.sliding_window}",
                    )
                ],
            )
        self.max_model_len = max_len
        shape = CacheShape(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, max_len, model.dtype)
        budget = config.kv_cache_bytes
        if budget is None:
            if model.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(model.device)
                budget = int(free * config.kv_cache_fraction)
            else:
                budget = int(psutil.virtual_memory().available * config.kv_cache_fraction)
        num_slots = plan_slots(shape, budget, config.max_num_seqs)
        self.kv = KVCache(shape, num_slots, model.device)
        model.prepare_rope(max_len)
        self.loras = LoraRegistry(cfg, model.dtype, model.device, config.max_loras, config.max_lora_rank)
        for name, path in config.adapters.items():
            self.loras.load(name, path)
        self.scheduler = Scheduler(
            num_slots=num_slots,
            max_model_len=max_len,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_waiting=config.max_waiting,
            prefix_caching=config.prefix_caching,
        )
        self.runner = ModelRunner(model, self.kv, self.loras)
        self.eos_token_ids = frozenset(cfg.eos_token_ids)
        self.lock = threading.Lock()
        log.info(
            "engine ready: %s %s on %s, %d KV slots x %d tokens (%.0f MiB), weights %.0f MiB",
            cfg.architecture, model.dtype, model.device, num_slots, max_len,
            self.kv.nbytes / 2**20, model.weight_bytes / 2**20,
        )  # fmt: skip

    @classmethod
    def from_model_dir(cls, model_dir: Path, config: EngineConfig) -> LLMEngine:
        from onebox.evaluate.loading import resolve_dtype

        if config.threads:
            torch.set_num_threads(config.threads)
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device.type)
        model = LlamaModel.load(Path(model_dir), dtype, device)
        if config.weight_quantization == "int8":
            model.quantize_int8(config.int8_max_tokens)
        return cls(model, config)

    # -- requests ----------------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        adapter: str | None = None,
    ) -> None:
        lora = None
        if adapter is not None:
            lora = self.loras.get(adapter)
            if lora is None:
                raise NotFoundError(
                    f"adapter {adapter!r} is not loaded; loaded: {', '.join(self.loras.names()) or 'none'}"
                )
        vocab = self.model.cfg.vocab_size
        if any(t < 0 or t >= vocab for t in prompt_token_ids):
            raise InvalidInputError(
                "prompt has token ids outside the vocabulary",
                problems=[Problem("prompt", f"token ids must be in [0, {vocab})")],
            )
        seq = Sequence(
            request_id=request_id,
            prompt_len=len(prompt_token_ids),
            params=params,
            token_ids=list(prompt_token_ids),
            adapter=adapter,
            eos_token_ids=self.eos_token_ids,
            lora=lora,
        )
        with self.lock:
            self.scheduler.add(seq)

    def abort(self, request_id: str) -> None:
        with self.lock:
            self.scheduler.abort(request_id)

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def step(self) -> list[RequestOutput]:
        """Schedule, run and account one step; returns every request's delta (aborts included)."""
        with self.lock:
            outputs = self.scheduler.pop_aborted()
            sched = self.scheduler.schedule()
        if sched.is_empty:
            self._forget(outputs)
            return outputs
        try:
            sampled = self.runner.execute(sched)
        except Exception:
            self._fail(sched)
            raise
        with self.lock:
            outputs += self.scheduler.update_from_output(sched, sampled)
            outputs += self.scheduler.pop_aborted()
        self._forget(outputs)
        return outputs

    def _forget(self, outputs: list[RequestOutput]) -> None:
        for o in outputs:
            if o.finished:
                self.runner.forget(o.request_id)

    def _fail(self, sched: SchedulerOutput) -> None:
        with self.lock:
            for item in sched.scheduled:
                self.scheduler.abort(item.seq.request_id)

    def stats(self) -> EngineStats:
        s = self.scheduler
        used = sum(seq.num_computed for seq in s.running)
        return EngineStats(
            running=len(s.running),
            waiting=len(s.waiting),
            max_running=s.slots.num_slots,
            max_waiting=s.max_waiting,
            kv_slots_total=s.slots.num_slots,
            kv_slots_used=s.slots.num_used,
            kv_tokens_used=used,
            kv_tokens_total=s.slots.num_slots * self.max_model_len,
            prompt_tokens_total=s.prompt_tokens_total,
            generation_tokens_total=s.generation_tokens_total,
            steps_total=s.steps_total,
            prefix_cache_hit_tokens_total=s.prefix.hit_tokens_total if s.prefix is not None else 0,
            adapters=self.loras.names(),
        )


def generate_offline(
    engine: LLMEngine,
    prompts: list[list[int]],
    params: SamplingParams,
    adapters: list[str | None] | None = None,
) -> list[list[int]]:
    """Run prompts to completion without a server (tests, batch jobs)."""
    ids = [f"offline-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
    result: dict[str, list[int]] = {i: [] for i in ids}
    for i, (rid, p) in enumerate(zip(ids, prompts, strict=True)):
        engine.add_request(rid, p, params, adapters[i] if adapters else None)
    pending = set(ids)
    while pending:
        for o in engine.step():
            if o.request_id in result:
                result[o.request_id].extend(o.new_token_ids)
                if o.finished:
                    pending.discard(o.request_id)
    return [result[i] for i in ids]
