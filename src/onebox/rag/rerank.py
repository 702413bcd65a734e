"""Cross-encoder reranking: read query and passage together and score their relevance.

A cross-encoder sees both texts at once, so it ranks far better than the bi-encoder that found the
candidates, at the cost of one forward pass per (query, passage) pair: it is run on the fused
candidate pool only. No reranker is built in (none ships in a PyPI package); users register one
(e.g. a bge-reranker or ms-marco MiniLM cross-encoder directory) and point the knowledge base at it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from onebox.errors import ConfigError, ErrorList, ModelLoadError, OneboxError
from onebox.rag.types import Hit


@dataclass(frozen=True)
class RerankerConfig:
    batch_size: int = 16
    max_tokens: int = 512
    """Pairs longer than this (or than the model takes) are cut, passage side first."""
    score: Literal["sigmoid", "logit"] = "sigmoid"
    """``sigmoid`` maps a one-logit model's output to (0, 1) (what ms-marco/bge rerankers are trained
    for); ``logit`` keeps the raw value. Two-label models always give P(label 1) by softmax."""
    threads: int | None = None

    def __post_init__(self) -> None:
        errs = ErrorList()
        if self.batch_size < 1:
            errs.add("batch_size", f"is {self.batch_size}; must be at least 1")
        if self.max_tokens < 8:
            errs.add("max_tokens", f"is {self.max_tokens}; must be at least 8")
        if self.score not in ("sigmoid", "logit"):
            errs.add("score", f"is {self.score!r}; must be sigmoid or logit")
        if self.threads is not None and self.threads < 1:
            errs.add("threads", f"is {self.threads}; must be at least 1")
        errs.raise_if_any("invalid reranker settings", ConfigError)


class Reranker:
    """A sequence-classification model scoring (query, passage) pairs; higher is more relevant."""

    def __init__(self, model: Any, tokenizer: Any, config: RerankerConfig | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or RerankerConfig()
        limit = int(getattr(model.config, "max_position_embeddings", self.config.max_tokens))
        self.max_tokens = min(self.config.max_tokens, limit)
        self.num_labels = int(getattr(model.config, "num_labels", 1))
        if self.num_labels not in (1, 2):
            raise ModelLoadError(
                f"a reranker has 1 or 2 output labels; this model has {self.num_labels}",
                num_labels=self.num_labels,
            )

    @classmethod
    def load(cls, model_dir: Path | str, config: RerankerConfig | None = None) -> Reranker:
        """Load a registered cross-encoder directory offline (weight files may be sealed pointers)."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from onebox.models.pretrained import load_pretrained

        cfg = config or RerankerConfig()
        root = Path(model_dir)
        if not root.is_dir():
            raise ModelLoadError(f"{root} is not a directory", path=str(root))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
            # weights may be sealed pointers (encrypted store): decrypted into memory, never a file
            model = load_pretrained(
                AutoModelForSequenceClassification, root, local_files_only=True, dtype=torch.float32
            )
        except OneboxError:  # a sealed weight's store or integrity problem, said precisely
            raise
        except Exception as exc:  # transformers raises many types; all mean "cannot load"
            raise ModelLoadError(f"could not load the reranker in {root}: {exc}", path=str(root)) from exc
        model.eval()
        return cls(model, tokenizer, cfg)

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """One relevance score per passage, in order, computed in length-sorted batches."""
        import torch

        out = np.zeros(len(passages), dtype=np.float32)
        order = sorted(range(len(passages)), key=lambda i: len(passages[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.config.batch_size):
                batch = order[start : start + self.config.batch_size]
                enc = self.tokenizer(
                    [query] * len(batch),
                    [passages[i] for i in batch],
                    padding=True,
                    truncation="longest_first",
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
                logits = self.model(**enc).logits.float()
                if self.num_labels == 2:
                    vals = torch.softmax(logits, dim=-1)[:, 1]
                elif self.config.score == "sigmoid":
                    vals = torch.sigmoid(logits[:, 0])
                else:
                    vals = logits[:, 0]
                out[batch] = vals.cpu().numpy()
        return out

    def rerank(self, query: str, hits: Sequence[Hit], k: int | None = None) -> list[Hit]:
        """``hits`` ordered by reranker score (ties keep their previous order), cut to ``k``.

        Each hit keeps its earlier scores in ``Hit.scores`` and gains ``rerank``; its ``score`` and
        ``rank`` become the reranker's, ``via`` becomes ``rerank``.
        """
        if not hits:
            return []
        passages = [h.chunk.embed_text(h.document.title) for h in hits]
        scores = self.score(query, passages)
        order = sorted(range(len(hits)), key=lambda i: (-float(scores[i]), i))
        if k is not None:
            order = order[:k]
        return [
            replace(
                hits[i],
                score=float(scores[i]),
                rank=r,
                via="rerank",
                scores={**hits[i].scores, "rerank": float(scores[i])},
            )
            for r, i in enumerate(order, start=1)
        ]
