"""Loading the model to train: precision, LoRA/QLoRA/full, attention, memory estimate.

Precision policy (measured on the 2-core AVX512-BF16 reference box, SmolLM2-135M, LoRA r=16):
bf16 matmuls run ~4x faster than fp32 there, and storing the *frozen* base in bf16 (instead of
fp32 weights under autocast, which re-casts every weight on every forward) removes the casts too.
The trainable LoRA weights and the optimizer state stay fp32, so updates are not lost to bf16
rounding. Full fine-tuning keeps fp32 weights and runs the matmuls under bf16 autocast. fp16 (GPUs
without bf16) uses a gradient scaler.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from onebox.errors import ConfigError, DependencyMissingError, ErrorList, ModelLoadError, Problem
from onebox.train.config import SFTConfig
from onebox.train.kernels import VARLEN_ATTENTION, enable_fast_lora, register_varlen_attention

log = logging.getLogger(__name__)

GIB = 1024**3


@dataclass(frozen=True)
class Precision:
    """How a run computes: the name, the dtype of frozen weights and whether autocast/scaling apply."""

    name: str
    dtype: torch.dtype
    """Dtype the weights are loaded in (frozen LoRA base: the compute dtype; full: fp32 masters)."""
    compute: torch.dtype
    autocast: bool
    scaler: bool
    bf16_speedup: float | None = None


@functools.cache
def cpu_bf16_speedup() -> float:
    """Measured speed of a bf16 over an fp32 matmul on this CPU (1.0 without native bf16).

    ``auto`` precision picks bf16 on a CPU only where this shows a real gain: CPUs without
    AVX512-BF16/AMX emulate bf16 and are slower than fp32.
    """
    if not torch.backends.mkldnn.is_available():
        return 1.0
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return 1.0
    except (AttributeError, RuntimeError):
        return 1.0

    def best(dtype: torch.dtype) -> float:
        a = torch.randn(256, 512, dtype=dtype)
        b = torch.randn(512, 512, dtype=dtype)
        a @ b
        times = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(4):
                a @ b
            times.append(time.perf_counter() - t)
        return min(times)

    return best(torch.float32) / max(best(torch.bfloat16), 1e-9)


def resolve_precision(requested: str, device: torch.device, method: str) -> Precision:
    """Turn ``auto|bf16|fp16|fp32`` into a :class:`Precision` for ``device``; bad pairs raise."""
    cuda = device.type == "cuda"
    speedup = None
    if requested == "auto":
        if cuda:
            requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            speedup = cpu_bf16_speedup()
            requested = "bf16" if speedup >= 1.3 and method != "qlora" else "fp32"
    if requested == "fp16" and not cuda:
        raise ConfigError(
            "invalid SFT config",
            problems=[Problem("precision", "fp16 needs a CUDA GPU", "use bf16 (or auto) on a CPU")],
        )
    if requested == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            "invalid SFT config",
            problems=[Problem("precision", "this GPU has no bf16", "use fp16 (or auto)")],
        )
    if requested == "fp32":
        return Precision("fp32", torch.float32, torch.float32, autocast=False, scaler=False)
    dtype = torch.bfloat16 if requested == "bf16" else torch.float16
    if method == "lora" and requested == "bf16":
        # frozen base in bf16, adapter in fp32: no autocast needed (the kernels cast per call)
        return Precision("bf16", dtype, dtype, autocast=False, scaler=False, bf16_speedup=speedup)
    # full: fp32 master weights under autocast; qlora: 4-bit base computing in the 16-bit dtype
    return Precision(
        requested,
        torch.float32 if method == "full" else dtype,
        dtype,
        autocast=True,
        scaler=requested == "fp16",
        bf16_speedup=speedup,
    )


def check_runtime(config: SFTConfig, device: torch.device) -> None:
    """Fail early, with the fix, on what this machine cannot run (QLoRA needs CUDA + bitsandbytes)."""
    if config.method == "qlora":
        if device.type != "cuda":
            raise DependencyMissingError(
                "QLoRA needs a CUDA GPU (4-bit bitsandbytes kernels); this machine has none. "
                "Use method: lora (bf16 base + LoRA) on a CPU.",
                problems=[Problem("method", "qlora needs CUDA", "use method: lora")],
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise DependencyMissingError(
                "QLoRA needs the bitsandbytes package: pip install 'onebox[gpu]'",
                problems=[Problem("method", "bitsandbytes is not installed", "pip install 'onebox[gpu]'")],
            ) from exc


def load_tokenizer(base_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {base_dir}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_config(base_dir: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(base_dir))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{base_dir} is not a loadable model: {exc}") from exc


def linear_names(model: torch.nn.Module) -> list[str]:
    """Short names of the linear layers LoRA can target (``q_proj``, ``down_proj``, ...)."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def check_target_modules(model: torch.nn.Module, targets: str | list[str]) -> None:
    """Raise a ConfigError naming the targets that match no module, with the names that exist."""
    if isinstance(targets, str):
        return
    module_names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in module_names)]
    if missing:
        available = ", ".join(n for n in linear_names(model) if n != "lm_head")
        raise ConfigError(
            "invalid SFT config",
            problems=[
                Problem(
                    "target_modules",
                    f"{', '.join(missing)} not found in the model",
                    f"use 'all-linear' or names among: {available}",
                )
            ],
        )


def attention_implementation(config: SFTConfig) -> str:
    if config.attention in ("auto", "varlen"):
        register_varlen_attention()
        return VARLEN_ATTENTION
    return config.attention


@dataclass
class LoadedModel:
    """The model to train and facts the loop, the checkpoints and the metrics need."""

    model: torch.nn.Module
    peft: bool
    trainable_params: int
    total_params: int
    attn: str
    fast_lora_layers: int = 0


def load_model(base_dir: Path, config: SFTConfig, precision: Precision, device: torch.device) -> LoadedModel:
    """Load the base, attach LoRA (or unfreeze it all), set precision, checkpointing, compile.

    The base's weight files may be sealed pointers (an encrypted store's checkout): they are
    decrypted into memory, so the base never exists as a plaintext file.
    """
    from transformers import AutoModelForCausalLM

    from onebox.models.pretrained import load_pretrained

    attn = attention_implementation(config)
    kwargs: dict[str, Any] = {"dtype": precision.dtype, "attn_implementation": attn}
    if config.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=precision.dtype,
        )
        kwargs["device_map"] = {"": device}
    try:
        model = load_pretrained(AutoModelForCausalLM, base_dir, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load {base_dir} for training: {exc}") from exc
    model.config.use_cache = False
    if config.method != "qlora":
        model.to(device)
    total = sum(p.numel() for p in model.parameters())
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        loaded = LoadedModel(model, False, total, total, attn)
    else:
        from peft import LoraConfig, get_peft_model

        check_target_modules(model, config.target_modules)
        if config.method == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=config.gradient_checkpointing
            )
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise ConfigError(
                "invalid SFT config",
                problems=[Problem("target_modules", str(exc), "use 'all-linear'")],
            ) from exc
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        fast = enable_fast_lora(model) if config.method == "lora" else 0
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        loaded = LoadedModel(model, True, trainable, total, attn, fast)
    if config.compile:
        decoder = _decoder(loaded.model)
        for layer in getattr(decoder, "layers", []):
            layer.compile(dynamic=True)
    return loaded


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


# --------------------------------------------------------------------------- memory


def machine_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def estimate_memory(
    model_config: Any,
    config: SFTConfig,
    precision: Precision,
    *,
    total_params: int,
    trainable_params: int,
    weight_bytes: int,
    longest_sample: int,
) -> dict[str, int]:
    """Estimated peak bytes of one training process, by part.

    Activations per token and layer are ``(18 * hidden + 7 * intermediate)`` values: fitted to the
    measured peak of SmolLM2-135M at 1k-4k tokens per micro-batch (within 10%); checkpointing keeps
    one hidden state per layer plus one layer's full set. Attention scores of the per-sample kernel
    grow with each sample's length, bounded here by the longest sample.
    """
    get = lambda k, d=0: getattr(model_config, k, None) or d  # noqa: E731
    hidden = get("hidden_size", 1024)
    inter = get("intermediate_size", 4 * hidden)
    layers = get("num_hidden_layers", 12)
    heads = get("num_attention_heads", 8)
    vocab = get("vocab_size", 32000)
    act = 4 if precision.name == "fp32" else 2
    tokens = config.micro_batch_size * config.max_seq_len
    per_layer = tokens * (18 * hidden + 7 * inter) * act
    span = min(config.max_seq_len, max(1, longest_sample))
    scores = config.micro_batch_size * config.max_seq_len * span * heads * act * 2
    if config.gradient_checkpointing:
        activations = tokens * hidden * act * layers + per_layer + scores
    else:
        activations = (per_layer + scores) * layers
    grads = trainable_params * 4
    master = trainable_params * 4 if precision.autocast and config.method == "full" else 0
    optimizer = trainable_params * 8
    logits = 512 * vocab * 4 * 3
    runtime = 700 * 1024**2 + weight_bytes  # interpreter, libraries, the mapped checkpoint while loading
    parts = {
        "weights": weight_bytes + master,
        "gradients": grads,
        "optimizer": optimizer,
        "activations": activations,
        "logits": logits,
        "runtime": runtime,
    }
    parts["total"] = sum(parts.values())
    return parts


def check_memory(estimate: dict[str, int], config: SFTConfig, device: torch.device) -> None:
    """Refuse a batch whose estimated peak exceeds the budget; say how to make it fit."""
    if config.memory_budget_gb is not None:
        budget, where = int(config.memory_budget_gb * GIB), f"memory_budget_gb={config.memory_budget_gb}"
    else:
        budget, where = machine_memory_bytes(device), "this machine's memory"
    if estimate["total"] <= budget:
        return
    fixed = estimate["total"] - estimate["activations"]
    e = ErrorList()
    need = estimate["total"] / GIB
    if fixed >= budget:
        e.add(
            "method" if config.method == "full" else "memory_budget_gb",
            f"weights and optimizer state alone need {fixed / GIB:.1f} GiB, more than {where}",
            "use method: lora (or qlora on CUDA), or more memory",
        )
    else:
        per_row = estimate["activations"] / config.micro_batch_size
        fits = int((budget - fixed) // per_row)
        if fits >= 1:
            e.add(
                "micro_batch_size",
                f"{config.micro_batch_size} rows of {config.max_seq_len} tokens need ~{need:.1f} GiB, "
                f"more than {where}",
                f"use micro_batch_size <= {fits} and raise grad_accum to keep the batch",
            )
        else:
            e.add(
                "max_seq_len",
                f"even one row of {config.max_seq_len} tokens needs ~{need:.1f} GiB, more than {where}",
                "lower max_seq_len",
            )
        if not config.gradient_checkpointing:
            e.add("gradient_checkpointing", "is off", "turn it on to keep far fewer activations")
    e.raise_if_any(f"the batch cannot fit the memory budget (estimated {need:.1f} GiB)")
