"""Shared, expensive engine fixtures: the built-in SmolLM2 checkout, HF reference model, adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

PROMPTS = [
    "What is the capital of France?",
    "用中文介绍一下长城。",
    "Write a haiku about autumn leaves.",
    "List three prime numbers and explain why each one is prime, step by step.",
]


@pytest.fixture(scope="session")
def smollm_tok(smollm2_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def chat_prompts(smollm_tok: Any) -> list[list[int]]:
    return [
        list(
            smollm_tok.apply_chat_template(
                [{"role": "user", "content": m}], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
        for m in PROMPTS
    ]


@pytest.fixture(scope="session")
def hf_model(smollm2_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def lora_dirs(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two random (non-zero) adapters of different ranks and target modules, saved by peft."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for name, r, targets, seed in (
        ("alpha", 8, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 1),
        ("beta", 4, ["q_proj", "v_proj", "down_proj"], 2),
    ):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
        cfg = LoraConfig(
            r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False, lora_dropout=0.0
        )
        peft_model = get_peft_model(base, cfg)
        with torch.no_grad():  # large enough to change greedy answers, small enough to stay fluent
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.mul_(0.0).add_(torch.randn_like(p) * 0.02)
        d = tmp_path_factory.mktemp(f"lora-{name}")
        peft_model.save_pretrained(d)
        out[name] = d
    return out
