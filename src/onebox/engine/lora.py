"""Multi-LoRA: many adapters of one base served in the same batch, loaded and unloaded live.

The base weights are never merged, so each row of a step can use a different adapter (or none).
An adapter's q/k/v and gate/up matrices are stacked to match the fused projections of
:mod:`onebox.engine.llama` (A stacked, B block-diagonal), so one step applies one small
``(x @ A^T) @ B^T`` pair per fused projection per adapter present, on that adapter's rows only.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from onebox.engine.llama import ArchConfig
from onebox.errors import ErrorList, InvalidInputError, NotFoundError

_MODULES = {
    "q_proj": ("qkv", 0),
    "k_proj": ("qkv", 1),
    "v_proj": ("qkv", 2),
    "o_proj": ("o", 0),
    "gate_proj": ("gu", 0),
    "up_proj": ("gu", 1),
    "down_proj": ("down", 0),
}
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)\.lora_([AB])\.weight$")


@dataclass
class Adapter:
    """One loaded adapter: per (layer, fused module) the stacked ``A^T`` ``[in, sum r]`` and the
    block-diagonal ``B^T`` ``[sum r, out]`` with the scale folded in. Stored transposed and
    contiguous because oneDNN is several times slower on a rank-r ``F.linear`` than on this layout."""

    name: str
    path: Path
    rank: int
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]

    @property
    def nbytes(self) -> int:
        return sum(
            a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in self.weights.values()
        )


def _out_sizes(cfg: ArchConfig) -> dict[str, list[int]]:
    hd = cfg.head_dim
    return {
        "qkv": [cfg.num_heads * hd, cfg.num_kv_heads * hd, cfg.num_kv_heads * hd],
        "o": [cfg.hidden_size],
        "gu": [cfg.intermediate_size, cfg.intermediate_size],
        "down": [cfg.hidden_size],
    }


def _in_size(cfg: ArchConfig, fused: str) -> int:
    return (
        cfg.intermediate_size
        if fused == "down"
        else (cfg.num_heads * cfg.head_dim if fused == "o" else cfg.hidden_size)
    )


def _tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of one safetensors file; a sealed pointer (encrypted store) is decrypted in
    memory, so adapter weights never exist as a plaintext file."""
    from safetensors import safe_open
    from safetensors.torch import load

    from onebox.security.sealed import read_pointer

    data = read_pointer(path)
    if data is not None:
        yield from load(data).items()
        return
    with safe_open(str(path), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
            yield key, fh.get_tensor(key)


def load_adapter(
    name: str, path: Path, cfg: ArchConfig, dtype: torch.dtype, device: torch.device, max_rank: int
) -> Adapter:
    """Read a PEFT LoRA directory and check it fits the base; all problems reported at once."""
    errs = ErrorList()
    conf_path = path / "adapter_config.json"
    try:
        conf = json.loads(conf_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(
            f"{path} is not a LoRA adapter: cannot read adapter_config.json ({exc})"
        ) from exc
    if conf.get("peft_type", "LORA") != "LORA":
        errs.add("peft_type", f"{conf.get('peft_type')} adapters are not supported", "use a LoRA adapter")
    if conf.get("use_dora"):
        errs.add("use_dora", "DoRA adapters are not supported by the engine", "merge it into the base first")
    if conf.get("modules_to_save"):
        errs.add(
            "modules_to_save", "adapters that replace whole modules cannot be served per request", "merge it"
        )
    if conf.get("bias", "none") != "none" or conf.get("lora_bias"):
        errs.add("bias", "LoRA bias terms are not supported", "train with bias='none'")
    if conf.get("fan_in_fan_out"):
        errs.add("fan_in_fan_out", "fan_in_fan_out adapters are not supported")
    errs.raise_if_any(f"adapter {name!r} cannot be served", InvalidInputError)

    files = sorted(path.glob("adapter_model*.safetensors"))
    if not files:
        raise InvalidInputError(f"{path} has no adapter_model.safetensors")
    raw: dict[tuple[int, str, str], torch.Tensor] = {}
    for f in files:
        for key, tensor in _tensors(f):
            m = _KEY.search(key)
            if m is None:
                errs.add("weights", f"unexpected tensor {key}")
                continue
            raw[(int(m.group(1)), m.group(2), m.group(3))] = tensor
    alpha = float(conf.get("lora_alpha", 8))
    alpha_pattern: dict[str, float] = conf.get("alpha_pattern") or {}
    rslora = bool(conf.get("use_rslora"))
    outs = _out_sizes(cfg)
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    max_r = 0
    per_fused: dict[tuple[int, str], dict[int, tuple[torch.Tensor, torch.Tensor, float]]] = {}
    for (layer, module, ab), t in raw.items():
        if ab != "A":
            continue
        if module not in _MODULES or layer >= cfg.num_layers:
            errs.add("target_modules", f"layer {layer} {module} does not exist in the base model")
            continue
        b = raw.get((layer, module, "B"))
        if b is None:
            errs.add("weights", f"layer {layer} {module}: lora_B missing")
            continue
        fused, idx = _MODULES[module]
        r = t.shape[0]
        exp_in, exp_out = _in_size(cfg, fused), outs[fused][idx]
        if t.shape[1] != exp_in or b.shape != (exp_out, r):
            errs.add(
                "weights",
                f"layer {layer} {module}: shapes A{tuple(t.shape)} B{tuple(b.shape)} do not fit the base "
                f"({exp_out}x{exp_in})",
                "the adapter was trained on a different base model",
            )
            continue
        if r > max_rank:
            errs.add("r", f"rank {r} exceeds max_lora_rank {max_rank}", "raise max_lora_rank")
            continue
        a_alpha = float(next((v for k, v in alpha_pattern.items() if k in f"layers.{layer}.{module}"), alpha))
        scale = a_alpha / (math.sqrt(r) if rslora else r)
        per_fused.setdefault((layer, fused), {})[idx] = (t, b, scale)
        max_r = max(max_r, r)
    if not per_fused:
        errs.add("weights", "no LoRA weights found")
    errs.raise_if_any(f"adapter {name!r} does not fit this base model", InvalidInputError)

    for (layer, fused), parts in per_fused.items():
        sizes = outs[fused]
        a_blocks = []
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        total_r = sum(p[0].shape[0] for p in parts.values())
        big_b = torch.zeros(sum(sizes), total_r)
        col = 0
        for idx in sorted(parts):
            a, b, scale = parts[idx]
            r = a.shape[0]
            a_blocks.append(a.float())
            big_b[offsets[idx] : offsets[idx] + sizes[idx], col : col + r] = b.float() * scale
            col += r
        weights[(layer, fused)] = (
            torch.cat(a_blocks).t().to(device=device, dtype=dtype).contiguous(),
            big_b.t().to(device=device, dtype=dtype).contiguous(),
        )
    return Adapter(name=name, path=path, rank=max_r, weights=weights)


class LoraRegistry:
    """The adapters loaded in one engine. Loading happens on the caller's thread; the step thread
    only reads the dict, so a swap is atomic from its point of view."""

    def __init__(
        self, cfg: ArchConfig, dtype: torch.dtype, device: torch.device, max_loras: int, max_rank: int
    ):
        self.cfg, self.dtype, self.device = cfg, dtype, device
        self.max_loras, self.max_rank = max_loras, max_rank
        self._adapters: dict[str, Adapter] = {}
        self._lock = threading.Lock()

    def load(self, name: str, path: Path) -> Adapter:
        adapter = load_adapter(name, Path(path), self.cfg, self.dtype, self.device, self.max_rank)
        with self._lock:
            if name not in self._adapters and len(self._adapters) >= self.max_loras:
                raise InvalidInputError(
                    f"cannot load adapter {name!r}: {self.max_loras} adapters already loaded (max_loras)",
                    problems=[],
                )
            self._adapters = {**self._adapters, name: adapter}
        return adapter

    def unload(self, name: str) -> None:
        with self._lock:
            if name not in self._adapters:
                raise NotFoundError(f"adapter {name!r} is not loaded")
            self._adapters = {k: v for k, v in self._adapters.items() if k != name}

    def get(self, name: str) -> Adapter | None:
        return self._adapters.get(name)

    def names(self) -> list[str]:
        return sorted(self._adapters)


class StepLora:
    """The LoRA work of one step: which rows use which adapter."""

    def __init__(self, groups: list[tuple[Adapter, torch.Tensor | None]]):
        # rows None means "every row of the step" (the common single-adapter batch)
        self.groups = groups

    def apply(self, layer: int, module: str, x: torch.Tensor, out: torch.Tensor) -> None:
        for adapter, rows in self.groups:
            w = adapter.weights.get((layer, module))
            if w is None:
                continue
            at, bt = w
            if rows is None:
                out += (x @ at) @ bt
            else:
                out.index_add_(0, rows, (x.index_select(0, rows) @ at) @ bt)
