"""Model formats: HF directories, safetensors, GGUF conversion, sentence-transformers; the catalog."""
