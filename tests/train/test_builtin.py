"""The recipe on the real built-in model (SmolLM2-135M-Instruct): a few bf16 LoRA steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from onebox.data.importer import ImportOptions, prepare
from onebox.train.config import SFTConfig
from onebox.train.sft import SFTHooks, run_sft


@pytest.mark.slow
def test_lora_steps_on_smollm2(builtin_app, demo_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from onebox.services import models

    base = models.checkout(builtin_app, "smollm2-135m-instruct")
    data = prepare(demo_dir / "varnolia_sft.jsonl", tmp_path / "data", ImportOptions())
    losses: list[float] = []
    cfg = SFTConfig(max_steps=6, micro_batch_size=1, grad_accum=1, lr=1e-3, warmup_ratio=0.0, eval_every=3)
    result = run_sft(
        base,
        data.files["train"],
        data.files["validation"],
        tmp_path / "run",
        cfg,
        SFTHooks(on_step=lambda s, t, m: losses.append(m["loss"])),
    )
    assert len(losses) == 6 and min(losses[3:]) < losses[0]
    assert result.metrics["attention"] == "onebox_varlen" and result.metrics["val_loss"] is not None
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert result.metrics["trainable_params"] > 4_000_000  # r=16 on all 7 linears x 30 layers
