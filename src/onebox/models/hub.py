"""Fetching a model by Hugging Face hub id, for machines that are online."""

from __future__ import annotations

import re
from pathlib import Path

from onebox.errors import DependencyMissingError, InvalidInputError, ModelLoadError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(text: str) -> bool:
    return bool(HUB_ID.match(text)) and not Path(text).exists()


def download(repo_id: str, dest: Path, revision: str | None = None) -> Path:
    """Download a snapshot of ``repo_id`` (weights, config, tokenizer) into ``dest``."""
    if not looks_like_hub_id(repo_id):
        raise InvalidInputError(f"{repo_id!r} is not a hub id (expected owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise DependencyMissingError("registering from the hub needs huggingface_hub") from exc
    try:
        snapshot_download(
            repo_id,
            revision=revision,
            local_dir=dest,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"],
        )
    except Exception as exc:  # offline, unknown repo, gated...: one clear error
        raise ModelLoadError(
            f"cannot download {repo_id!r} from the hub: {exc}. On an offline appliance, copy the model "
            "directory onto the machine and register the directory instead"
        ) from exc
    return dest
