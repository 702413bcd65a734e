"""SFTConfig: validation reports every bad field at once, with fixes; round trips; the demo recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from onebox.errors import ConfigError
from onebox.train.config import SFTConfig
from onebox.train.demo import RECIPE


def test_defaults_are_valid_and_documented() -> None:
    SFTConfig().validate()
    source = Path(__import__("onebox.train.config", fromlist=["x"]).__file__).read_text()
    for name in SFTConfig.__dataclass_fields__:
        assert f"    {name}: " in source
        # every field is followed by its docstring
        after = source.split(f"    {name}: ", 1)[1].split("\n", 2)
        assert after[1].strip().startswith('"""'), name


def test_validate_lists_every_bad_field_with_a_fix() -> None:
    cfg = SFTConfig(
        method="dora",
        lora_r=0,
        lora_dropout=1.5,
        target_modules="attention",
        max_seq_len=4,
        micro_batch_size=0,
        grad_accum=-1,
        epochs=0,
        max_steps=0,
        lr=0.0,
        warmup_ratio=1.0,
        precision="fp8",
        eval_every=-1,
        keep_last=0,
        early_stopping_patience=0,
        memory_budget_gb=-1,
        nproc=0,
        attention="flash",
    )
    with pytest.raises(ConfigError) as err:
        cfg.validate()
    fields = [p.field for p in err.value.problems]
    assert fields == [
        "method",
        "lora_r",
        "lora_dropout",
        "target_modules",
        "max_seq_len",
        "micro_batch_size",
        "grad_accum",
        "nproc",
        "epochs",
        "max_steps",
        "lr",
        "warmup_ratio",
        "precision",
        "eval_every",
        "keep_last",
        "early_stopping_patience",
        "memory_budget_gb",
        "attention",
    ]
    assert all(p.reason for p in err.value.problems)
    assert err.value.exit_code == 4 and "method" in str(err.value)
    by_field = {p.field: p for p in err.value.problems}
    assert "lora" in by_field["method"].fix and "all-linear" in by_field["target_modules"].fix


def test_model_context_check() -> None:
    SFTConfig(max_seq_len=2048).validate({"max_position_embeddings": 2048})
    with pytest.raises(ConfigError) as err:
        SFTConfig(max_seq_len=4096).validate({"max_position_embeddings": 2048})
    assert err.value.problems[0].fix == "use max_seq_len <= 2048"


def test_combinations() -> None:
    with pytest.raises(ConfigError, match="fsdp"):
        SFTConfig(distributed="fsdp").validate()
    SFTConfig(method="full", distributed="fsdp").validate()
    with pytest.raises(ConfigError, match="16-bit"):
        SFTConfig(method="qlora", precision="fp32").validate()


def test_round_trips_and_rejects_unknown_keys(tmp_path: Path) -> None:
    cfg = SFTConfig(target_modules=["q_proj", "v_proj"], max_steps=10, merge=True)
    assert SFTConfig.from_dict(json.loads(json.dumps(cfg.as_dict()))) == cfg
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert SFTConfig.from_file(path) == cfg
    assert yaml.safe_load(cfg.to_yaml())["target_modules"] == ["q_proj", "v_proj"]
    path.write_text("lr: 2e-4\nepochs: 3\nwarmup_ratio: 1e-2\n")  # YAML 1.1 reads 2e-4 as a string
    loaded = SFTConfig.from_file(path)
    assert (loaded.lr, loaded.warmup_ratio) == (2e-4, 0.01)
    loaded.validate()
    with pytest.raises(ConfigError) as err:
        SFTConfig.from_dict({"lr": 1e-4, "learning_rate": 1e-4, "epoch": 3})
    assert [p.field for p in err.value.problems] == ["epoch", "learning_rate"]


def test_demo_recipe_is_valid() -> None:
    cfg = SFTConfig.from_file(RECIPE)
    cfg.validate({"max_position_embeddings": 8192})
    assert cfg.method == "lora" and cfg.target_modules == "all-linear"
