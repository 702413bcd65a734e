"""Evaluation as a pure library: perplexity, generation metrics on held-out questions, side-by-side.

Nothing here touches the metadata store or a CLI: an evaluation job reads files, calls
:func:`onebox.evaluate.runner.evaluate_model` and stores the returned JSON-serialisable dict;
comparing base and tuned is :func:`onebox.evaluate.report.side_by_side` on two such results.

- ``loading``: model directory (+ LoRA adapter, merged) and tokenizer, bf16 where the CPU is fast at it.
- ``chat``: chat-template rendering and assistant-only label masking.
- ``perplexity``: token-weighted perplexity of a validation split.
- ``generation``: batched greedy answers through the chat template.
- ``metrics``: Chinese-aware tokenisation, exact match, contains, keywords hit, ROUGE-L, BLEU.
- ``heldout``: held-out question files and their scoring (:class:`~onebox.evaluate.heldout.EvalReport`).
- ``report``: side-by-side comparison and a plain-text rendering.

Heavy imports (torch, transformers, peft) happen inside the functions that need them, so the
metrics and report code stay cheap to import.
"""
