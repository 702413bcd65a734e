"""The built-in models: installed offline from PyPI packages, converted once, and usable."""

from __future__ import annotations

import pytest

from onebox.errors import NotAModelError
from onebox.models.catalog import CATALOG
from onebox.models.gguf import convert_gguf
from onebox.models.inspect import inspect_path
from onebox.services import models
from onebox.services.context import App

pytestmark = pytest.mark.slow


def test_both_builtins_are_ready(builtin_app: App) -> None:
    rows = {r["name"]: r for r in models.list_models(builtin_app)}
    for key in CATALOG:
        assert rows[key]["status"] == "ready" and rows[key]["builtin"], rows[key]
    smol = rows["smollm2-135m-instruct"]
    assert smol["format"] == "safetensors" and smol["kind"] == "chat"
    assert 130e6 < smol["parameters"] < 140e6 and smol["license"] == "Apache-2.0"
    assert rows["all-minilm-l6-v2"]["kind"] == "embedding"


def test_converted_smollm2_answers_sensibly(builtin_app: App) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = models.checkout(builtin_app, "smollm2-135m-instruct")
    names = {p.name for p in path.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert not getattr(model.config, "quantization_config", None)
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=24, do_sample=False)
    answer = tok.decode(out[0][enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_embedding_builtin_embeds(builtin_app: App) -> None:
    from sentence_transformers import SentenceTransformer

    path = models.checkout(builtin_app, "all-minilm-l6-v2")
    st = SentenceTransformer(str(path), device="cpu")
    vecs = st.encode(["The cat sits on the mat.", "A cat is sitting on a mat.", "Stock prices fell today."])
    assert vecs.shape == (3, 384)
    sim = vecs @ vecs.T
    assert sim[0, 1] > sim[0, 2]


def test_install_is_idempotent(builtin_app: App) -> None:
    for key in CATALOG:
        assert not models.install_builtin(builtin_app, key).created


def test_converted_directory_reregisters_identically(builtin_app: App, tmp_path) -> None:
    path = models.checkout(builtin_app, "smollm2-135m-instruct")
    facts = inspect_path(path)
    assert facts.format == "safetensors" and facts.architecture == "LlamaForCausalLM"
    with pytest.raises(NotAModelError):
        convert_gguf(path / "config.json", tmp_path / "out")
