"""Recognise what a path holds (HF directory, sentence-transformers, GGUF, LoRA adapter) without
loading the weights, so that registering a wrong path fails fast with a clear message."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from onebox.errors import NotAModelError
from onebox.models.gguf import is_gguf

WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")


@dataclass(frozen=True)
class ModelFacts:
    format: str
    """``safetensors``, ``pytorch``, ``gguf``, ``sentence-transformers`` or ``lora``."""
    kind: str
    """``chat``, ``embedding`` or ``other``."""
    architecture: str | None
    parameters: int | None


def _safetensors_params(files: list[Path]) -> int | None:
    try:
        from safetensors import safe_open
    except ImportError:  # pragma: no cover - core dependency
        return None
    total = 0
    for f in files:
        try:
            with safe_open(str(f), framework="np") as st:
                for key in st.keys():  # noqa: SIM118 - safe_open is not a mapping
                    total += math.prod(st.get_slice(key).get_shape())
        except Exception as exc:  # safetensors raises its own error types for damaged headers
            raise NotAModelError(f"{f} is not a readable safetensors file: {exc}") from exc
    return total


def _read_config(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NotAModelError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise NotAModelError(f"{path} must hold a JSON object, not {type(cfg).__name__}")
    return cfg


def inspect_path(path: Path) -> ModelFacts:
    """Describe the model at ``path`` or raise NotAModelError saying what was expected."""
    path = Path(path)
    if not path.exists():
        raise NotAModelError(f"{path} does not exist")
    if path.is_file():
        if is_gguf(path):
            return ModelFacts("gguf", "chat", None, None)
        raise NotAModelError(
            f"{path} is a file but not a GGUF model; give a GGUF file or a model directory "
            "(config.json plus *.safetensors or pytorch_model*.bin)"
        )
    if (path / "adapter_config.json").is_file():
        cfg = _read_config(path / "adapter_config.json")
        adapter = [w for w in ("adapter_model.safetensors", "adapter_model.bin") if (path / w).is_file()]
        if not adapter:
            raise NotAModelError(f"{path} has adapter_config.json but no adapter_model.safetensors or .bin")
        if adapter[0].endswith(".safetensors"):
            _safetensors_params([path / adapter[0]])
        return ModelFacts("lora", "chat", str(cfg.get("peft_type", "LORA")), None)
    weights = sorted(w for g in WEIGHT_GLOBS for w in path.glob(g))
    if not (path / "config.json").is_file() or not weights:
        missing = [
            n
            for n, ok in (("config.json", (path / "config.json").is_file()), ("weights", bool(weights)))
            if not ok
        ]
        raise NotAModelError(
            f"{path} is not a model directory: missing {' and '.join(missing)} "
            "(expected config.json and *.safetensors or pytorch_model*.bin)"
        )
    cfg = _read_config(path / "config.json")
    archs = cfg.get("architectures") or [cfg.get("model_type")]
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    st_files = [w for w in weights if w.suffix == ".safetensors"]
    params = _safetensors_params(st_files) if st_files else None
    fmt = "safetensors" if st_files else "pytorch"
    if (path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file():
        return ModelFacts("sentence-transformers", "embedding", arch, params)
    kind = "chat" if arch and arch.endswith("ForCausalLM") else "other"
    return ModelFacts(fmt, kind, arch, params)
