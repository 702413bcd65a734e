"""The serving layer: OpenAI semantics (chat templates, detokenization, stop strings, n, usage,
logprobs) around a token-level engine (``textgen``), and the worker processes that serve it.
No HTTP here; ``onebox.api.worker_app`` exposes a service over HTTP."""
