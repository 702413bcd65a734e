"""The SFT recipe: one function, :func:`run_sft`, from a base model and data files to an adapter.

Why an own loop and not TRL/``transformers.Trainer``: the things this recipe must guarantee live
exactly where those frameworks are least controllable. (1) Packing without cross-contamination
and a fast CPU path need our own attention layout and a loss computed on assistant tokens only
(no full-vocabulary logits); (2) "a resumed run continues the same loss curve" needs the data
position to be a pure function of the step and every RNG in the checkpoint; (3) the same loss for
1 and N processes needs the loss normalised by the global count of target tokens; (4) jobs need
cheap hooks, a graceful stop and clear errors instead of callbacks around a black box. In the
spirit of torchtune recipes, the loop below is short and linear: read it top to bottom.

Outputs under ``out_dir``: ``adapter/`` (LoRA: peft adapter + tokenizer), ``model/`` (full
fine-tuning, or the merged model when ``merge``), ``checkpoints/step-*`` (the last ``keep_last``)
and ``result.json``. Calling :func:`run_sft` again on the same ``out_dir`` resumes from the newest
valid checkpoint; a finished run just re-exports.

With encryption at rest the caller passes a ``sealer`` (checkpoints are sealed, see
:mod:`onebox.train.checkpoint`) and an ``export_dir`` in a private memory folder, so the exported
adapter/model never lands in the job folder in plaintext.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from onebox.errors import (
    ArtifactCorruptedError,
    ConfigError,
    Problem,
    TamperedError,
    TrainingDivergedError,
)
from onebox.fsutil import atomic_dir, atomic_write_text
from onebox.security.streams import Sealer
from onebox.train import checkpoint as ckpt
from onebox.train.config import SFTConfig
from onebox.train.data import (
    IGNORE_INDEX,
    Sample,
    StepPlan,
    collate,
    data_fingerprint,
    dummy_batch,
    eval_batches,
    tokenize_file,
)
from onebox.train.dist import Dist
from onebox.train.kernels import VARLEN_ATTENTION, SegmentLayout, linear_cross_entropy
from onebox.train.model import (
    GIB,
    LoadedModel,
    Precision,
    check_memory,
    check_runtime,
    estimate_memory,
    load_model,
    load_model_config,
    load_tokenizer,
    resolve_precision,
)

log = logging.getLogger(__name__)


@dataclass
class SFTHooks:
    """Optional callbacks, called on the main process only; keep them cheap (they run every step)."""

    on_step: Callable[[int, int, dict[str, float]], None] | None = None
    """``on_step(step, total_steps, metrics)`` after each optimizer step; metrics: loss, lr,
    grad_norm, tokens_per_s, step_time, epoch, tokens, and val_loss on steps that evaluate."""

    should_stop: Callable[[], bool] | None = None
    """Polled after each step; True saves a checkpoint and returns with ``stopped=True``."""

    on_checkpoint: Callable[[int, Path], None] | None = None
    """``on_checkpoint(step, path)`` after a checkpoint is complete on disk."""

    on_message: Callable[[str], None] | None = None
    """Human-readable notes (resumed, truncated samples, precision chosen) for a job log."""


@dataclass
class SFTResult:
    """What a run produced; paths are absolute, ``metrics`` JSON-safe."""

    adapter_dir: Path | None
    model_dir: Path | None
    metrics: dict[str, Any]
    resumed_from_step: int | None
    stopped: bool
    checkpoint_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "adapter_dir": str(self.adapter_dir) if self.adapter_dir else None,
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "metrics": self.metrics,
            "resumed_from_step": self.resumed_from_step,
            "stopped": self.stopped,
            "checkpoint_bytes": self.checkpoint_bytes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SFTResult:
        return cls(
            adapter_dir=Path(d["adapter_dir"]) if d.get("adapter_dir") else None,
            model_dir=Path(d["model_dir"]) if d.get("model_dir") else None,
            metrics=dict(d.get("metrics") or {}),
            resumed_from_step=d.get("resumed_from_step"),
            stopped=bool(d.get("stopped")),
            checkpoint_bytes=int(d.get("checkpoint_bytes") or 0),
        )


def run_sft(
    base_dir: Path,
    train_file: Path,
    val_file: Path | None,
    out_dir: Path,
    config: SFTConfig,
    hooks: SFTHooks | None = None,
    *,
    sealer: Sealer | None = None,
    export_dir: Path | None = None,
) -> SFTResult:
    """Fine-tune ``base_dir`` on ``train_file``; resume from ``out_dir/checkpoints`` if any.

    Runs in this process, or as one rank of a ``torchrun`` group (``WORLD_SIZE`` set): then rank 0
    writes checkpoints and outputs and every rank returns the same result. For ``config.nproc > 1``
    from a plain process use :func:`onebox.train.launch.run_sft_distributed`. ``sealer`` seals the
    checkpoints; ``export_dir`` (default ``out_dir``) receives ``adapter/`` and ``model/``.
    """
    config.validate()
    dist = Dist.start()
    try:
        return _Run(
            Path(base_dir),
            Path(train_file),
            val_file,
            Path(out_dir),
            config,
            hooks,
            dist,
            sealer=sealer,
            export_dir=Path(export_dir) if export_dir is not None else None,
        ).run()
    finally:
        dist.close()


class _LossModule(torch.nn.Module):
    """Summed token loss of a batch: the unit DDP wraps (its forward must be the whole step).

    Uses the decoder's hidden states and :func:`linear_cross_entropy` on target positions only
    when the output head is a plain linear layer (Llama, Qwen, Mistral, Gemma 1...); otherwise the
    model's own logits.
    """

    def __init__(self, model: torch.nn.Module, attn: str, precision: Precision) -> None:
        super().__init__()
        self.model = model
        self.attn = attn
        self.precision = precision
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # kept in a tuple so they are not registered twice as submodules (FSDP/DDP see one tree)
        self.parts: tuple[torch.nn.Module, torch.nn.Linear] | None = None
        cfg = base.config
        head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        plain_head = type(head) is torch.nn.Linear and head.bias is None
        scaled = any(getattr(cfg, k, None) for k in ("final_logit_softcapping", "logit_scale"))
        if plain_head and not scaled and hasattr(base, "get_decoder"):
            self.parts = (base.get_decoder(), head)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        labels: torch.Tensor,
        lengths: list[list[int]],
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {"position_ids": position_ids, "use_cache": False}
        dtype = self.precision.compute
        width = input_ids.shape[1]
        if self.attn == VARLEN_ATTENTION:
            kwargs["onebox_layout"] = SegmentLayout.build(lengths, width).to(input_ids.device)
        else:
            kwargs["attention_mask"] = block_causal_mask(
                lengths, width, input_ids.device, boolean=self.attn != "eager", dtype=dtype
            )
        autocast = torch.autocast(input_ids.device.type, dtype=dtype, enabled=self.precision.autocast)
        flat = labels.reshape(-1)
        keep = flat != IGNORE_INDEX
        with autocast:
            if self.parts is not None:
                decoder, head = self.parts
                hidden = decoder(input_ids=input_ids, **kwargs).last_hidden_state
                hidden = hidden.reshape(-1, hidden.shape[-1])[keep]
                return linear_cross_entropy(hidden, head.weight, flat[keep])
            logits = self.model(input_ids=input_ids, **kwargs).logits
            logits = logits.reshape(-1, logits.shape[-1])[keep].float()
            return F.cross_entropy(logits, flat[keep], reduction="sum")


def block_causal_mask(
    lengths: list[list[int]], width: int, device: torch.device, *, boolean: bool, dtype: torch.dtype
) -> torch.Tensor:
    """``[rows, 1, width, width]`` mask: causal within each sample, nothing across samples.

    Padding positions only see themselves (a row with no visible key would give NaN).
    """
    seg = torch.full((len(lengths), width), -1, dtype=torch.long)
    for r, row in enumerate(lengths):
        at = 0
        for k, n in enumerate(row):
            seg[r, at : at + n] = k
            at += n
    seg = seg.to(device)
    idx = torch.arange(width, device=device)
    causal = idx[None, :] <= idx[:, None]
    mask = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0) & causal
    mask |= torch.eye(width, dtype=torch.bool, device=device)
    mask = mask[:, None]
    if boolean:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, torch.finfo(dtype).min)


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@dataclass
class _State:
    """Counters that a checkpoint must carry so a resumed run continues the same curve."""

    step: int = 0
    tokens: int = 0
    target_tokens: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    last_val_loss: float | None = None
    bad_evals: int = 0
    early_stopped: bool = False
    recent_losses: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Run:
    def __init__(
        self,
        base_dir: Path,
        train_file: Path,
        val_file: Path | None,
        out_dir: Path,
        config: SFTConfig,
        hooks: SFTHooks | None,
        dist: Dist,
        *,
        sealer: Sealer | None = None,
        export_dir: Path | None = None,
    ) -> None:
        self.base_dir = base_dir
        self.train_file = train_file
        self.val_file = Path(val_file) if val_file else None
        self.out_dir = out_dir
        self.ckpt_dir = out_dir / "checkpoints"
        self.config = config
        self.hooks = hooks or SFTHooks()
        self.dist = dist
        self.device = dist.device()
        self.state = _State()
        self.sealer = sealer
        self.export_root = export_dir or out_dir
        self.session_tokens = 0
        self.session_time = 0.0

    # ------------------------------------------------------------------ helpers

    def note(self, message: str) -> None:
        log.info(message)
        if self.dist.is_main and self.hooks.on_message:
            self.hooks.on_message(message)

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        cfg = self.config
        check_runtime(cfg, self.device)
        model_config = load_model_config(self.base_dir)
        cfg.validate(model_config)
        self.precision = resolve_precision(cfg.precision, self.device, cfg.method)
        if self.precision.bf16_speedup is not None:
            self.note(
                f"precision {self.precision.name} (bf16 matmul measured {self.precision.bf16_speedup:.1f}x "
                "fp32 on this CPU)"
            )
        self.tokenizer = load_tokenizer(self.base_dir)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self.train, self.train_stats = tokenize_file(self.train_file, self.tokenizer, cfg.max_seq_len)
        if self.train_stats.truncated:
            self.note(
                f"{self.train_stats.truncated} training samples were longer than max_seq_len="
                f"{cfg.max_seq_len} and were truncated (longest: {self.train_stats.max_len} tokens)"
            )
        if self.train_stats.no_targets:
            self.note(
                f"{self.train_stats.no_targets} training examples had no assistant tokens and were skipped"
            )
        self.val: list[Sample] = []
        if self.val_file is not None:
            self.val, _ = tokenize_file(self.val_file, self.tokenizer, cfg.max_seq_len, what="val_file")
        self.plan = StepPlan(
            self.train,
            max_seq_len=cfg.max_seq_len,
            packing=cfg.packing,
            micro_batch_size=cfg.micro_batch_size,
            grad_accum=cfg.grad_accum,
            world=self.dist.world,
            seed=cfg.seed,
            epochs=cfg.epochs,
            max_steps=cfg.max_steps,
        )
        torch.manual_seed(cfg.seed)
        self.loaded: LoadedModel = load_model(self.base_dir, cfg, self.precision, self.device)
        model = self.loaded.model
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        self.memory_estimate = estimate_memory(
            model_config,
            cfg,
            self.precision,
            total_params=self.loaded.total_params,
            trainable_params=self.loaded.trainable_params,
            weight_bytes=weight_bytes,
            longest_sample=max(len(s) for s in self.train),
        )
        check_memory(self.memory_estimate, cfg, self.device)
        self.checkpoint_estimate = self.loaded.trainable_params * 12 + 64 * 1024
        if cfg.checkpoint_budget_gb is not None:
            need = self.checkpoint_estimate * (cfg.keep_last + 1)
            if need > cfg.checkpoint_budget_gb * GIB:
                raise ConfigError(
                    "invalid SFT config",
                    problems=[
                        Problem(
                            "keep_last",
                            f"{cfg.keep_last} checkpoints (+1 while writing) need ~{need / GIB:.2f} GiB, "
                            f"more than checkpoint_budget_gb={cfg.checkpoint_budget_gb}",
                            "lower keep_last, raise checkpoint_budget_gb, or use LoRA",
                        )
                    ],
                )
        self.scaler = torch.amp.GradScaler("cuda") if self.precision.scaler else None
        self.loss_module = _LossModule(model, self.loaded.attn, self.precision)
        self.fsdp = self.dist.enabled and cfg.distributed == "fsdp"
        self.fingerprints = {
            "config": cfg.fingerprint(),
            "data": data_fingerprint(self.train),
            "rows_per_step": self.plan.rows_per_step,
            "state_format": "fsdp-full" if self.fsdp else "plain",
        }

    def build_optimizer(self) -> None:
        """AdamW over the (possibly sharded) trainable parameters, warm-up + cosine schedule."""
        cfg = self.config
        self.trainable = [p for p in self.loss_module.parameters() if p.requires_grad]
        decay = [p for p in self.trainable if p.ndim >= 2]
        no_decay = [p for p in self.trainable if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        # one fused kernel for all (LoRA: hundreds of small) tensors, on CPU too
        fused = not self.fsdp and all(p.dtype in (torch.float32, torch.bfloat16) for p in self.trainable)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=fused)
        warmup = math.ceil(cfg.warmup_ratio * self.plan.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(warmup, self.plan.total_steps)
        )

    def wrap(self) -> torch.nn.Module:
        if not self.dist.enabled:
            return self.loss_module
        if self.config.distributed == "fsdp":
            from torch.distributed.fsdp import fully_shard

            decoder = self.loss_module.parts[0] if self.loss_module.parts else None
            for layer in getattr(decoder, "layers", []):
                fully_shard(layer)
            fully_shard(self.loss_module)
            return self.loss_module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.loss_module, device_ids=ids, broadcast_buffers=False)

    # ------------------------------------------------------------------ checkpoints

    def _state_options(self) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)

    def model_state(self) -> dict[str, torch.Tensor]:
        """Trainable weights by name (FSDP: gathered to full tensors; every rank must call)."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import get_model_state_dict

            return get_model_state_dict(self.loss_module, options=self._state_options())
        return {
            n: p.detach().to("cpu", copy=True)
            for n, p in self.loss_module.named_parameters()
            if p.requires_grad
        }

    def optimizer_state(self) -> dict[str, Any]:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

            return get_optimizer_state_dict(self.loss_module, self.optimizer, options=self._state_options())
        return self.optimizer.state_dict()

    def save_checkpoint(self) -> Path | None:
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        rngs = self.dist.gather_objects({"cpu": cpu_rng, "cuda": cuda_rng})
        gathered = self.fsdp or self.dist.is_main
        model_state = self.model_state() if gathered else None
        optimizer_state = self.optimizer_state() if gathered else None
        path = None
        if self.dist.is_main:
            state = {
                "model": model_state,
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "rng": rngs,
                "counters": self.state.as_dict(),
            }
            meta = {"fingerprints": self.fingerprints, "total_steps": self.plan.total_steps}
            path = ckpt.save(self.ckpt_dir, self.state.step, state, meta, self.sealer)
            ckpt.prune(self.ckpt_dir, self.config.keep_last)
            if self.hooks.on_checkpoint:
                self.hooks.on_checkpoint(self.state.step, path)
        self.dist.barrier()
        return path

    def find_checkpoint(self) -> tuple[ckpt.CheckpointInfo, dict[str, Any]] | None:
        """The newest loadable checkpoint; one written under another trajectory is refused."""
        for info in reversed(ckpt.list_valid(self.ckpt_dir)):
            mismatch = self._mismatch(info.meta.get("fingerprints") or {})
            if mismatch:
                raise ConfigError(
                    f"{self.ckpt_dir} holds a checkpoint of a different run (step {info.step}); "
                    "resuming would not continue the same loss curve",
                    problems=mismatch,
                )
            try:
                return info, ckpt.load(info, self.sealer)
            except TamperedError as exc:  # reported as such, then the same fallback as corruption
                self.note(f"skipping {info.path.name}: tampered with ({exc.code}): {exc}")
            except ArtifactCorruptedError as exc:
                self.note(f"skipping {info.path.name}: {exc}")
        return None

    def load_weights(self, state: dict[str, Any]) -> None:
        """Copy checkpointed weights into the (not yet sharded) model."""
        named = dict(self.loss_module.named_parameters(remove_duplicate=False))  # tied weights too
        with torch.no_grad():
            for name, tensor in state["model"].items():
                named[name].copy_(tensor)

    def load_training_state(self, info: ckpt.CheckpointInfo, state: dict[str, Any]) -> int:
        """Optimizer, schedule, scaler, RNG and counters (after the optimizer exists)."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                self.loss_module,
                self.optimizer,
                optim_state_dict=state["optimizer"],
                options=StateDictOptions(full_state_dict=True),
            )
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        mine = rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0]
        torch.set_rng_state(mine["cpu"])
        if self.device.type == "cuda" and mine.get("cuda") is not None:
            torch.cuda.set_rng_state(mine["cuda"], self.device)
        self.state = _State(**state["counters"])
        self.note(f"resumed from {info.path.name} (step {info.step} of {self.plan.total_steps})")
        return info.step

    def _mismatch(self, saved: dict[str, Any]) -> list[Problem]:
        problems = []
        for key, value in (saved.get("config") or {}).items():
            now = self.fingerprints["config"].get(key)
            if now != value:
                problems.append(
                    Problem(
                        key, f"the checkpoint used {value!r}, now {now!r}", "restore it or use a new out_dir"
                    )
                )
        if saved.get("rows_per_step") not in (None, self.plan.rows_per_step):
            problems.append(
                Problem(
                    "micro_batch_size",
                    f"the checkpoint used {saved['rows_per_step']} rows per step "
                    f"(micro_batch_size x grad_accum x nproc), now {self.plan.rows_per_step}",
                    "keep the global batch or use a new out_dir",
                )
            )
        if saved.get("state_format", "plain") != self.fingerprints["state_format"]:
            problems.append(
                Problem(
                    "distributed",
                    "the checkpoint was written by a sharded (fsdp) run and this one is not, or back",
                    "resume with the same distributed mode",
                )
            )
        if saved.get("data") not in (None, self.fingerprints["data"]):
            problems.append(Problem("train_file", "the training data changed", "use a new out_dir"))
        return problems

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> float | None:
        if not self.val:
            return None
        cfg = self.config
        self.loss_module.eval()
        batches = eval_batches(self.val, cfg.max_seq_len, cfg.micro_batch_size, cfg.packing)
        mine = batches[self.dist.rank :: self.dist.world]
        rounds = math.ceil(len(batches) / self.dist.world)
        total = count = 0.0
        for k in range(rounds):
            if k < len(mine):
                batch = collate(self.val, mine[k], self.pad_id).to(self.device)
            else:
                batch = dummy_batch(self.pad_id).to(self.device)
            loss = self.loss_module(batch.input_ids, batch.position_ids, batch.labels, batch.lengths)
            total += float(loss)
            count += batch.targets
        self.loss_module.train()
        total, count = self.dist.all_reduce([total, count], self.device)
        return total / max(count, 1.0)

    # ------------------------------------------------------------------ training

    def train_step(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        cfg = self.config
        t0 = time.perf_counter()
        targets = self.plan.step_targets(step)
        scale = self.dist.world / max(targets, 1)
        loss_sum = 0.0
        batches = list(self.plan.micro_batches(step, self.dist.rank, self.pad_id))
        for j, batch in enumerate(batches):
            batch = (batch or dummy_batch(self.pad_id)).to(self.device)
            sync = j == len(batches) - 1
            if hasattr(model, "set_requires_gradient_sync"):  # FSDP: reduce-scatter on the last only
                model.set_requires_gradient_sync(sync)
            ctx = model.no_sync() if (self.dist.enabled and not sync and hasattr(model, "no_sync")) else None
            with ctx or contextlib.nullcontext():
                loss = model(batch.input_ids, batch.position_ids, batch.labels, batch.lengths)
                scaled = loss * scale
                if self.scaler:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            loss_sum += float(loss.detach())
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        (loss_total,) = self.dist.all_reduce([loss_sum], self.device)
        loss_value = loss_total / max(targets, 1)
        lr = self.scheduler.get_last_lr()[0]
        if not math.isfinite(loss_value) or (not self.scaler and not math.isfinite(grad_norm)):
            what = "loss" if not math.isfinite(loss_value) else "gradient norm"
            raise TrainingDivergedError(
                f"training diverged at step {step + 1}: the {what} is "
                f"{loss_value if what == 'loss' else grad_norm}; nothing was saved from this step",
                problems=[
                    Problem(
                        "lr", f"was {lr:.3g} at this step", "lower lr (e.g. by 10x) or raise warmup_ratio"
                    ),
                    Problem("precision", f"was {self.precision.name}", "try fp32 to rule out overflow"),
                    Problem(
                        "base_dir", "a model with NaN/Inf weights diverges at once", "check the base model"
                    ),
                ],
                step=step + 1,
                loss=loss_value,
                grad_norm=grad_norm,
            )
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scaler.get_scale() < 1e-4:
                raise TrainingDivergedError(
                    f"training diverged at step {step + 1}: fp16 gradients overflow at every loss scale",
                    problems=[Problem("precision", "fp16 overflows", "use bf16 or fp32, or lower lr")],
                )
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        rows = self.plan.step_rows(step)
        tokens = sum(len(self.train[i]) for row in rows for i in row)
        self.state.step = step + 1
        self.state.tokens += tokens
        self.state.target_tokens += targets
        self.state.recent_losses = [*self.state.recent_losses[-9:], loss_value]
        self.session_tokens += tokens
        self.session_time += dt
        return {
            "loss": loss_value,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens / dt if dt > 0 else 0.0,
            "step_time": dt,
            "epoch": self.plan.epoch_of(step + 1),
            "tokens": float(self.state.tokens),
        }

    def stop_requested(self) -> bool:
        """Rank 0 asks the hook; every rank gets the same answer (one tiny all-reduce)."""
        vote = 1.0 if (self.dist.is_main and self.hooks.should_stop and self.hooks.should_stop()) else 0.0
        if self.dist.enabled:
            vote = self.dist.all_reduce([vote], self.device, op="max")[0]
        return vote > 0

    def after_eval(self, val_loss: float | None) -> None:
        if val_loss is None:
            return
        st = self.state
        st.last_val_loss = val_loss
        if st.best_val_loss is None or val_loss < st.best_val_loss:
            st.best_val_loss, st.best_step, st.bad_evals = val_loss, st.step, 0
        else:
            st.bad_evals += 1
            patience = self.config.early_stopping_patience
            if patience is not None and st.bad_evals >= patience:
                st.early_stopped = True
                self.note(
                    f"early stopping at step {st.step}: validation loss has not improved on "
                    f"{st.best_val_loss:.4f} (step {st.best_step}) for {st.bad_evals} evaluations"
                )

    def run(self) -> SFTResult:
        started = time.perf_counter()
        self.setup()
        cfg = self.config
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()
        found = self.find_checkpoint()
        if found:
            self.load_weights(found[1])
        model = self.wrap()
        self.build_optimizer()
        resumed = self.load_training_state(*found) if found else None
        del found
        self.loss_module.train()
        total = self.plan.total_steps
        stopped = False
        last_eval_step = -1
        saved_step = resumed if resumed is not None else -1
        while self.state.step < total and not self.state.early_stopped:
            step = self.state.step
            metrics = self.train_step(model, step)
            done = self.state.step
            if cfg.eval_every and done % cfg.eval_every == 0 and done < total and self.val:
                val = self.evaluate()
                self.after_eval(val)
                last_eval_step = done
                metrics["val_loss"] = float(val) if val is not None else float("nan")
            if self.dist.is_main and self.hooks.on_step:
                self.hooks.on_step(done, total, metrics)
            if self.stop_requested():
                self.save_checkpoint()
                saved_step = done
                stopped = True
                self.note(f"stopped on request at step {done} of {total}; a checkpoint was saved")
                break
            if (
                cfg.save_every
                and done % cfg.save_every == 0
                and done < total
                and not self.state.early_stopped
            ):
                self.save_checkpoint()
                saved_step = done
        if not stopped:
            if self.val and last_eval_step != self.state.step and not self.state.early_stopped:
                self.after_eval(self.evaluate())
            if saved_step != self.state.step or resumed is None:
                self.save_checkpoint()
        adapter_dir = model_dir = None
        if not stopped:
            adapter_dir, model_dir = self.export()
        checkpoint_bytes = ckpt.dir_bytes(self.ckpt_dir)
        result = SFTResult(
            adapter_dir=adapter_dir,
            model_dir=model_dir,
            metrics=self.metrics(time.perf_counter() - started, checkpoint_bytes),
            resumed_from_step=resumed,
            stopped=stopped,
            checkpoint_bytes=checkpoint_bytes,
        )
        if self.dist.is_main:
            atomic_write_text(self.out_dir / "result.json", json.dumps(result.as_dict(), indent=2))
        self.dist.barrier()
        return result

    def metrics(self, runtime: float, checkpoint_bytes: int) -> dict[str, Any]:
        st = self.state
        recent = st.recent_losses
        return {
            "train_loss": sum(recent) / len(recent) if recent else None,
            "last_loss": recent[-1] if recent else None,
            "best_val_loss": st.best_val_loss,
            "best_step": st.best_step,
            "val_loss": st.last_val_loss,
            "steps": st.step,
            "total_steps": self.plan.total_steps,
            "epochs": self.plan.epoch_of(st.step),
            "tokens": st.tokens,
            "target_tokens": st.target_tokens,
            "tokens_per_s": self.session_tokens / self.session_time if self.session_time else 0.0,
            "train_time_s": self.session_time,
            "runtime_s": runtime,
            "peak_memory_bytes": _peak_memory(self.device),
            "estimated_memory_bytes": self.memory_estimate["total"],
            "checkpoint_bytes": checkpoint_bytes,
            "early_stopped": st.early_stopped,
            "precision": self.precision.name,
            "bf16_speedup": self.precision.bf16_speedup,
            "attention": self.loaded.attn,
            "trainable_params": self.loaded.trainable_params,
            "total_params": self.loaded.total_params,
            "processes": self.dist.world,
            "rows_per_step": self.plan.rows_per_step,
            "train_samples": self.train_stats.samples,
            "truncated_samples": self.train_stats.truncated,
            "skipped_examples": self.train_stats.no_targets,
            "val_samples": len(self.val),
        }

    # ------------------------------------------------------------------ outputs

    def export(self) -> tuple[Path | None, Path | None]:
        """Write the adapter (LoRA) and/or the model (full, merged) atomically; rank 0 only."""
        cfg = self.config
        adapter_dir = self.export_root / "adapter" if self.loaded.peft else None
        model_dir = self.export_root / "model" if (cfg.method == "full" or cfg.merge) else None
        full_state = None
        if self.fsdp and model_dir is not None:  # gather the shards (every rank takes part)
            prefix = "model."
            full_state = {k.removeprefix(prefix): v for k, v in self.model_state().items()}
        if self.dist.is_main:
            model = self.loaded.model
            if adapter_dir is not None:
                with atomic_dir(adapter_dir) as tmp:
                    model.save_pretrained(str(tmp))
                    self.tokenizer.save_pretrained(str(tmp))
            if model_dir is not None:
                with atomic_dir(model_dir) as tmp:
                    if cfg.method == "full":
                        model.config.use_cache = True
                        model.save_pretrained(str(tmp), state_dict=full_state)
                    else:
                        self._save_merged(adapter_dir, tmp)  # type: ignore[arg-type]
                    self.tokenizer.save_pretrained(str(tmp))
        self.dist.barrier()
        return adapter_dir, model_dir

    def _save_merged(self, adapter_dir: Path, dest: Path) -> None:
        """Fold the adapter into a fresh copy of the base in its stored dtype (not the bf16 copy
        we trained against, which would round the merged weights). A sealed base is decrypted in
        memory, like the one we trained."""
        from transformers import AutoModelForCausalLM

        from onebox.models.pretrained import load_adapter, load_pretrained

        base = load_pretrained(AutoModelForCausalLM, self.base_dir, dtype="auto")
        merged = load_adapter(base, adapter_dir).merge_and_unload()
        merged.config.use_cache = True
        merged.save_pretrained(str(dest))
