"""Loading transformers models and PEFT adapters from folders whose weights are sealed pointers.

The pointers here resolve through an in-memory stand-in for the blob store (the encrypted store
itself is exercised end to end in tests/security/test_sealed_loading.py): what is under test is
that a sealed folder gives the very model a plaintext folder gives, and says clearly when not.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from onebox.errors import ConfigError, ModelLoadError
from onebox.models import pretrained
from onebox.security import sealed
from onebox.store.blobs import WEIGHT_SUFFIXES
from tests.train.conftest import make_tiny_model

Seal = Callable[[Path, Path], Path]


@pytest.fixture
def seal(monkeypatch: pytest.MonkeyPatch) -> Seal:
    """Copy a folder with its weight files replaced by sealed pointers (as an encrypted checkout
    with ``weights_in_memory`` lays it out), resolving through an in-memory blob table."""
    blobs: dict[str, bytes] = {}
    monkeypatch.setattr(sealed, "_reader", blobs.__getitem__)

    def make(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst)
        for f in dst.rglob("*"):
            if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES):
                data = f.read_bytes()
                digest = hashlib.sha256(data).hexdigest()
                blobs[digest] = data
                sealed.write_pointer(f, digest, len(data))
        return dst

    return make


@pytest.fixture(scope="module")
def tied_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with tied embeddings, a tokenizer and a generation config."""
    return make_tiny_model(tmp_path_factory.mktemp("tied"))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([[1, 5, 9, 13, 200]])).logits


def _load(path: Path, **kw: object) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return pretrained.load_pretrained(AutoModelForCausalLM, path, **kw)


def test_sealed_folder_gives_the_plaintext_model(tied_model: Path, tmp_path: Path, seal: Seal) -> None:
    sealed_dir = seal(tied_model, tmp_path / "sealed")
    assert pretrained.is_sealed(sealed_dir) and not pretrained.is_sealed(tied_model)
    plain, inmem = _load(tied_model), _load(sealed_dir)
    assert torch.equal(_logits(plain), _logits(inmem))
    assert inmem.lm_head.weight is inmem.model.embed_tokens.weight  # still tied
    assert inmem.generation_config.to_dict() == plain.generation_config.to_dict()
    assert inmem.config.name_or_path == inmem.name_or_path == str(sealed_dir) and not inmem.training
    assert plain.name_or_path == str(tied_model)  # what peft records as the adapter's base
    for dtype in (torch.bfloat16, "auto"):
        a, b = _load(tied_model, dtype=dtype), _load(sealed_dir, dtype=dtype)
        assert a.dtype == b.dtype and torch.equal(_logits(a), _logits(b))


def test_sharded_and_pickled_checkpoints(tiny_model_dir: Path, tmp_path: Path, seal: Seal) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 2
    sharded = seal(tmp_path / "sharded", tmp_path / "sharded-sealed")
    assert (sharded / pretrained.SAFETENSORS_INDEX).is_file()
    assert torch.equal(_logits(_load(sharded)), _logits(model))

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_model_dir / "config.json", pickled)
    torch.save(model.state_dict(), pickled / pretrained.PICKLE)
    assert torch.equal(_logits(_load(seal(pickled, tmp_path / "pickled-sealed"))), _logits(model))


def test_a_shard_short_of_its_index_is_named(tiny_model_dir: Path, tmp_path: Path, seal: Seal) -> None:
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(
        tmp_path / "s", max_shard_size="20KB"
    )
    index = json.loads((tmp_path / "s" / pretrained.SAFETENSORS_INDEX).read_text())
    key, shard = next(iter(sorted(index["weight_map"].items())))
    tensors = load_file(tmp_path / "s" / shard)
    del tensors[key]
    save_file(tensors, tmp_path / "s" / shard, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=f"lack 1 tensors.*{key}"):
        _load(seal(tmp_path / "s", tmp_path / "s-sealed"))


def test_weights_that_do_not_fit_are_a_clear_error(tiny_model_dir: Path, tmp_path: Path, seal: Seal) -> None:
    from safetensors.torch import load_file, save_file

    src = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, src)
    tensors = load_file(src / pretrained.SAFETENSORS)
    tensors["model.extra.weight"] = torch.zeros(2)
    del tensors["model.norm.weight"]
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(tensors, src / pretrained.SAFETENSORS, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError) as err:
        _load(seal(src, tmp_path / "bad-sealed"))
    text = str(err.value)
    assert "model.norm.weight" in text and "model.extra.weight" in text and "up_proj" in text


def test_no_weights_and_no_store(tiny_model_dir: Path, tmp_path: Path, seal: Seal) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(tiny_model_dir / "config.json", empty)
    with pytest.raises(ModelLoadError, match="no weights"):
        pretrained.read_state_dict(empty)
    sealed_dir = seal(tiny_model_dir, tmp_path / "sealed")
    sealed.set_reader(None)  # type: ignore[arg-type]  # a process that opened no store
    with pytest.raises(ConfigError, match="no encrypted artifact store"):
        _load(sealed_dir)


def test_sealed_adapter_gives_the_same_output(
    tiny_model_dir: Path, tiny_lora_dirs: list[Path], tmp_path: Path, seal: Seal
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lora = seal(tiny_lora_dirs[0], tmp_path / "lora")
    assert pretrained.is_sealed(lora)
    want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_lora_dirs[0])
    got = pretrained.load_adapter(_load(seal(tiny_model_dir, tmp_path / "base")), lora)
    assert not got.training
    assert torch.equal(_logits(got), _logits(want))
    with got.disable_adapter():
        assert not torch.equal(_logits(got), _logits(want))  # the adapter does something
    merged = got.merge_and_unload()
    assert torch.allclose(_logits(merged), _logits(want.merge_and_unload()), atol=1e-6)

    trainable = pretrained.load_adapter(_load(tiny_model_dir), lora, is_trainable=True)
    names = [n for n, p in trainable.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)


def test_an_adapter_of_another_model_is_refused(
    tiny_lora_dirs: list[Path], tmp_path: Path, seal: Seal
) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    lora = seal(tiny_lora_dirs[0], tmp_path / "lora")
    shapes = dict(vocab_size=256, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
    shallower = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=1, **shapes))
    with pytest.raises(ModelLoadError, match="does not fit") as err:
        pretrained.load_adapter(shallower, lora)
    assert "layers.1" in str(err.value)  # the adapter's second layer has nowhere to go
    wider = LlamaForCausalLM(LlamaConfig(hidden_size=64, num_hidden_layers=2, **shapes))
    with pytest.raises(ModelLoadError, match="does not fit") as err:
        pretrained.load_adapter(wider, lora)
    assert "size mismatch" in str(err.value)


def test_encoder_layouts(tmp_path: Path, seal: Seal) -> None:
    """The sentence-transformers encoder and a cross-encoder, as the KB loaders read them."""
    from onebox.engine.embeddings import EmbeddingEngine
    from onebox.models.catalog import get_entry
    from onebox.rag.rerank import Reranker
    from tests.rag.test_rerank import _tiny_model

    minilm = get_entry("all-minilm-l6-v2").locate()
    texts = ["annual leave is fifteen days", "员工每年享有十五天带薪年假。"]
    plain = EmbeddingEngine.from_model_dir(minilm)
    inmem = EmbeddingEngine.from_model_dir(seal(minilm, tmp_path / "minilm"))
    assert pretrained.is_sealed(tmp_path / "minilm")
    assert (plain.embed_sync(texts)[0] == inmem.embed_sync(texts)[0]).all()
    plain.close()
    inmem.close()

    ranker = _tiny_model(tmp_path / "ce", 2)
    a, b = Reranker.load(ranker), Reranker.load(seal(ranker, tmp_path / "ce-sealed"))
    assert (a.score("leave", texts) == b.score("leave", texts)).all()
