"""Sentence embeddings from an encoder directory: sentence-transformers layout or plain HF.

We run the encoder with transformers directly and apply the pooling the directory declares
(``1_Pooling/config.json``, then ``Normalize``) instead of loading sentence-transformers: it is
faster to start, lets token-id inputs through unchanged, and refuses over-long inputs instead of
silently truncating them. Work runs on one background thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onebox.errors import InvalidInputError, ModelLoadError, OneboxError, Problem

_POOLINGS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "last",
}
_KNOWN_MODULES = {"Transformer", "Pooling", "Normalize"}


@dataclass(frozen=True)
class _Layout:
    encoder_dir: Path
    pooling: str
    normalize: bool
    max_tokens: int | None
    lowercase: bool


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}", path=str(path)) from exc


def _layout(root: Path) -> _Layout:
    """Where the encoder is and how its token vectors become one vector, from the directory."""
    modules_file = root / "modules.json"
    if not modules_file.is_file():  # a plain HF encoder: mean pooling + normalize
        return _Layout(root, "mean", True, None, False)
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    encoder_dir, pooling, normalize = root, "mean", False
    for m in modules:
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _KNOWN_MODULES:
            raise ModelLoadError(
                f"{root}: sentence-transformers module {kind!r} is not supported "
                f"(supported: {', '.join(sorted(_KNOWN_MODULES))})",
                path=str(root),
            )
        sub = root / m.get("path", "")
        if kind == "Transformer":
            encoder_dir = sub
        elif kind == "Pooling":
            cfg = _read_json(sub / "config.json")
            chosen = [mode for key, mode in _POOLINGS.items() if cfg.get(key)]
            if len(chosen) != 1:
                raise ModelLoadError(f"{sub}: exactly one supported pooling mode expected", path=str(sub))
            pooling = chosen[0]
        else:
            normalize = True
    max_tokens, lowercase = None, False
    for cfg_file in (encoder_dir / "sentence_bert_config.json", root / "sentence_bert_config.json"):
        if cfg_file.is_file():
            cfg = _read_json(cfg_file)
            max_tokens = cfg.get("max_seq_length")
            lowercase = bool(cfg.get("do_lower_case", False))
            break
    return _Layout(encoder_dir, pooling, normalize, max_tokens, lowercase)


class EmbeddingEngine:
    """An encoder that turns texts (or token-id lists) into unit vectors, in batches."""

    def __init__(self, model: Any, tokenizer: Any, layout: _Layout, *, batch_size: int = 32) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.layout = layout
        self.batch_size = batch_size
        self.dimensions = int(model.config.hidden_size)
        limits = [int(getattr(model.config, "max_position_embeddings", 512))]
        if layout.max_tokens:
            limits.append(int(layout.max_tokens))
        tok_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and tok_max < 1_000_000:
            limits.append(tok_max)
        self.max_input_tokens = min(limits)
        self.vocab_size = int(getattr(model.config, "vocab_size", len(tokenizer)))
        pad = tokenizer.pad_token_id
        self.pad_id = 0 if pad is None else int(pad)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    @classmethod
    def from_model_dir(
        cls, path: Path | str, threads: int | None = None, *, device: str = "cpu", batch_size: int = 32
    ) -> EmbeddingEngine:
        """Load offline (weight files may be sealed pointers); ``threads`` sets torch's intra-op
        threads (process-wide)."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        from onebox.models.pretrained import load_pretrained

        root = Path(path)
        if not root.is_dir():
            raise ModelLoadError(f"{root} is not a directory", path=str(root))
        layout = _layout(root)
        if threads:
            torch.set_num_threads(threads)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(layout.encoder_dir), local_files_only=True)
            # weights may be sealed pointers (encrypted store): decrypted into memory, never a file
            model = load_pretrained(AutoModel, layout.encoder_dir, local_files_only=True, dtype=torch.float32)
        except OneboxError:  # a sealed weight's store or integrity problem, said precisely
            raise
        except Exception as exc:  # transformers raises many types; all mean "cannot load"
            raise ModelLoadError(
                f"could not load the encoder in {layout.encoder_dir}: {exc}", path=str(root)
            ) from exc
        model.to(device).eval()
        return cls(model, tokenizer, layout, batch_size=batch_size)

    async def embed(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> tuple[np.ndarray, int]:
        """``(vectors [n, dimensions] float32, prompt tokens)``, computed off the event loop."""
        ids = self.tokenize(inputs)  # validation errors surface here, before queueing
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._embed_ids, ids)

    def embed_sync(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> tuple[np.ndarray, int]:
        return self._embed_ids(self.tokenize(inputs))

    def tokenize(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        """Token ids per input, refusing inputs longer than the model takes (never truncating)."""
        if isinstance(inputs, str):
            inputs = [inputs]
        if not inputs:
            raise InvalidInputError("no input", problems=[Problem("input", "must not be empty")])
        texts = [x for x in inputs if isinstance(x, str)]
        if texts and len(texts) != len(inputs):
            raise InvalidInputError(
                "mixed input", problems=[Problem("input", "all strings or all token lists")]
            )
        if texts:
            if self.layout.lowercase:
                texts = [t.lower() for t in texts]
            ids = [
                list(x) for x in self.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
            ]
        else:
            ids = [list(x) for x in inputs]  # type: ignore[arg-type]
        errs: list[Problem] = []
        for i, row in enumerate(ids):
            where = "input" if len(ids) == 1 else f"input.{i}"
            if not row:
                errs.append(Problem(where, "is empty"))
            elif len(row) > self.max_input_tokens:
                errs.append(
                    Problem(
                        where,
                        f"{len(row)} tokens; this model takes at most {self.max_input_tokens}",
                        "split it",
                    )
                )
            elif not texts and any(t < 0 or t >= self.vocab_size for t in row):
                errs.append(Problem(where, f"token ids must be in [0, {self.vocab_size})"))
        if errs:
            raise InvalidInputError("invalid embedding input", problems=errs)
        return ids

    def _embed_ids(self, ids: list[list[int]]) -> tuple[np.ndarray, int]:
        import torch

        out = np.zeros((len(ids), self.dimensions), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths: little padding
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                width = max(len(ids[i]) for i in batch)
                input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                hidden = self.model(
                    input_ids=input_ids.to(device), attention_mask=mask.to(device)
                ).last_hidden_state
                pooled = self._pool(hidden.float(), mask.to(device))
                if self.layout.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[batch] = pooled.cpu().numpy()
        return out, sum(len(x) for x in ids)

    def _pool(self, hidden: Any, mask: Any) -> Any:
        import torch

        m = mask.unsqueeze(-1).to(hidden.dtype)
        mode = self.layout.pooling
        if mode == "cls":
            return hidden[:, 0]
        if mode == "max":
            return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
        if mode == "last":
            last = mask.sum(dim=1) - 1
            return hidden[torch.arange(hidden.shape[0]), last]
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
