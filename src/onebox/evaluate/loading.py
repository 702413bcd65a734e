"""Load a model directory (plus an optional LoRA adapter) ready for evaluation.

The adapter is merged in fp32 and only then cast to the compute dtype: merging LoRA deltas
into bf16 weights rounds them away, and a merged model runs as fast as the base model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onebox.errors import ModelLoadError, OneboxError

DTYPES = ("auto", "float32", "bfloat16", "float16")
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def resolve_dtype(dtype: str = "auto", device: str = "cpu") -> Any:
    """Map a dtype name to a ``torch.dtype``; ``auto`` is bf16 where the hardware does bf16 fast.

    On CPU that means the oneDNN bf16 kernels are usable (AVX512-BF16 or AMX); elsewhere
    (older CPUs emulate bf16 slowly) auto falls back to fp32.
    """
    import torch

    name = _ALIASES.get(dtype.lower(), dtype.lower())
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if name != "auto":
        return getattr(torch, name)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    try:
        fast_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        fast_bf16 = False
    return torch.bfloat16 if fast_bf16 else torch.float32


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(model_dir: Path, adapter_dir: Path | None = None) -> Any:
    """The tokenizer saved next to the adapter if there is one (training may change it), else the model's.

    A tokenizer without a pad token gets its EOS token as pad token: batching needs one, and
    padded positions are always masked out.
    """
    from transformers import AutoTokenizer

    source = Path(model_dir)
    if adapter_dir is not None and any(
        (Path(adapter_dir) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")
    ):
        source = Path(adapter_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except Exception as exc:  # a missing or broken tokenizer surfaces as many exception types
        raise ModelLoadError(
            f"could not load a tokenizer from {source}: {exc}", path=str(source), reason=str(exc)
        ) from exc
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_for_eval(
    model_dir: Path,
    adapter_dir: Path | None = None,
    dtype: str = "auto",
    *,
    device: str | None = None,
) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)``: the causal LM in eval mode with the adapter applied.

    ``dtype`` is ``auto`` (bf16 where fast, else fp32), ``float32``, ``bfloat16`` or ``float16``;
    ``device`` defaults to CUDA when available. Weight files may be sealed pointers (an encrypted
    store's checkout), decrypted into memory. Any failure raises :class:`ModelLoadError` naming the
    path and the reason (or the store's own error for a sealed weight it cannot give).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from onebox.models.pretrained import load_pretrained

    model_dir = Path(model_dir)
    device = device or default_device()
    try:
        target = resolve_dtype(dtype, device)
    except ValueError as exc:
        raise ModelLoadError(str(exc), dtype=dtype) from exc
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"{model_dir} is not a model directory (no config.json)", path=str(model_dir))
    if adapter_dir is not None and not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"{adapter_dir} is not an adapter directory (no adapter_config.json)", path=str(adapter_dir)
        )
    tokenizer = load_tokenizer(model_dir, adapter_dir)
    # With an adapter, load in fp32 so the merge happens at full precision, then cast.
    load_dtype = torch.float32 if adapter_dir is not None else target
    try:
        model = load_pretrained(AutoModelForCausalLM, model_dir, dtype=load_dtype)
    except OneboxError:
        raise
    except Exception as exc:  # transformers/safetensors raise many types; all mean "cannot load"
        raise ModelLoadError(f"could not load {model_dir}: {exc}", path=str(model_dir)) from exc
    if adapter_dir is not None:
        model = _apply_adapter(model, Path(adapter_dir), tokenizer)
        model = model.to(target)
    model = model.to(device)
    model.eval()
    return model, tokenizer


def _apply_adapter(model: Any, adapter_dir: Path, tokenizer: Any) -> Any:
    from onebox.models.pretrained import load_adapter

    embeddings = model.get_input_embeddings()
    if embeddings is not None and len(tokenizer) > embeddings.weight.shape[0]:
        # The adapter was trained with added tokens; its saved embeddings expect the larger table.
        model.resize_token_embeddings(len(tokenizer))
    try:
        peft_model = load_adapter(model, adapter_dir, is_trainable=False)
    except OneboxError:
        raise
    except Exception as exc:  # peft raises many types; all mean "cannot apply"
        raise ModelLoadError(
            f"could not apply the adapter {adapter_dir}: {exc}", path=str(adapter_dir)
        ) from exc
    try:
        return peft_model.merge_and_unload()
    except (AttributeError, NotImplementedError, ValueError):
        return peft_model  # adapter types that cannot merge still work, only slower
