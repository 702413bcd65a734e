"""The serving layer: OpenAI semantics (chat templates, detokenization, stop strings, n, usage,
logprobs) around a token-level engine. No HTTP here; ``onebox.api.worker_app`` exposes it."""

from onebox.serve.textgen import TextGenerationService, build_text_service

__all__ = ["TextGenerationService", "build_text_service"]
