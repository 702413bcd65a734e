"""The fused decode-attention kernel computes what SDPA computes, eager and compiled."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from onebox.engine.attention import compiled_decode_attention, decode_attention


def _inputs(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(3)
    b, kvh, g, d, cap = 5, 3, 3, 64, 40
    cache = torch.randn(2, b, kvh, cap, d, generator=gen).to(dtype)
    lens = torch.tensor([1, 7, 19, 30, 12])
    width = int(lens.max())
    k, v = cache[0, :, :, :width], cache[1, :, :, :width]  # strided views, as the runner passes
    q = torch.randn(b, kvh, g, d, generator=gen).to(dtype)
    allowed = (torch.arange(width)[None, :] < lens[:, None]).view(b, 1, 1, width)
    bias = torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))
    return q, k, v, allowed, bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_decode_attention_matches_sdpa(dtype: torch.dtype) -> None:
    q, k, v, allowed, bias = _inputs(dtype)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=allowed)
    got = decode_attention(q, k, v, bias).float()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got, want, atol=tol, rtol=tol)


@pytest.mark.slow
def test_compiled_decode_attention_matches_sdpa_or_is_absent() -> None:
    kernel = compiled_decode_attention(torch.bfloat16, head_dim=64, kv_heads=3, group=3)
    if kernel is None:
        pytest.skip("torch.compile cannot build here (no C++ compiler?); the engine uses SDPA")
    q, k, v, allowed, bias = _inputs(torch.bfloat16)
    with torch.inference_mode():
        got = kernel(q, k, v, bias).float()
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=allowed)
    assert torch.allclose(got, want, atol=2e-2, rtol=2e-2)
    assert compiled_decode_attention(torch.bfloat16, 64, 3, 3) is kernel  # built once per process
