"""Load Hugging Face models and PEFT adapters from checkouts whose weight files may be sealed.

With encryption at rest, ``BlobStore.checkout(..., weights_in_memory=True)`` leaves every weight
file (:data:`onebox.store.blobs.WEIGHT_SUFFIXES`) as a *sealed pointer*; configs, tokenizers and
other JSON stay real files. transformers and peft open weights by path, so for such folders this
module reads each pointer's verified plaintext in memory (:func:`onebox.security.sealed.read_pointer`),
parses it with safetensors, and gives transformers the tensors:
``from_pretrained(None, config=..., state_dict=...)`` builds the model on the meta device and adopts
the tensors as its parameters, so weights go from ciphertext to tensors without a plaintext file
and without being allocated twice. A folder without pointers loads exactly as before, through one
``from_pretrained(path)`` call.

Tokenizers need no help (their files are never sealed): load them from the folder as usual.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

from onebox.errors import ModelLoadError, OneboxError, Problem

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_SHOWN_KEYS = 8


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The weight files transformers would read in ``model_dir`` (safetensors first, then
    ``pytorch_model.bin``; sharded checkpoints through their index), or [] when it has none."""
    model_dir = Path(model_dir)
    for index_name, single in ((SAFETENSORS_INDEX, SAFETENSORS), (PICKLE_INDEX, PICKLE)):
        index = model_dir / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ModelLoadError(f"cannot read {index}: {exc}", path=str(index)) from exc
            return [model_dir / name for name in sorted(set(weight_map.values()))]
        if (model_dir / single).is_file():
            return [model_dir / single]
    return []


def is_sealed(path: Path) -> bool:
    """True when ``path`` (a weight file, or a model or adapter folder) is or holds a sealed pointer."""
    from onebox.security.sealed import pointer_digest

    path = Path(path)
    if path.is_dir():
        files = checkpoint_files(path) + [path / name for name in ADAPTER_WEIGHTS]
        return any(pointer_digest(f) is not None for f in files)
    return pointer_digest(path) is not None


def load_tensors(path: Path) -> dict[str, Any]:
    """All tensors of one weight file (safetensors or a torch pickle), on the CPU.

    A sealed pointer is decrypted and verified in memory; the plaintext bytes are dropped once
    parsed, so the peak is about twice this one file, never the whole model.
    """
    import torch
    from safetensors.torch import load, load_file

    from onebox.security.sealed import read_pointer

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weight file {path} is missing", path=str(path))
    data = read_pointer(path)
    try:
        if path.suffix == ".safetensors":
            return load(data) if data is not None else load_file(str(path))
        source: Any = io.BytesIO(data) if data is not None else str(path)
        return dict(torch.load(source, map_location="cpu", weights_only=True))
    except OneboxError:
        raise
    except Exception as exc:  # safetensors and torch.load raise many types; all mean "unreadable"
        raise ModelLoadError(f"cannot read the weights in {path}: {exc}", path=str(path)) from exc


def read_state_dict(model_dir: Path) -> dict[str, Any]:
    """Every tensor of the checkpoint in ``model_dir``, shards merged; a shard that lacks a tensor
    its index promises is an error, not a silently re-initialised weight."""
    model_dir = Path(model_dir)
    files = checkpoint_files(model_dir)
    if not files:
        raise ModelLoadError(
            f"no weights in {model_dir} (expected {SAFETENSORS}, {PICKLE} or a sharded index)",
            path=str(model_dir),
        )
    state: dict[str, Any] = {}
    for f in files:
        state.update(load_tensors(f))
    for index_name in (SAFETENSORS_INDEX, PICKLE_INDEX):
        index = model_dir / index_name
        if index.is_file():
            promised = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            absent = sorted(set(promised) - set(state))
            if absent:
                raise ModelLoadError(
                    f"the shards of {model_dir} lack {len(absent)} tensors named in {index_name}: "
                    f"{_names(absent)}",
                    path=str(model_dir),
                )
            break
    return state


def _names(keys: list[str]) -> str:
    more = len(keys) - _SHOWN_KEYS
    return ", ".join(keys[:_SHOWN_KEYS]) + (f" and {more} more" if more > 0 else "")


def _model_class(auto_cls: Any, config: Any) -> tuple[Any, Any]:
    """The concrete class an ``Auto*`` class picks for ``config`` (and the config it takes).

    ``Auto*.from_pretrained`` insists on a path; the concrete class accepts ``None`` with a
    ``state_dict``, so resolve it the way the auto class does.
    """
    mapping = getattr(auto_cls, "_model_mapping", None)
    if mapping is None:  # already a concrete class
        return auto_cls, config
    from transformers.models.auto.auto_factory import _get_model_class

    if type(config) not in mapping:
        raise ModelLoadError(
            f"{auto_cls.__name__} has no architecture for model type {config.model_type!r}",
            problems=[
                Problem("config.json", f"model_type {config.model_type!r}", "register a supported model")
            ],
        )
    model_cls = _get_model_class(config, mapping)
    text_config_cls = config.sub_configs.get("text_config") if hasattr(config, "sub_configs") else None
    if text_config_cls is not None and getattr(model_cls, "config_class", None) == text_config_cls:
        config = config.get_text_config()
    return model_cls, config


def load_pretrained(auto_cls: Any, model_dir: Path, *, dtype: Any = "auto", **kwargs: Any) -> Any:
    """``auto_cls.from_pretrained(model_dir, dtype=dtype, **kwargs)`` for a folder whose weights
    may be sealed pointers; the returned model is the same either way.

    ``auto_cls`` is an ``Auto*`` class (``AutoModelForCausalLM``, ``AutoModel``...) or a model
    class; ``kwargs`` go to ``from_pretrained`` (``attn_implementation``, ``quantization_config``,
    ``device_map``...). For a sealed folder, missing, unexpected or mis-shaped weights raise
    :class:`ModelLoadError` naming them (a plaintext folder keeps transformers' own behaviour).
    Other failures propagate for the caller to word.
    """
    model_dir = Path(model_dir)
    if not is_sealed(model_dir):
        return auto_cls.from_pretrained(str(model_dir), dtype=dtype, **kwargs)
    from transformers import AutoConfig, GenerationConfig

    kwargs.pop("local_files_only", None)  # nothing is fetched: the config is read from the folder
    config = kwargs.pop("config", None) or AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    model_cls, config = _model_class(auto_cls, config)
    if (model_dir / "generation_config.json").is_file() and "generation_config" not in kwargs:
        kwargs["generation_config"] = GenerationConfig.from_pretrained(str(model_dir), local_files_only=True)
    # transformers raises a bare RuntimeError on the first wrong shape; collect them all instead
    ignore_shapes = bool(kwargs.pop("ignore_mismatched_sizes", False))
    state = read_state_dict(model_dir)
    model, info = model_cls.from_pretrained(
        None,
        config=config,
        state_dict=state,
        dtype=dtype,
        output_loading_info=True,
        ignore_mismatched_sizes=True,
        **kwargs,
    )
    del state  # the model holds what it kept; the rest (dtype casts, unused keys) is freed
    if ignore_shapes:
        info["mismatched_keys"] = ()
    _check_loading(model_dir, info)
    model.config.name_or_path = model.name_or_path = str(model_dir)  # as a path load records it
    return model


def _check_loading(model_dir: Path, info: dict[str, Any]) -> None:
    problems = []
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(info.get("mismatched_keys") or ())
    if missing:
        problems.append(
            Problem("weights", f"{len(missing)} missing: {_names(missing)}", "re-register the model")
        )
    if unexpected:
        problems.append(
            Problem("weights", f"{len(unexpected)} unexpected: {_names(unexpected)}", "check config.json")
        )
    if mismatched:
        shown = [f"{k} {tuple(got)} != {tuple(want)}" for k, got, want in mismatched]
        problems.append(
            Problem("weights", f"{len(shown)} of the wrong shape: {_names(shown)}", "check config.json")
        )
    for msg in info.get("error_msgs") or ():
        problems.append(Problem("weights", str(msg)))
    if problems:
        raise ModelLoadError(
            f"the weights in {model_dir} do not fit its config.json", problems=problems, path=str(model_dir)
        )


def _adapter_weights(adapter_dir: Path) -> Path:
    for name in ADAPTER_WEIGHTS:
        if (adapter_dir / name).is_file():
            return adapter_dir / name
    raise ModelLoadError(
        f"{adapter_dir} has no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})", path=str(adapter_dir)
    )


def _remap(state: dict[str, Any], key_mapping: dict[str, str]) -> dict[str, Any]:
    """Apply a model's checkpoint key mapping to PEFT keys, as ``peft.load_peft_weights`` does."""
    if not key_mapping:
        return state
    out = {}
    for key, value in state.items():
        prefix = "base_model.model." if key.startswith("base_model.model.") else "base_model."
        bare = key.removeprefix(prefix)
        for pattern, replacement in key_mapping.items():
            renamed, n = re.subn(pattern, replacement, bare)
            if n:
                bare = renamed
                break
        out[prefix + bare] = value
    return out


def load_adapter(
    model: Any, adapter_dir: Path, *, is_trainable: bool = False, adapter_name: str = "default"
) -> Any:
    """``PeftModel.from_pretrained(model, adapter_dir, ...)`` for an adapter folder whose weights
    may be a sealed pointer: the PEFT model is built from ``adapter_config.json`` (a real file) and
    given the decrypted tensors with ``set_peft_model_state_dict``.

    Adapter weights that are missing or name modules the model lacks raise :class:`ModelLoadError`.
    """
    from peft import PeftConfig, PeftModel, set_peft_model_state_dict

    adapter_dir = Path(adapter_dir)
    weights = _adapter_weights(adapter_dir)
    if not is_sealed(weights):
        return PeftModel.from_pretrained(model, str(adapter_dir), adapter_name, is_trainable=is_trainable)
    from peft.auto import MODEL_TYPE_TO_PEFT_MODEL_MAPPING
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING

    config = PeftConfig.from_pretrained(str(adapter_dir))
    config.inference_mode = not is_trainable
    peft_cls = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(config.task_type, PeftModel)
    key_mapping = {} if config.is_prompt_learning else getattr(model, "_checkpoint_conversion_mapping", {})
    peft_model = peft_cls(model, config, adapter_name)
    state = _remap(load_tensors(weights), key_mapping)
    try:
        result = set_peft_model_state_dict(peft_model, state, adapter_name=adapter_name)
    except RuntimeError as exc:  # torch's load_state_dict: tensors of the wrong shape
        raise ModelLoadError(
            f"the adapter in {adapter_dir} does not fit the model it was applied to",
            problems=[Problem("adapter weights", str(exc).strip().splitlines()[-1].strip())],
            path=str(adapter_dir),
        ) from exc
    prefix = PEFT_TYPE_TO_PREFIX_MAPPING.get(config.peft_type, "")
    missing = sorted(k for k in result.missing_keys if prefix in k and adapter_name in k)
    unexpected = sorted(result.unexpected_keys)
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(Problem("adapter weights", f"{len(missing)} missing: {_names(missing)}"))
        if unexpected:
            problems.append(
                Problem("adapter weights", f"{len(unexpected)} match no module: {_names(unexpected)}")
            )
        raise ModelLoadError(
            f"the adapter in {adapter_dir} does not fit the model it was applied to",
            problems=problems,
            path=str(adapter_dir),
        )
    if not is_trainable:
        peft_model.eval()
    return peft_model
