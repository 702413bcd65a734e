"""Loading a model, with or without a LoRA adapter, for evaluation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from onebox.errors import ModelLoadError
from onebox.evaluate.loading import load_for_eval, resolve_dtype


def test_loads_in_eval_mode_with_requested_dtype(tiny_chat_dir: Path) -> None:
    import torch

    model, tok = load_for_eval(tiny_chat_dir, dtype="bf16", device="cpu")
    assert not model.training and next(model.parameters()).dtype == torch.bfloat16
    assert tok.pad_token == "<|pad|>"
    assert resolve_dtype("auto", "cpu") in (torch.bfloat16, torch.float32)
    assert resolve_dtype("fp32") == torch.float32


def test_adapter_is_applied(tiny_chat_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_chat_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[256, 104, 105, 257]])
    with torch.inference_mode():
        expected = peft_model(input_ids=ids).logits

    model, _ = load_for_eval(tiny_chat_dir, tmp_path / "adapter", dtype="float32", device="cpu")
    plain, _ = load_for_eval(tiny_chat_dir, dtype="float32", device="cpu")
    with torch.inference_mode():
        tuned, untuned = model(input_ids=ids).logits, plain(input_ids=ids).logits
    assert torch.allclose(tuned, expected, atol=1e-5)
    assert not torch.allclose(tuned, untuned, atol=1e-3)
    assert not model.training


def test_failures_raise_model_load_error(tiny_chat_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a model directory"):
        load_for_eval(tmp_path)
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_for_eval(tiny_model_dir)  # weights but no tokenizer
    with pytest.raises(ModelLoadError, match="not an adapter directory"):
        load_for_eval(tiny_chat_dir, tmp_path)
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_for_eval(tiny_chat_dir, dtype="int3")
    broken = shutil.copytree(tiny_chat_dir, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="could not load"):
        load_for_eval(broken)
