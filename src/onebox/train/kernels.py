"""Compute kernels that make LoRA fine-tuning fast on a CPU, each exact (not an approximation).

Measured on the 2-core AVX512-BF16 box (SmolLM2-135M, 8 x 512 tokens), three things dominated a
naive peft + SDPA step (about 45% of its time went to attention, 25% to LoRA's small matmuls), and
each has a fix here:

- **Varlen attention** (:func:`varlen_attention_forward`). A packed row attended with a 4D
  block-diagonal mask costs ``L^2`` per row even though each sample only needs ``len^2``; the CPU
  SDPA kernel does not skip masked blocks. We gather each sample's queries/keys/values into
  length-sorted groups and run causal attention per group: no cross-sample attention by
  construction, and about ``sum(len^2)`` work. Transformers 5 can also detect packed
  ``position_ids`` and build the block mask itself (and use flash-attention varlen on CUDA), but on
  a CPU that is the full ``L^2`` SDPA again; the ``sdpa``/``eager`` options keep that path and the
  tests check all of them give the same loss.
- **LoRA matmul layouts** (:class:`LoraLinear`, :class:`LoraDelta`). oneDNN is 10x slower on
  ``F.linear`` with a rank-16 output and on the ``g^T @ h`` weight gradient than on the transposed
  layouts; these autograd functions compute the same products with the fast layouts, fused with the
  frozen base product, in the activations' dtype (bf16), with the fp32 master weights cast per call.
- **Logits** (:class:`LinearCrossEntropy`). Only assistant tokens carry a loss, so we compute
  ``lm_head`` for those rows only, in chunks, and produce the gradient in the same pass: the full
  ``tokens x vocab`` fp32 logits (800 MB for 4096 tokens and a 49k vocabulary) never exist.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

VARLEN_ATTENTION = "onebox_varlen"
"""Name under which :func:`varlen_attention_forward` is registered with transformers."""


_MATH_MAX_WIDTH = 384
"""Groups up to this many tokens wide use explicit (bf16 matmul) attention, wider ones SDPA.

On the AVX512-BF16 box the CPU flash-attention kernel's backward was 2-10x slower than two bf16
matmuls and a softmax for samples of 50-200 tokens; its memory stays linear, so long samples use it.
"""


@dataclass
class SegmentLayout:
    """Where each packed sample sits in a ``[rows, seq_len]`` batch, prepared once per micro-batch.

    Samples are gathered into *slots*: groups of samples of similar length, each padded to the
    group's ``width``, laid out one after another (``widths[g]`` x ``counts[g]`` slots per group).
    ``gather`` maps each slot to a flat token (``row * seq_len + pos``); a slot past a sample's end
    repeats the sample's last token. Those padded queries are dropped and, attention being causal,
    their keys are never seen by a real query, so their gradient is exactly zero.
    ``scatter`` maps each flat token to its slot, or to ``num_slots`` (a zero row) for tokens in no
    sample; ``slot_token`` maps each slot to its token, or to ``rows * seq_len`` for padded slots.
    Both directions are therefore pure gathers, forward and backward.
    """

    widths: list[int]
    counts: list[int]
    gather: torch.Tensor
    scatter: torch.Tensor
    slot_token: torch.Tensor
    rows: int
    seq_len: int

    @classmethod
    def build(
        cls, lengths: Sequence[Sequence[int]], seq_len: int, *, max_waste: float = 1.3
    ) -> SegmentLayout:
        """``lengths[r]`` lists the sample lengths packed, in order, from the start of row ``r``."""
        segments: list[tuple[int, int]] = []  # (flat start, length)
        for row, row_lengths in enumerate(lengths):
            start = row * seq_len
            for n in row_lengths:
                if n > 0:
                    segments.append((start, n))
                    start += n
        segments.sort(key=lambda s: -s[1])
        tokens = len(lengths) * seq_len
        gather: list[torch.Tensor] = []
        slot_token: list[torch.Tensor] = []
        scatter = torch.full((tokens,), -1, dtype=torch.long)
        widths: list[int] = []
        counts: list[int] = []
        slot = 0
        i = 0
        while i < len(segments):
            width = segments[i][1]
            j = i
            while j < len(segments) and segments[j][1] * max_waste >= width:
                j += 1
            ar = torch.arange(width)
            for start, n in segments[i:j]:
                gather.append(start + ar.clamp(max=n - 1))
                slot_token.append(torch.where(ar < n, start + ar, tokens))
                scatter[start : start + n] = slot + torch.arange(n)
                slot += width
            widths.append(width)
            counts.append(j - i)
            i = j
        scatter[scatter < 0] = slot
        empty = torch.zeros(0, dtype=torch.long)
        return cls(
            widths=widths,
            counts=counts,
            gather=torch.cat(gather) if gather else empty,
            scatter=scatter,
            slot_token=torch.cat(slot_token) if slot_token else empty,
            rows=len(lengths),
            seq_len=seq_len,
        )

    def to(self, device: torch.device | str) -> SegmentLayout:
        return SegmentLayout(
            self.widths,
            self.counts,
            self.gather.to(device, non_blocking=True),
            self.scatter.to(device, non_blocking=True),
            self.slot_token.to(device, non_blocking=True),
            self.rows,
            self.seq_len,
        )


def _take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` along dim 0, where ``index == len(x)`` yields a zero row (only those rows are
    touched again, so the usual case of a few padding rows costs nothing extra)."""
    n = x.shape[0]
    out = x.index_select(0, index.clamp(max=n - 1))
    zero = (index == n).nonzero().flatten()
    return out.index_fill_(0, zero, 0) if zero.numel() else out


class _GatherRows(torch.autograd.Function):
    """Row gather whose backward is the inverse gather (not a scatter-add): valid because every
    source row is read by at most one *live* destination row, and dead rows get zero gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, index: torch.Tensor, back: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(back)
        return _take_rows(x, index)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (back,) = ctx.saved_tensors
        return _take_rows(grad.contiguous(), back), None, None


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of ``q [n, heads, w, d]`` on ``k, v [n, kv_heads, w, d]`` (GQA folded in)."""
    n, heads, width, dim = q.shape
    kv_heads = k.shape[1]
    if width > _MATH_MAX_WIDTH:
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale, enable_gqa=kv_heads != heads
        )
    rep = heads // kv_heads
    qg = q.reshape(n, kv_heads, rep * width, dim)  # query heads sharing a KV head become rows
    scores = (qg @ k.transpose(-1, -2)).mul_(scale)
    future = torch.ones(width, width, dtype=torch.bool, device=q.device).triu_(1)
    scores.masked_fill_(future.repeat(rep, 1), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return (probs @ v).reshape(n, heads, width, dim)


@torch.compiler.disable  # its shapes change every batch; compiled layers call it as a graph break
def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed sample (transformers attention-interface signature).

    Without an ``onebox_layout`` keyword (generation, a plain forward) it is exactly SDPA, so a model
    left configured with this implementation still works everywhere. Attention dropout is not
    supported on this path (Llama-family models train without it).
    """
    layout: SegmentLayout | None = kwargs.pop("onebox_layout", None)
    if layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    scale = scaling if scaling is not None else dim**-0.5

    def slots(x: torch.Tensor, h: int) -> torch.Tensor:
        flat = x.transpose(1, 2).reshape(batch * length, h, dim)
        return _GatherRows.apply(flat, layout.gather, layout.scatter)

    q, k, v = slots(query, heads), slots(key, kv_heads), slots(value, kv_heads)
    outs = []
    offset = 0
    for width, count in zip(layout.widths, layout.counts, strict=True):
        size = width * count
        part = [t[offset : offset + size].view(count, width, -1, dim).transpose(1, 2) for t in (q, k, v)]
        o = _causal_attention(*part, scale)
        outs.append(o.transpose(1, 2).reshape(size, heads, dim))
        offset += size
    out = torch.cat(outs, 0) if len(outs) > 1 else outs[0]
    out = _GatherRows.apply(out, layout.scatter, layout.slot_token)
    return out.view(batch, length, heads, dim), None


def register_varlen_attention() -> None:
    """Make ``attn_implementation="onebox_varlen"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    # Without a layout we fall back to SDPA, so we want SDPA's masks too.
    AttentionMaskInterface.register(VARLEN_ATTENTION, sdpa_mask)


class LoraDelta(torch.autograd.Function):
    """``(x @ A^T @ B^T) * scale`` for a 2D ``x``, with the fast oneDNN layouts in both passes."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
        a_c = a.to(x.dtype)
        b_c = (b * scale).to(x.dtype)
        h = x @ a_c.t()
        ctx.save_for_backward(x, h, a_c, b_c)
        ctx.scale = scale
        ctx.a_dtype, ctx.b_dtype = a.dtype, b.dtype
        return h @ b_c.t()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, h, a_c, b_c = ctx.saved_tensors
        grad = grad.contiguous()
        grad_h = grad @ b_c  # [m, r]
        grad_x = grad_h @ a_c if ctx.needs_input_grad[0] else None
        grad_a = (grad_h.t() @ x).to(ctx.a_dtype) if ctx.needs_input_grad[1] else None
        grad_b = None
        if ctx.needs_input_grad[2]:
            grad_b = ((h.t() @ grad).t() * ctx.scale).to(ctx.b_dtype)
        return grad_x, grad_a, grad_b, None


class LoraLinear(torch.autograd.Function):
    """``x @ W^T + bias + (x @ A^T @ B^T) * scale`` for a 2D ``x`` and a frozen ``W``, in one pass.

    Fusing the base product and the adapter (``addmm_`` into the same output) saves a full-size
    temporary and an add per layer; the backward reuses ``grad @ W`` for the input gradient.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        a: torch.Tensor,
        b: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        w = weight if weight.dtype == x.dtype else weight.to(x.dtype)
        a_c = a.to(x.dtype)
        b_c = (b * scale).to(x.dtype)
        out = x @ w.t()
        if bias is not None:
            out += bias.to(x.dtype)
        h = x @ a_c.t()
        out.addmm_(h, b_c.t())
        ctx.save_for_backward(x, h, w, a_c, b_c)
        ctx.scale = scale
        ctx.a_dtype, ctx.b_dtype = a.dtype, b.dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, h, w, a_c, b_c = ctx.saved_tensors
        grad = grad.contiguous()
        grad_h = grad @ b_c
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ w
            grad_x.addmm_(grad_h, a_c)
        grad_a = (grad_h.t() @ x).to(ctx.a_dtype) if ctx.needs_input_grad[3] else None
        grad_b = ((h.t() @ grad).t() * ctx.scale).to(ctx.b_dtype) if ctx.needs_input_grad[4] else None
        return grad_x, None, None, grad_a, grad_b, None


def _fast_lora_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Replacement ``forward`` for a peft ``lora.Linear`` with one plain (non-DoRA) adapter."""
    if self.disable_adapters or self.merged or args or kwargs or len(self.active_adapters) != 1:
        return self._onebox_original_forward(x, *args, **kwargs)
    name = self.active_adapters[0]
    base = self.base_layer
    if (
        name not in self.lora_A
        or name in self.lora_variant
        or type(base) is not torch.nn.Linear
        or base.weight.requires_grad
    ):
        return self._onebox_original_forward(x, *args, **kwargs)
    a, b, scale = self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name]
    dropout = self.lora_dropout[name]
    x2d = x.reshape(-1, x.shape[-1])
    if self.training and isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
        out = base(x2d) + LoraDelta.apply(dropout(x2d), a, b, scale).to(x.dtype)
    else:
        out = LoraLinear.apply(x2d, base.weight, base.bias, a, b, scale)
    return out.view(*x.shape[:-1], -1)


def enable_fast_lora(model: torch.nn.Module) -> int:
    """Route every plain peft LoRA ``Linear`` through :class:`LoraDelta`; returns how many.

    The modules, their parameters and state-dict keys are untouched, so peft saves, loads and merges
    the adapter as usual; only the arithmetic of the forward/backward changes.
    """
    from peft.tuners.lora import Linear as LoraLinear

    count = 0
    for module in model.modules():
        if type(module) is LoraLinear and not hasattr(module, "_onebox_original_forward"):
            module._onebox_original_forward = module.forward
            module.forward = types.MethodType(_fast_lora_forward, module)
            count += 1
    return count


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight^T`` against ``targets``, chunked and fused.

    The forward computes the loss and, when gradients are needed, the gradients for ``hidden`` and
    ``weight`` chunk by chunk, so memory holds ``chunk x vocab`` logits at most; the backward only
    scales them. Logits are formed in the activations' dtype and reduced in fp32.
    """

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(hidden.dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]
            t = targets[start : start + chunk]
            logp = torch.log_softmax(h @ w.t(), dim=-1, dtype=torch.float32)
            total -= logp.gather(1, t[:, None]).sum()
            if need_h or need_w:
                probs = logp.exp_()  # softmax, in place: d(sum loss)/d(logits) = softmax - onehot
                probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                p = probs.to(hidden.dtype)
                if grad_h is not None:
                    grad_h[start : start + chunk] = p @ w
                if grad_w is not None:
                    grad_w += (h.t() @ p).t().float()
        ctx.save_for_backward(*(g for g in (grad_h, grad_w) if g is not None))
        ctx.has = (need_h, need_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = list(ctx.saved_tensors)
        need_h, need_w = ctx.has
        grad_h = grad_w = None
        if need_h:
            gh = saved.pop(0)
            grad_h = gh * grad.to(gh.dtype)
        if need_w:
            grad_w = (saved.pop(0) * grad).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 512
) -> torch.Tensor:
    """Summed token loss of ``hidden [n, d]`` through an output layer ``weight [vocab, d]``."""
    if hidden.shape[0] == 0:
        return hidden.sum().float() * 0.0 + weight.sum().float() * 0.0
    return LinearCrossEntropy.apply(hidden, weight, targets, chunk)
