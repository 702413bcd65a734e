"""The CPU fast paths are exact: gradients and outputs match the plain formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from onebox.train import kernels
from onebox.train.kernels import (
    LinearCrossEntropy,
    LoraDelta,
    LoraLinear,
    SegmentLayout,
    varlen_attention_forward,
)

f64 = torch.float64


def test_lora_functions_gradcheck() -> None:
    torch.manual_seed(0)
    x = torch.randn(12, 8, dtype=f64, requires_grad=True)
    a = torch.randn(3, 8, dtype=f64, requires_grad=True)
    b = torch.randn(5, 3, dtype=f64, requires_grad=True)
    w, bias = torch.randn(5, 8, dtype=f64), torch.randn(5, dtype=f64)
    assert torch.autograd.gradcheck(lambda x, a, b: LoraDelta.apply(x, a, b, 0.5), (x, a, b))
    assert torch.autograd.gradcheck(lambda x, a, b: LoraLinear.apply(x, w, bias, a, b, 0.5), (x, a, b))
    expected = x @ w.t() + bias + (x @ a.t() @ b.t()) * 0.5
    torch.testing.assert_close(LoraLinear.apply(x, w, bias, a, b, 0.5), expected)


def test_linear_cross_entropy_matches_reference_in_chunks() -> None:
    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float32, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float32, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    got = LinearCrossEntropy.apply(h, w, t, 8)
    ref = F.cross_entropy(h @ w.t(), t, reduction="sum")
    torch.testing.assert_close(got, ref)
    g1 = torch.autograd.grad(got * 2, (h, w))
    g2 = torch.autograd.grad(ref * 2, (h, w))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def reference_attention(q, k, v, lengths):  # type: ignore[no-untyped-def]
    rows, heads, length, dim = q.shape
    rep = heads // k.shape[1]
    out = torch.zeros(rows, length, heads, dim, dtype=q.dtype)
    for r, row in enumerate(lengths):
        at = 0
        for n in row:
            s = slice(at, at + n)
            o = F.scaled_dot_product_attention(
                q[r : r + 1, :, s],
                k[r : r + 1, :, s].repeat_interleave(rep, 1),
                v[r : r + 1, :, s].repeat_interleave(rep, 1),
                is_causal=True,
            )
            out[r, s] = o[0].transpose(0, 1)
            at += n
    return out


@pytest.mark.parametrize("math_width", [384, 0])  # explicit-matmul path and SDPA path
def test_varlen_attention_is_per_sample_causal_attention(math_width: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(kernels, "_MATH_MAX_WIDTH", math_width)
    torch.manual_seed(0)
    lengths = [[10, 20, 5], [40], [3, 3, 3]]
    q = torch.randn(3, 4, 40, 8, dtype=f64, requires_grad=True)
    k = torch.randn(3, 2, 40, 8, dtype=f64, requires_grad=True)
    v = torch.randn(3, 2, 40, 8, dtype=f64, requires_grad=True)
    module = torch.nn.Module()
    out, _ = varlen_attention_forward(module, q, k, v, None, onebox_layout=SegmentLayout.build(lengths, 40))
    ref = reference_attention(q, k, v, lengths)
    torch.testing.assert_close(out, ref)
    w = torch.randn_like(ref)
    got = torch.autograd.grad((out * w).sum(), (q, k, v))
    exp = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(got, exp, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_fast_lora_matches_peft(tiny_chat_model, dropout: float) -> None:  # type: ignore[no-untyped-def]
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def build(fast: bool):  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_chat_model, dtype=torch.float64)
        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear")
        )
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: perturb so the adapter matters
                torch.nn.init.normal_(p, std=0.1)
        if fast:
            assert kernels.enable_fast_lora(model) == 14  # 7 linears x 2 layers
        return model

    ids = torch.randint(0, 250, (2, 12))
    outs = []
    for fast in (False, True):
        model = build(fast)
        torch.manual_seed(1)
        loss = model(input_ids=ids, labels=ids).loss
        grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
        outs.append((loss, grads))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1], strict=True):
        torch.testing.assert_close(a, b)
