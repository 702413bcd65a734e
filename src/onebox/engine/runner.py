"""Executes one scheduled step: lays the scheduled tokens out as one flat batch, runs the model,
and samples a token for every sequence that needs one."""

from __future__ import annotations

import torch

from onebox.engine.kv_cache import KVCache
from onebox.engine.llama import AttnBatch, LlamaModel
from onebox.engine.lora import LoraRegistry, StepLora
from onebox.engine.sampler import Sampler, SampleRow
from onebox.engine.scheduler import SampledToken, SchedulerOutput


def _additive(allowed: torch.Tensor) -> torch.Tensor:
    """A boolean attention mask as the fp32 bias the math attention path adds to its scores."""
    return torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(~allowed, float("-inf"))


class ModelRunner:
    def __init__(self, model: LlamaModel, kv: KVCache, loras: LoraRegistry) -> None:
        self.model = model
        self.kv = kv
        self.loras = loras
        self.sampler = Sampler()
        self._generators: dict[str, torch.Generator] = {}
        self._mask_cache: dict[tuple[int, int, int], torch.Tensor] = {}

    def forget(self, request_id: str) -> None:
        self._generators.pop(request_id, None)

    def _generator(self, request_id: str, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        gen = self._generators.get(request_id)
        if gen is None:
            gen = torch.Generator().manual_seed(seed)
            self._generators[request_id] = gen
        return gen

    def _prefill_mask(self, g: int, cnt: int, start: int) -> torch.Tensor:
        key = (g, cnt, start)
        m = self._mask_cache.get(key)
        if m is None:
            q_pos = start + torch.arange(cnt).repeat(g)  # rows are (group, token) in group-major order
            m = (torch.arange(start + cnt)[None, :] <= q_pos[:, None]).view(1, 1, g * cnt, start + cnt)
            if self.model.math_attention:
                m = _additive(m).view(g * cnt, start + cnt)
            if len(self._mask_cache) > 4096:
                self._mask_cache.clear()
            self._mask_cache[key] = m
        return m

    def build_batch(self, out: SchedulerOutput) -> tuple[torch.Tensor, AttnBatch, torch.Tensor]:
        cfg = self.model.cfg
        g = cfg.num_heads // cfg.num_kv_heads
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        sample_rows: list[int] = []
        decode_slots: list[int] = []
        decode_lens: list[int] = []
        for d in out.decodes:
            seq = d.seq
            assert seq.slot is not None
            sample_rows.append(len(ids))
            ids.append(seq.token_ids[d.start])
            positions.append(d.start)
            slots.append(seq.slot)
            decode_slots.append(seq.slot)
            decode_lens.append(d.start + 1)
        prefills: list[tuple[int, int, int, int, torch.Tensor]] = []
        for p in out.prefills:
            seq = p.seq
            assert seq.slot is not None
            row = len(ids)
            ids.extend(p.token_ids)
            positions.extend(range(p.start, p.start + p.num_tokens))
            slots.extend([seq.slot] * p.num_tokens)
            prefills.append(
                (row, p.num_tokens, seq.slot, p.start, self._prefill_mask(g, p.num_tokens, p.start))
            )
            if p.sample:
                sample_rows.append(len(ids) - 1)
        nd = len(out.decodes)
        decode_mask = None
        span = max(decode_slots) + 1 if decode_slots else 0
        dense = decode_slots == list(range(nd))
        dlen = max(decode_lens) if decode_lens else 0
        if nd:  # one row per slot of the span
            lens = torch.ones(span, dtype=torch.long)
            lens[torch.tensor(decode_slots)] = torch.tensor(decode_lens)
            decode_mask = (torch.arange(dlen)[None, :] < lens[:, None]).view(span, 1, 1, dlen)
        dev = self.model.device
        batch = AttnBatch(
            positions=torch.tensor(positions, dtype=torch.long, device=dev),
            slots=torch.tensor(slots, dtype=torch.long, device=dev),
            n_decode=nd,
            decode_slots=torch.tensor(decode_slots, dtype=torch.long, device=dev) if nd else None,
            decode_dense=dense,
            decode_span=span,
            decode_len=dlen,
            decode_mask=decode_mask.to(dev) if decode_mask is not None else None,
            prefills=[(r, c, s, st, m.to(dev)) for r, c, s, st, m in prefills],
        )
        return (
            torch.tensor(ids, dtype=torch.long, device=dev),
            batch,
            torch.tensor(sample_rows, dtype=torch.long, device=dev),
        )

    def _step_lora(self, out: SchedulerOutput) -> StepLora | None:
        groups: dict[int, tuple[object, list[int]]] = {}
        n = 0
        for item in out.scheduled:
            lora = item.seq.lora
            if lora is not None:
                groups.setdefault(id(lora), (lora, []))[1].extend(range(n, n + item.num_tokens))
            n += item.num_tokens
        if not groups:
            return None
        total = out.num_tokens
        dev = self.model.device
        return StepLora(
            [
                (lora, None if len(rows) == total else torch.tensor(rows, device=dev))  # type: ignore[misc]
                for lora, rows in groups.values()
            ]
        )

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> dict[str, SampledToken]:
        if out.is_empty:
            return {}
        for src, dst, n in out.copies:
            for layer in range(len(self.kv.k)):
                self.kv.k[layer][dst, :, :n] = self.kv.k[layer][src, :, :n]
                self.kv.v[layer][dst, :, :n] = self.kv.v[layer][src, :, :n]
        input_ids, batch, sample_idx = self.build_batch(out)
        hidden = self.model.forward(input_ids, batch, self.kv, sample_idx, self._step_lora(out))
        sampling = [s for s in out.scheduled if s.sample]
        if not sampling:
            return {}
        logits = self.model.logits(hidden).cpu()
        rows = [
            SampleRow(
                params=s.seq.params,
                token_ids=s.seq.token_ids,
                prompt_len=s.seq.prompt_len,
                eos_token_ids=s.seq.eos_token_ids,
                generator=self._generator(s.seq.request_id, s.seq.params.seed),
            )
            for s in sampling
        ]
        tokens = self.sampler.sample(logits, rows)
        return {s.seq.request_id: t for s, t in zip(sampling, tokens, strict=True)}
