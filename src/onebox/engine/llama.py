"""Our own forward pass for the Llama family (Llama, Mistral, Qwen2, Qwen3 dense) over a flat token
batch, reading and writing the slot KV cache.

Why not transformers' modules: a continuous-batching step mixes decode tokens of many sequences
with prompt chunks of others; the weights are applied to all of them as one ``[tokens, hidden]``
matrix (one GEMM per projection, q/k/v and gate/up fused), and only attention is split per
sequence. The arithmetic mirrors Hugging Face's Llama (RMSNorm in fp32, rotate-half RoPE, SDPA
with ``head_dim**-0.5``) so that greedy output in fp32 matches ``generate`` token for token.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from onebox.engine.kv_cache import KVCache
from onebox.errors import ModelLoadError, OneboxError

SUPPORTED = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}


@dataclass(frozen=True)
class ArchConfig:
    """The facts of a checkpoint the forward pass needs (read from ``config.json``)."""

    architecture: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    qk_norm: bool
    sliding_window: int | None
    eos_token_ids: tuple[int, ...]
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_dir(cls, model_dir: Path) -> ArchConfig:
        path = model_dir / "config.json"
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {path}: {exc}") from exc
        archs = cfg.get("architectures") or []
        arch = next((a for a in archs if a in SUPPORTED), None)
        if arch is None:
            raise ModelLoadError(
                f"the onebox engine does not run {archs or 'this architecture'} yet; "
                f"supported: {', '.join(sorted(SUPPORTED))}"
            )
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        eos = cfg.get("eos_token_id")
        gen = model_dir / "generation_config.json"
        if gen.is_file():
            with contextlib.suppress(ValueError):
                eos = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id", eos)
        eos_ids = tuple(eos if isinstance(eos, list) else ([eos] if eos is not None else []))
        window = (
            cfg.get("sliding_window") if cfg.get("use_sliding_window", arch == "MistralForCausalLM") else None
        )
        return cls(
            architecture=arch,
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            vocab_size=int(cfg["vocab_size"]),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", arch == "Qwen2ForCausalLM")),
            qk_norm=arch == "Qwen3ForCausalLM",
            sliding_window=int(window) if window else None,
            eos_token_ids=tuple(int(e) for e in eos_ids),
            raw=cfg,
        )


def _load_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open
    from safetensors.torch import load as load_safetensors_bytes

    from onebox.security.sealed import read_pointer

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no *.safetensors weights in {model_dir}")
    out: dict[str, torch.Tensor] = {}
    try:
        for f in files:
            sealed = read_pointer(f)  # an encrypted store's weights: decrypted in memory, no file
            if sealed is not None:
                out.update(load_safetensors_bytes(sealed))
                continue
            with safe_open(str(f), framework="pt") as fh:
                for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                    out[key] = fh.get_tensor(key)
    except OneboxError:
        raise
    except Exception as exc:  # safetensors raises its own error types
        raise ModelLoadError(f"cannot read weights in {model_dir}: {exc}") from exc
    return out


def rope_inv_freq(cfg: ArchConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and attention scaling, as transformers computes them for this config."""
    params = cfg.raw.get("rope_parameters") or cfg.raw.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", cfg.raw.get("rope_theta", 10000.0)))
    if rope_type == "default":
        dim = cfg.head_dim
        inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim))
        return inv, 1.0
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ModelLoadError(f"unsupported rope_type {rope_type!r}")
    hf_cfg = AutoConfig.for_model(
        cfg.raw["model_type"], **{k: v for k, v in cfg.raw.items() if k != "model_type"}
    )
    inv, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_cfg, torch.device("cpu"))
    return inv.float(), float(scaling)


@dataclass
class Int8Weight:
    """Per-output-channel symmetric int8 copy of a ``[out, in]`` weight (weight-only)."""

    q: torch.Tensor  # [out, in] int8
    scale: torch.Tensor  # [out] in the compute dtype

    @classmethod
    def of(cls, w: torch.Tensor) -> Int8Weight:
        wf = w.float()
        scale = wf.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        q = torch.round(wf / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        return cls(q, scale.to(w.dtype))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, self.q, self.scale)


@dataclass
class Layer:
    ln1: torch.Tensor
    wqkv: torch.Tensor
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    ln2: torch.Tensor
    wgu: torch.Tensor
    wdown: torch.Tensor
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None
    q8: dict[str, Int8Weight] | None = None


@dataclass
class AttnBatch:
    """How the flat batch maps onto sequences, prepared once per step by the runner."""

    positions: torch.Tensor  # [N] long
    slots: torch.Tensor  # [N] long, the slot each token's K/V goes to
    n_decode: int
    decode_slots: torch.Tensor | None  # [Bd] long, sorted
    decode_dense: bool  # decode_slots == arange(Bd): no scatter needed
    decode_span: int  # max decode slot + 1
    decode_len: int  # longest decode context
    decode_mask: torch.Tensor | None  # [span, 1, 1, decode_len] bool
    prefills: list[tuple[int, int, int, int, torch.Tensor]]  # (row, n, slot, start, mask [1|nkv,g*n,start+n])


class LoraHook(Protocol):
    """Adds the LoRA deltas of a step's adapters to a projection's output (see engine/lora.py)."""

    def apply(self, layer: int, module: str, x: torch.Tensor, out: torch.Tensor) -> None: ...


class LlamaModel:
    """Weights as plain tensors plus a functional forward (no nn.Module overhead per call)."""

    def __init__(
        self, cfg: ArchConfig, tensors: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device
    ):
        self.cfg = cfg
        self.dtype = dtype
        self.device = device

        def take(name: str) -> torch.Tensor:
            try:
                t = tensors.pop(name)
            except KeyError as exc:
                raise ModelLoadError(f"weight {name} missing from the checkpoint") from exc
            return t.to(device=device, dtype=dtype).contiguous()

        def maybe(name: str) -> torch.Tensor | None:
            return take(name) if name in tensors else None

        self.embed = take("model.embed_tokens.weight")
        self.layers: list[Layer] = []
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            q, k, v = (
                take(p + "self_attn.q_proj.weight"),
                take(p + "self_attn.k_proj.weight"),
                take(p + "self_attn.v_proj.weight"),
            )
            bias = None
            if cfg.attention_bias:
                bq, bk, bv = (
                    maybe(p + "self_attn.q_proj.bias"),
                    maybe(p + "self_attn.k_proj.bias"),
                    maybe(p + "self_attn.v_proj.bias"),
                )
                if bq is not None and bk is not None and bv is not None:
                    bias = torch.cat([bq, bk, bv])
            self.layers.append(
                Layer(
                    ln1=take(p + "input_layernorm.weight"),
                    wqkv=torch.cat([q, k, v]).contiguous(),
                    bqkv=bias,
                    wo=take(p + "self_attn.o_proj.weight"),
                    ln2=take(p + "post_attention_layernorm.weight"),
                    wgu=torch.cat(
                        [take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")]
                    ).contiguous(),
                    wdown=take(p + "mlp.down_proj.weight"),
                    q_norm=maybe(p + "self_attn.q_norm.weight") if cfg.qk_norm else None,
                    k_norm=maybe(p + "self_attn.k_norm.weight") if cfg.qk_norm else None,
                )
            )
        self.norm = take("model.norm.weight")
        if cfg.tie_word_embeddings or "lm_head.weight" not in tensors:
            self.lm_head = self.embed
        else:
            self.lm_head = take("lm_head.weight")
        inv_freq, scaling = rope_inv_freq(cfg)
        self._inv_freq = inv_freq
        self._rope_scaling = scaling
        self.cos = torch.empty(0)
        self.sin = torch.empty(0)
        self.lm_head_q8: Int8Weight | None = None
        self.int8_max_tokens = 0
        self.math_attention = dtype != torch.float32
        """bf16/fp16 prompt attention as plain GEMMs with additive fp32 masks (see :meth:`_math`)."""

    def quantize_int8(self, max_tokens: int) -> None:
        """Add int8 copies of the projections and the LM head for steps of <= ``max_tokens``."""
        if self.device.type != "cpu":
            raise ModelLoadError("int8 weight-only decoding is implemented for CPUs only")
        for ly in self.layers:
            ly.q8 = {
                "qkv": Int8Weight.of(ly.wqkv),
                "o": Int8Weight.of(ly.wo),
                "gu": Int8Weight.of(ly.wgu),
                "down": Int8Weight.of(ly.wdown),
            }
        self.lm_head_q8 = Int8Weight.of(self.lm_head)
        self.int8_max_tokens = max_tokens

    @classmethod
    def load(cls, model_dir: Path, dtype: torch.dtype, device: torch.device) -> LlamaModel:
        cfg = ArchConfig.from_dir(model_dir)
        return cls(cfg, _load_tensors(model_dir), dtype, device)

    def prepare_rope(self, max_len: int) -> None:
        pos = torch.arange(max_len, dtype=torch.int64).float()
        freqs = pos[:, None] * self._inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * self._rope_scaling).to(device=self.device, dtype=self.dtype)
        self.sin = (emb.sin() * self._rope_scaling).to(device=self.device, dtype=self.dtype)

    @property
    def weight_bytes(self) -> int:
        ts = [self.embed, self.norm] + ([] if self.lm_head is self.embed else [self.lm_head])
        for ly in self.layers:
            ts += [t for t in (ly.ln1, ly.wqkv, ly.bqkv, ly.wo, ly.ln2, ly.wgu, ly.wdown) if t is not None]
        return sum(t.numel() * t.element_size() for t in ts)

    # -- forward -----------------------------------------------------------------------------

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps)
        return w * h.to(x.dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rot * sin

    def forward(
        self,
        input_ids: torch.Tensor,
        batch: AttnBatch,
        kv: KVCache,
        sample_rows: torch.Tensor,
        lora: LoraHook | None = None,
    ) -> torch.Tensor:
        """Run one step over ``N`` flat tokens; return the final hidden states of ``sample_rows``."""
        cfg = self.cfg
        n = input_ids.shape[0]
        nh, nkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        g = nh // nkv
        cos = self.cos[batch.positions].unsqueeze(1)
        sin = self.sin[batch.positions].unsqueeze(1)
        h = self.embed[input_ids]
        q_size, kv_size = nh * hd, nkv * hd
        small = n <= self.int8_max_tokens
        for li, ly in enumerate(self.layers):
            q8 = ly.q8 if small else None
            x = self._rms(h, ly.ln1)
            if q8 is not None:
                qkv = q8["qkv"](x)
                if ly.bqkv is not None:
                    qkv = qkv + ly.bqkv
            else:
                qkv = F.linear(x, ly.wqkv, ly.bqkv)
            if lora is not None:
                lora.apply(li, "qkv", x, qkv)
            q = qkv[:, :q_size].view(n, nh, hd)
            k = qkv[:, q_size : q_size + kv_size].view(n, nkv, hd)
            v = qkv[:, q_size + kv_size :].view(n, nkv, hd)
            if ly.q_norm is not None and ly.k_norm is not None:
                q = self._rms(q, ly.q_norm)
                k = self._rms(k, ly.k_norm)
            q = self._rotate(q, cos, sin)
            k = self._rotate(k, cos, sin)
            kc, vc = kv.k[li], kv.v[li]
            kc[batch.slots, :, batch.positions] = k
            vc[batch.slots, :, batch.positions] = v
            attn = self._attention(q, kc, vc, batch, n, g)
            o = q8["o"](attn) if q8 is not None else F.linear(attn, ly.wo)
            if lora is not None:
                lora.apply(li, "o", attn, o)
            h = h + o
            x = self._rms(h, ly.ln2)
            gu = q8["gu"](x) if q8 is not None else F.linear(x, ly.wgu)
            if lora is not None:
                lora.apply(li, "gu", x, gu)
            inter = cfg.intermediate_size
            a = F.silu(gu[:, :inter]) * gu[:, inter:]
            d = q8["down"](a) if q8 is not None else F.linear(a, ly.wdown)
            if lora is not None:
                lora.apply(li, "down", a, d)
            h = h + d
        return self._rms(h.index_select(0, sample_rows), self.norm)

    def _attention(
        self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, b: AttnBatch, n: int, g: int
    ) -> torch.Tensor:
        cfg = self.cfg
        nh, nkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        out = q.new_empty(n, nh * hd)
        nd = b.n_decode
        if nd:
            # One call for all decodes: each kv head's g query heads act as g query rows.
            qd = q[:nd].reshape(nd, nkv, g, hd)
            od = self._span_decode(qd, kc, vc, b)
            out[:nd] = od.reshape(nd, nh * hd)
        for row, cnt, slot, start, mask in b.prefills:
            qp = q[row : row + cnt].view(cnt, nkv, g, hd).permute(1, 2, 0, 3).reshape(nkv, g * cnt, hd)
            kp = kc[slot, :, : start + cnt]
            vp = vc[slot, :, : start + cnt]
            if self.math_attention:
                op = self._math(qp, kp.contiguous(), vp.contiguous(), mask)
            else:
                op = F.scaled_dot_product_attention(qp[None], kp[None], vp[None], attn_mask=mask)
            out[row : row + cnt] = op.view(nkv, g, cnt, hd).permute(2, 0, 1, 3).reshape(cnt, nh * hd)
        return out

    def _span_decode(self, qd: Tensor, kc: Tensor, vc: Tensor, b: AttnBatch) -> Tensor:
        """Decode attention over the slot range ``0..span-1`` read in place (holes of free slots get
        zero queries and are dropped). SDPA here, also in bf16: streaming the cache in place beat
        both a GEMM path over contiguous copies and a torch.compile'd fused loop in the engine."""
        nd = qd.shape[0]
        if not b.decode_dense:
            full = qd.new_zeros(b.decode_span, *qd.shape[1:])
            full[b.decode_slots] = qd
            qd = full
        kd = kc[: b.decode_span, :, : b.decode_len]
        vd = vc[: b.decode_span, :, : b.decode_len]
        od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=b.decode_mask)
        return od[b.decode_slots] if not b.decode_dense else od[:nd]

    def _math(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Attention as two batched GEMMs with an fp32 softmax and an additive mask.

        For prompt chunks on CPUs this beat SDPA's flash kernel 1.4-2.6x in bf16 (40-250 tokens);
        fp32 keeps SDPA so that greedy output matches Hugging Face exactly.
        """
        s = torch.matmul(q, k.transpose(-1, -2)).float().mul_(self.cfg.head_dim**-0.5)
        if mask is not None:
            s.add_(mask)
        return torch.matmul(torch.softmax(s, dim=-1).to(q.dtype), v)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head_q8 is not None and hidden.shape[0] <= self.int8_max_tokens:
            return self.lm_head_q8(hidden).float()
        return F.linear(hidden, self.lm_head).float()
