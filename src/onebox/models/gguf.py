"""Convert a GGUF file into a Hugging Face safetensors directory (weights, tokenizer, chat template).

transformers de-quantizes GGUF tensors into an ordinary model but leaves it flagged as quantized,
which makes ``save_pretrained`` refuse; clearing the quantizer and ``quantization_config`` turns it
into the plain fp32 model it now is. The conversion runs once per registration; serving and
training then load the safetensors directory, which is much faster than de-quantizing again.
"""

from __future__ import annotations

import json
from pathlib import Path

from onebox.errors import DependencyMissingError, ModelLoadError, NotAModelError
from onebox.progress import ProgressFn, null_progress

GGUF_MAGIC = b"GGUF"


def is_gguf(path: Path) -> bool:
    try:
        with Path(path).open("rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def convert_gguf(gguf_path: Path, out_dir: Path, progress: ProgressFn = null_progress) -> dict[str, object]:
    """Write ``out_dir`` as a safetensors model directory; returns facts about the model."""
    gguf_path = Path(gguf_path)
    if not is_gguf(gguf_path):
        raise NotAModelError(f"{gguf_path} is not a GGUF file (no GGUF magic bytes)")
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise DependencyMissingError(f"GGUF conversion needs transformers and gguf: {exc}") from exc

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # onebox draws its own progress; tqdm bars would interleave
    progress("convert", 0, 3)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as exc:  # transformers raises many types for unsupported GGUF content
        raise ModelLoadError(f"cannot load GGUF {gguf_path.name}: {exc}") from exc
    progress("convert", 1, 3)

    # The tensors are de-quantized already; drop the flags that block saving.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = gguf_path.stem

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    progress("convert", 2, 3)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(out_dir)
    gen = model.generation_config
    if gen.eos_token_id is None:
        gen.eos_token_id = tokenizer.eos_token_id
    gen.save_pretrained(out_dir)
    (out_dir / "onebox_source.json").write_text(
        json.dumps({"converted_from": gguf_path.name, "format": "gguf"}, indent=2)
    )
    progress("convert", 3, 3)
    return {
        "architecture": (model.config.architectures or [type(model).__name__])[0],
        "parameters": sum(p.numel() for p in model.parameters()),
        "has_chat_template": bool(tokenizer.chat_template),
    }
