"""The SFT recipe's options: one flat dataclass that round-trips through JSON and YAML.

Flat and plain on purpose: a job stores it as JSON, a user writes it as YAML
(``onebox/train/recipes/*.yaml``), the CLI maps flags onto it, and :meth:`SFTConfig.validate`
reports every bad field at once, each with its fix, before any model is loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onebox.errors import ConfigError, ErrorList

METHODS = ("lora", "full", "qlora")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
ATTENTIONS = ("auto", "varlen", "sdpa", "eager")
DISTRIBUTED = ("ddp", "fsdp")

# Fields that change the optimisation trajectory: a checkpoint written under other values cannot
# continue "the same loss curve", so resuming with a change is refused (see sft.py).
TRAJECTORY_FIELDS = (
    "method",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "max_seq_len",
    "packing",
    "epochs",
    "max_steps",
    "lr",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "precision",
    "seed",
)


_FLOAT_FIELDS = (
    "lora_alpha",
    "lora_dropout",
    "epochs",
    "lr",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "memory_budget_gb",
    "checkpoint_budget_gb",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class SFTConfig:
    """Supervised fine-tuning options; defaults are the CPU demo recipe (LoRA on all linear layers).

    Batch arithmetic: one optimizer step consumes ``micro_batch_size * grad_accum * nproc`` rows of
    ``max_seq_len`` tokens (packed samples) or samples (``packing=False``).
    """

    method: str = "lora"
    """``lora`` (adapter on a frozen base), ``full`` (all weights) or ``qlora`` (LoRA on a 4-bit
    base; needs CUDA and bitsandbytes)."""

    lora_r: int = 16
    """LoRA rank: adapter capacity. 8-64 is typical; higher learns more and costs more memory."""

    lora_alpha: int = 32
    """LoRA scale numerator (the update is scaled by ``lora_alpha / lora_r``)."""

    lora_dropout: float = 0.0
    """Dropout on the adapter input. 0 keeps the fast fused kernel and exact DDP/resume equality."""

    target_modules: str | list[str] = "all-linear"
    """Modules that get adapters: ``all-linear`` (every linear layer except the output head, what
    QLoRA recommends) or a list of module names such as ``["q_proj", "v_proj"]``."""

    max_seq_len: int = 512
    """Longest token sequence per row; longer samples are truncated (and counted). Must not exceed
    the model's context (``max_position_embeddings``)."""

    packing: bool = True
    """Pack several samples into each row. Attention never crosses samples and positions restart
    per sample, so the loss equals training the samples one by one, without padding waste."""

    micro_batch_size: int = 2
    """Rows per forward/backward pass: the knob for activation memory."""

    grad_accum: int = 4
    """Micro-batches accumulated per optimizer step (per process)."""

    epochs: float = 3.0
    """Passes over the training data (fractions allowed); ``max_steps`` overrides it."""

    max_steps: int | None = None
    """Stop after this many optimizer steps (the schedule is laid out over them)."""

    lr: float = 2e-4
    """Peak learning rate of AdamW (LoRA likes 1e-4..5e-4; full fine-tuning 1e-5..5e-5)."""

    warmup_ratio: float = 0.03
    """Share of steps with linear warm-up before the cosine decay to zero."""

    weight_decay: float = 0.0
    """AdamW decoupled weight decay, applied to matrices only (not to norms and biases)."""

    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping (the norm is still reported)."""

    precision: str = "auto"
    """``auto`` picks bf16 where the hardware has fast bf16 (CUDA Ampere+, CPUs with AVX512-BF16 or
    AMX: measured 2-4x faster than fp32 on the reference box), fp16 on older GPUs, else fp32.
    With LoRA in bf16 the frozen base is stored in bf16 and the adapter keeps fp32 weights; full
    fine-tuning keeps fp32 weights under bf16 autocast. fp16 uses loss scaling and needs CUDA."""

    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: about 30% slower, far less activation memory."""

    compile: bool = False
    """``torch.compile`` each decoder layer (worth it for long runs; the first steps pay compile time)."""

    eval_every: int = 50
    """Compute the validation loss every N optimizer steps (and at the end); 0: only at the end."""

    save_every: int = 100
    """Write a checkpoint every N optimizer steps (and always at the end or on stop); 0: end only."""

    keep_last: int = 2
    """Checkpoints kept on disk; older ones are deleted once a newer one is complete."""

    early_stopping_patience: int | None = None
    """Stop when the validation loss has not improved for this many evaluations; None disables."""

    seed: int = 0
    """Seeds the data order, adapter initialisation and dropout: same seed, same loss curve."""

    merge: bool = False
    """Also save a merged model (base + adapter folded in) for serving without peft."""

    memory_budget_gb: float | None = None
    """Refuse to start when the estimated peak (weights + optimizer + activations) exceeds this;
    None checks against the machine's memory (GPU memory on CUDA)."""

    nproc: int = 1
    """Data-parallel processes (torchrun): gloo on CPU, nccl on CUDA."""

    distributed: str = "ddp"
    """With ``nproc > 1``: ``ddp`` replicates the model in each process, ``fsdp`` shards it (for a
    model whose weights and optimizer state do not fit one device; full fine-tuning only)."""

    attention: str = "auto"
    """How packed rows are attended: ``varlen`` (per-sample attention, fastest), ``sdpa`` or ``eager``
    (a block-diagonal mask); ``auto`` is ``varlen``. All three give the same loss."""

    checkpoint_budget_gb: float | None = None
    """Refuse to start when ``keep_last`` checkpoints would need more disk than this."""

    # ------------------------------------------------------------------ (de)serialisation

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe values (lists, not tuples)."""
        out = dataclasses.asdict(self)
        if isinstance(out["target_modules"], tuple):
            out["target_modules"] = list(out["target_modules"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SFTConfig:
        """Build from plain data, rejecting unknown keys (typos) all at once; call :meth:`validate`."""
        if not isinstance(data, dict):
            raise ConfigError(f"an SFT config must be a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        errors = ErrorList()
        for key in unknown:
            errors.add(key, "unknown option", f"known options: {', '.join(sorted(names))}")
        errors.raise_if_any("unknown options for SFTConfig")
        values = dict(data)
        for key in _FLOAT_FIELDS:  # YAML 1.1 reads `lr: 2e-4` (no dot) as a string
            value = values.get(key)
            if isinstance(value, str):
                with contextlib.suppress(ValueError):  # if not a number, validate() reports it
                    values[key] = float(value)
        if isinstance(values.get("target_modules"), tuple):
            values["target_modules"] = list(values["target_modules"])
        return cls(**values)

    @classmethod
    def from_file(cls, path: Path) -> SFTConfig:
        """Read a YAML or JSON file (a recipe such as ``recipes/demo_lora.yaml``)."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read SFT config {path}: {exc}") from exc
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.as_dict(), sort_keys=False, allow_unicode=True)

    def fingerprint(self) -> dict[str, Any]:
        """The fields that define the loss curve (compared when resuming)."""
        d = self.as_dict()
        return {k: d[k] for k in TRAJECTORY_FIELDS}

    # ------------------------------------------------------------------ validation

    def validate(self, model_config: Any | None = None) -> None:
        """Raise :class:`~onebox.errors.ConfigError` listing every invalid field, each with a fix.

        ``model_config`` (a transformers config or its dict) adds the checks that need the model:
        the sequence length against its context.
        """
        e = ErrorList()
        if self.method not in METHODS:
            e.add("method", f"unknown method {self.method!r}", f"use one of {', '.join(METHODS)}")
        if not _is_int(self.lora_r) or self.lora_r < 1:
            e.add("lora_r", f"must be a positive integer, got {self.lora_r!r}", "typical values: 8, 16, 32")
        if not _is_number(self.lora_alpha) or self.lora_alpha <= 0:
            e.add("lora_alpha", f"must be a positive number, got {self.lora_alpha!r}", "e.g. 2 * lora_r")
        if not _is_number(self.lora_dropout) or not 0 <= self.lora_dropout < 1:
            e.add("lora_dropout", f"must be in [0, 1), got {self.lora_dropout!r}", "use 0 or 0.05")
        tm = self.target_modules
        if isinstance(tm, str):
            if tm != "all-linear":
                e.add(
                    "target_modules",
                    f"{tm!r} is not a list of module names",
                    'use "all-linear" or a list such as ["q_proj", "v_proj"]',
                )
        elif not isinstance(tm, list) or not tm or not all(isinstance(m, str) and m for m in tm):
            e.add(
                "target_modules",
                f"must be 'all-linear' or a non-empty list of module names, got {tm!r}",
                'e.g. ["q_proj", "k_proj", "v_proj", "o_proj"]',
            )
        if not _is_int(self.max_seq_len) or self.max_seq_len < 8:
            e.add("max_seq_len", f"must be an integer >= 8, got {self.max_seq_len!r}", "e.g. 512 or 2048")
        if not isinstance(self.packing, bool):
            e.add("packing", f"must be true or false, got {self.packing!r}")
        for name in ("micro_batch_size", "grad_accum", "nproc"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                e.add(name, f"must be a positive integer, got {value!r}")
        if not _is_number(self.epochs) or self.epochs <= 0:
            e.add("epochs", f"must be a positive number, got {self.epochs!r}", "e.g. 3")
        if self.max_steps is not None and (not _is_int(self.max_steps) or self.max_steps < 1):
            e.add("max_steps", f"must be a positive integer or null, got {self.max_steps!r}")
        if not _is_number(self.lr) or not 0 < self.lr < 1:
            e.add("lr", f"must be in (0, 1), got {self.lr!r}", "LoRA: 1e-4..5e-4, full: 1e-5..5e-5")
        if not _is_number(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1:
            e.add("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio!r}", "e.g. 0.03")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            e.add("weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        if not _is_number(self.max_grad_norm) or self.max_grad_norm < 0:
            e.add("max_grad_norm", f"must be >= 0 (0 disables clipping), got {self.max_grad_norm!r}")
        if self.precision not in PRECISIONS:
            e.add("precision", f"unknown precision {self.precision!r}", f"use one of {', '.join(PRECISIONS)}")
        for name in ("gradient_checkpointing", "compile", "merge"):
            if not isinstance(getattr(self, name), bool):
                e.add(name, f"must be true or false, got {getattr(self, name)!r}")
        for name in ("eval_every", "save_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                e.add(name, f"must be an integer >= 0 (0: only at the end), got {value!r}")
        if not _is_int(self.keep_last) or self.keep_last < 1:
            e.add(
                "keep_last", f"must be an integer >= 1, got {self.keep_last!r}", "resuming needs at least 1"
            )
        p = self.early_stopping_patience
        if p is not None and (not _is_int(p) or p < 1):
            e.add("early_stopping_patience", f"must be a positive integer or null, got {p!r}")
        if not _is_int(self.seed) or self.seed < 0:
            e.add("seed", f"must be an integer >= 0, got {self.seed!r}")
        for name in ("memory_budget_gb", "checkpoint_budget_gb"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value <= 0):
                e.add(name, f"must be a positive number of GiB or null, got {value!r}")
        if self.distributed not in DISTRIBUTED:
            e.add(
                "distributed",
                f"unknown mode {self.distributed!r}",
                f"use one of {', '.join(DISTRIBUTED)}",
            )
        elif self.distributed == "fsdp" and self.method != "full":
            e.add(
                "distributed",
                "fsdp shards full fine-tuning only",
                "use distributed: ddp with LoRA (the frozen base is replicated, the adapter is small)",
            )
        if self.attention not in ATTENTIONS:
            e.add("attention", f"unknown attention {self.attention!r}", f"use one of {', '.join(ATTENTIONS)}")
        if self.method == "qlora" and self.precision == "fp32":
            e.add("precision", "qlora computes in 16-bit", "use precision auto, bf16 or fp16")
        if model_config is not None:
            self._check_model(model_config, e)
        e.raise_if_any("invalid SFT config")

    def _check_model(self, model_config: Any, e: ErrorList) -> None:
        get = model_config.get if isinstance(model_config, dict) else lambda k: getattr(model_config, k, None)
        context = get("max_position_embeddings") or get("n_positions") or get("max_sequence_length")
        if _is_int(context) and _is_int(self.max_seq_len) and self.max_seq_len > context:
            e.add(
                "max_seq_len",
                f"{self.max_seq_len} is longer than the model's context of {context} tokens",
                f"use max_seq_len <= {context}",
            )
