"""HTTP layer: FastAPI apps (one worker's OpenAI-compatible app; the gateway). Thin: calls services."""
