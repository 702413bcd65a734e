"""The knowledge base's view of a sentence encoder: token counting for the chunker, batched vectors.

It wraps :class:`onebox.engine.embeddings.EmbeddingEngine` (the encoder behind ``/v1/embeddings``),
so pooling and normalisation are exactly what the API serves. What this adds is what ingestion and
search need: a token counter matching the encoder, truncation instead of refusal (a query may be
long; chunks are already within budget), caller-chosen batches sorted by length with a progress
callback, and optional bf16 autocast on CPU (see ``EmbedderConfig.dtype``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from onebox.engine.embeddings import EmbeddingEngine
from onebox.errors import ConfigError, ErrorList, InvalidInputError, Problem


def _fast_cpu_bf16() -> bool:
    import torch

    from onebox.evaluate.loading import resolve_dtype

    return resolve_dtype("auto", "cpu") == torch.bfloat16


Progress = Callable[[int, int], None]
"""Called with (texts done, texts in all) after each batch."""


@dataclass(frozen=True)
class EmbedderConfig:
    batch_size: int = 32
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """``bfloat16`` runs the encoder under CPU bf16 autocast; ``auto`` picks it where oneDNN has
    native bf16 kernels (AVX512-BF16 or AMX), else fp32. Measured with all-MiniLM-L6-v2 on an EPYC
    with AVX512-BF16, one thread, 128 mixed Chinese/English texts of ~78 tokens: 42 texts/s fp32,
    115 texts/s bf16 autocast (2.7x), cosine to the fp32 vectors >= 0.99997."""
    threads: int | None = None
    """torch intra-op threads (process-wide); None leaves torch's default."""

    def __post_init__(self) -> None:
        errs = ErrorList()
        if self.batch_size < 1:
            errs.add("batch_size", f"is {self.batch_size}; must be at least 1")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            errs.add("dtype", f"is {self.dtype!r}; must be auto, float32 or bfloat16")
        if self.threads is not None and self.threads < 1:
            errs.add("threads", f"is {self.threads}; must be at least 1")
        errs.raise_if_any("invalid embedder settings", ConfigError)


class Embedder:
    """Texts → unit float32 vectors with one encoder; ``count_tokens`` is the chunker's budget unit."""

    def __init__(self, engine: EmbeddingEngine, config: EmbedderConfig | None = None) -> None:
        self.engine = engine
        self.config = config or EmbedderConfig()
        self._specials = len(engine.tokenizer("", add_special_tokens=True)["input_ids"])
        self.bf16 = self.config.dtype == "bfloat16" or (self.config.dtype == "auto" and _fast_cpu_bf16())

    @classmethod
    def load(cls, model_dir: Path | str, config: EmbedderConfig | None = None) -> Embedder:
        """Load an embedding model directory (the built-in MiniLM or any registered one), offline."""
        cfg = config or EmbedderConfig()
        # the engine's own batch cap is set high: ``embed`` hands it one caller-sized batch at a time
        engine = EmbeddingEngine.from_model_dir(model_dir, threads=cfg.threads, batch_size=1024)
        return cls(engine, cfg)

    @property
    def dim(self) -> int:
        return self.engine.dimensions

    @property
    def max_tokens(self) -> int:
        """Text tokens one input may have, special tokens ([CLS], [SEP]) already subtracted."""
        return self.engine.max_input_tokens - self._specials

    def _prepare(self, texts: Sequence[str]) -> list[str]:
        return [t.lower() for t in texts] if self.engine.layout.lowercase else list(texts)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` without special tokens: what the chunker budgets against max_tokens."""
        ids = self.engine.tokenizer(self._prepare([text]), add_special_tokens=False)["input_ids"][0]
        return len(ids)

    def embed(
        self,
        texts: Sequence[str],
        batch_size: int | None = None,
        *,
        progress: Progress | None = None,
        truncate: bool = True,
    ) -> np.ndarray:
        """``[len(texts), dim]`` float32 unit vectors, in the order given.

        Texts are sorted by token length so each batch pads little, then put back in order. Over-long
        texts are cut to ``max_tokens`` (``truncate=False`` refuses them instead).
        """
        if isinstance(texts, str):
            raise InvalidInputError("texts must be a list of strings", problems=[Problem("texts", "got str")])
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        size = batch_size or self.config.batch_size
        if size < 1:
            raise InvalidInputError("bad batch size", problems=[Problem("batch_size", "must be at least 1")])
        limit = self.engine.max_input_tokens
        enc = self.engine.tokenizer(
            self._prepare(texts), add_special_tokens=True, truncation=truncate, max_length=limit
        )
        ids: list[list[int]] = [list(x) for x in enc["input_ids"]]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        done = 0
        with self._autocast():
            for start in range(0, len(order), size):
                batch = order[start : start + size]
                vecs = self._run([ids[i] for i in batch])
                out[batch] = vecs
                done += len(batch)
                if progress is not None:
                    progress(done, len(ids))
        return out

    def _run(self, ids: list[list[int]]) -> np.ndarray:
        """One batch through the engine as token ids (it validates lengths; no second tokenization)."""
        vecs, _ = self.engine.embed_sync(ids)
        vecs = vecs.astype(np.float32, copy=False)
        if not self.engine.layout.normalize:  # the index needs unit vectors whatever the model says
            norms = np.linalg.norm(vecs, axis=1, keepdims=True)
            vecs = vecs / np.maximum(norms, 1e-12)
        return vecs

    def _autocast(self) -> Any:
        if not self.bf16:
            return contextlib.nullcontext()
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16)

    def close(self) -> None:
        self.engine.close()
