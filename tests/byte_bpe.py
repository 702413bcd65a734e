"""GPT-2's byte-level alphabet, for the tiny byte tokenizers that tests build by hand."""

from __future__ import annotations

from onebox.serve.detokenize import byte_alphabet as bytes_to_unicode

__all__ = ["bytes_to_unicode"]
