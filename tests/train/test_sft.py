"""The SFT loop end to end on a tiny Llama: outputs, checkpoints and resume, stops, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from onebox.data.parquet import write_examples
from onebox.data.schema import Example
from onebox.errors import ConfigError, DependencyMissingError, InvalidInputError, TrainingDivergedError
from onebox.train.config import SFTConfig
from onebox.train.sft import SFTHooks, SFTResult, run_sft
from tests.train.conftest import make_tiny_model, write_chats

BASE = dict(max_seq_len=256, micro_batch_size=2, grad_accum=2, precision="fp32", lr=5e-3, warmup_ratio=0.1)


def conf(**overrides: object) -> SFTConfig:
    return SFTConfig(**{**BASE, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("sft-data")
    return write_chats(d / "train.parquet", 40, max_words=6), write_chats(
        d / "val.parquet", 8, seed=9, max_words=6
    )


class Recorder:
    def __init__(self, stop_at: int | None = None) -> None:
        self.steps: list[tuple[int, int, dict[str, float]]] = []
        self.checkpoints: list[tuple[int, Path]] = []
        self.messages: list[str] = []
        self.stop_at = stop_at

    def hooks(self) -> SFTHooks:
        return SFTHooks(
            on_step=lambda s, t, m: self.steps.append((s, t, dict(m))),
            should_stop=lambda: (
                self.stop_at is not None and bool(self.steps) and self.steps[-1][0] >= self.stop_at
            ),
            on_checkpoint=lambda s, p: self.checkpoints.append((s, p)),
            on_message=self.messages.append,
        )

    def losses(self) -> dict[int, float]:
        return {s: m["loss"] for s, _, m in self.steps}


def test_lora_run_learns_and_writes_a_peft_adapter(tiny_chat_model: Path, data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    train, val = data
    rec = Recorder()
    cfg = conf(epochs=4, eval_every=5, save_every=0, lr=1e-2)
    result = run_sft(tiny_chat_model, train, val, tmp_path / "out", cfg, rec.hooks())
    steps = [s for s, _, _ in rec.steps]
    assert steps == list(range(1, result.metrics["total_steps"] + 1))
    first, last = rec.steps[0][2], rec.steps[-1][2]
    assert set(first) >= {"loss", "lr", "grad_norm", "tokens_per_s", "step_time", "epoch", "tokens"}
    assert last["loss"] < first["loss"] - 0.5
    assert any("val_loss" in m for _, _, m in rec.steps)
    assert result.metrics["best_val_loss"] < 5.0 and result.metrics["steps"] == steps[-1]
    assert result.metrics["peak_memory_bytes"] > 0 and result.metrics["tokens_per_s"] > 0
    assert result.model_dir is None and not result.stopped and result.resumed_from_step is None
    adapter = result.adapter_dir
    assert adapter is not None
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (adapter / name).is_file(), name
    assert json.loads((tmp_path / "out" / "result.json").read_text())["adapter_dir"] == str(adapter)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_chat_model)
    tuned = PeftModel.from_pretrained(base, adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 16
    ids = torch.tensor([[1, 2, 3]])
    assert not torch.allclose(
        tuned(ids).logits, AutoModelForCausalLM.from_pretrained(tiny_chat_model)(ids).logits
    )


def test_merge_and_full_fine_tuning_write_loadable_models(
    tiny_chat_model: Path, data, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train, _ = data
    merged = run_sft(tiny_chat_model, train, None, tmp_path / "m", conf(max_steps=3, merge=True))
    assert merged.adapter_dir and merged.model_dir
    ids = torch.tensor([[5, 6, 7, 8]])
    with_adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_chat_model), merged.adapter_dir
    )
    folded = AutoModelForCausalLM.from_pretrained(merged.model_dir)
    assert folded.dtype == torch.float32
    torch.testing.assert_close(folded(ids).logits, with_adapter(ids).logits, rtol=1e-4, atol=1e-4)

    full = run_sft(tiny_chat_model, train, None, tmp_path / "f", conf(lr=1e-3, method="full", max_steps=3))
    assert full.adapter_dir is None and full.model_dir is not None
    assert (full.model_dir / "tokenizer.json").is_file()
    changed = AutoModelForCausalLM.from_pretrained(full.model_dir)
    assert not torch.allclose(
        changed(ids).logits, AutoModelForCausalLM.from_pretrained(tiny_chat_model)(ids).logits
    )


def test_resume_continues_the_same_loss_curve(tiny_chat_model: Path, data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    train, val = data
    # dropout on: the RNG state must be restored too, not just weights and optimizer
    cfg = conf(epochs=2, save_every=3, eval_every=4, lora_dropout=0.1)
    whole = Recorder()
    reference = run_sft(tiny_chat_model, train, val, tmp_path / "a", cfg, whole.hooks())

    first = Recorder(stop_at=5)
    stopped = run_sft(tiny_chat_model, train, val, tmp_path / "b", cfg, first.hooks())
    assert stopped.stopped and stopped.adapter_dir is None
    assert [s for s, _ in first.checkpoints] == [3, 5]  # periodic, then on stop
    second = Recorder()
    resumed = run_sft(tiny_chat_model, train, val, tmp_path / "b", cfg, second.hooks())
    assert resumed.resumed_from_step == 5 and not resumed.stopped
    assert any("resumed from step-000005" in m for m in second.messages)
    combined = {**first.losses(), **second.losses()}
    assert sorted(combined) == sorted(whole.losses())
    for step, loss in whole.losses().items():
        assert combined[step] == pytest.approx(loss, rel=1e-6, abs=1e-7), step
    assert resumed.metrics["best_val_loss"] == pytest.approx(reference.metrics["best_val_loss"], rel=1e-6)
    assert resumed.metrics["tokens"] == reference.metrics["tokens"]

    again = run_sft(tiny_chat_model, train, val, tmp_path / "b", cfg)  # finished: only re-exports
    assert again.resumed_from_step == reference.metrics["steps"] and again.adapter_dir is not None


def test_keep_last_bounds_checkpoints_and_storage_is_reported(
    tiny_chat_model: Path, data, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    train, _ = data
    rec = Recorder()
    result = run_sft(
        tiny_chat_model,
        train,
        None,
        tmp_path / "o",
        conf(max_steps=5, save_every=1, keep_last=2),
        rec.hooks(),
    )
    assert [s for s, _ in rec.checkpoints] == [1, 2, 3, 4, 5]
    left = sorted(p.name for p in (tmp_path / "o" / "checkpoints").iterdir())
    assert left == ["step-000004", "step-000005"]
    on_disk = sum(f.stat().st_size for f in (tmp_path / "o" / "checkpoints").rglob("*") if f.is_file())
    assert result.checkpoint_bytes == on_disk > 0
    assert result.metrics["checkpoint_bytes"] == on_disk


def test_corrupted_newest_checkpoint_falls_back_to_the_previous(
    tiny_chat_model: Path, data, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    train, _ = data
    cfg = conf(max_steps=6, save_every=2, keep_last=3)
    run_sft(tiny_chat_model, train, None, tmp_path / "o", cfg, Recorder(stop_at=4).hooks())
    state = tmp_path / "o" / "checkpoints" / "step-000004" / "state.pt"
    raw = bytearray(state.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    state.write_bytes(bytes(raw))
    rec = Recorder()
    result = run_sft(tiny_chat_model, train, None, tmp_path / "o", cfg, rec.hooks())
    assert result.resumed_from_step == 2
    assert any("corrupted" in m for m in rec.messages)


def test_resuming_with_a_changed_recipe_is_refused(tiny_chat_model: Path, data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    train, _ = data
    run_sft(tiny_chat_model, train, None, tmp_path / "o", conf(max_steps=2))
    with pytest.raises(ConfigError) as err:
        run_sft(tiny_chat_model, train, None, tmp_path / "o", conf(lr=1e-4, max_steps=2))
    assert [p.field for p in err.value.problems] == ["lr"]


def test_nan_stops_the_run_with_a_clear_error(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file, save_file

    model = make_tiny_model(tmp_path / "bad")
    weights = load_file(model / "model.safetensors")
    weights["model.norm.weight"][0] = float("nan")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(TrainingDivergedError) as err:
        run_sft(model, data[0], None, tmp_path / "o", conf(max_steps=3))
    assert "diverged at step 1" in str(err.value) and err.value.code == "training_diverged"
    assert {p.field for p in err.value.problems} >= {"lr", "precision"}
    assert not list((tmp_path / "o" / "checkpoints").glob("step-*"))


def test_early_stopping(tiny_chat_model: Path, tmp_path: Path) -> None:
    train, val = tmp_path / "train.parquet", tmp_path / "val.parquet"
    # learning to always answer "aaaa" makes the loss on "zzzz" answers worse at every evaluation
    write_examples(
        train,
        [
            Example(i, messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "aaaa"}])
            for i in range(40)
        ],
    )
    write_examples(
        val,
        [
            Example(i, messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "zzzz"}])
            for i in range(4)
        ],
    )
    cfg = conf(lr=5e-2, epochs=10, eval_every=1, early_stopping_patience=2)
    result = run_sft(tiny_chat_model, train, val, tmp_path / "o", cfg)
    assert result.metrics["early_stopped"] and result.metrics["steps"] < result.metrics["total_steps"]
    assert result.adapter_dir is not None and result.metrics["best_step"] is not None


# ------------------------------------------------------------------ bad input


def test_bad_inputs_are_clear_errors(tiny_chat_model: Path, data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    train, _ = data
    out = tmp_path / "o"

    with pytest.raises(ConfigError) as err:  # longer than the model's context (256)
        run_sft(tiny_chat_model, train, None, out, conf(max_seq_len=1024))
    assert err.value.problems[0].field == "max_seq_len" and "256" in str(err.value)

    with pytest.raises(ConfigError) as err:
        run_sft(tiny_chat_model, train, None, out, conf(target_modules=["q_proj", "wqkv"]))
    problem = err.value.problems[0]
    assert (
        problem.field == "target_modules" and "wqkv" in problem.reason and "down_proj" in (problem.fix or "")
    )

    with pytest.raises(ConfigError) as err:
        run_sft(tiny_chat_model, train, None, out, conf(micro_batch_size=64, memory_budget_gb=0.8))
    fields = {p.field for p in err.value.problems}
    assert "micro_batch_size" in fields and "gradient_checkpointing" in fields
    assert "memory budget" in err.value.message

    no_assistant = tmp_path / "prompts.parquet"
    write_examples(no_assistant, [Example(1, messages=[{"role": "user", "content": "hello?"}])])
    with pytest.raises(InvalidInputError, match="assistant"):
        run_sft(tiny_chat_model, no_assistant, None, out, conf())

    if not torch.cuda.is_available():
        with pytest.raises(DependencyMissingError, match="CUDA"):
            run_sft(tiny_chat_model, train, None, out, conf(precision="auto", method="qlora"))
        with pytest.raises(ConfigError, match="fp16"):
            run_sft(tiny_chat_model, train, None, out, conf(precision="fp16"))
    assert not out.exists() or not list(out.rglob("step-*"))


def test_result_round_trips_through_json() -> None:
    r = SFTResult(Path("/a"), None, {"loss": 1.0}, 3, False, 10)
    assert SFTResult.from_dict(json.loads(json.dumps(r.as_dict()))) == r


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_qlora_on_cuda(tiny_chat_model: Path, data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("bitsandbytes")
    cfg = conf(precision="auto", method="qlora", max_steps=3)
    result = run_sft(tiny_chat_model, data[0], None, tmp_path / "o", cfg)
    assert result.adapter_dir is not None and result.metrics["steps"] == 3


def test_options_that_must_not_change_the_loss(tiny_chat_model: Path, data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Gradient checkpointing and the attention implementation change speed/memory, not the curve."""
    train, _ = data
    curves = {}
    for name, extra in {
        "plain": {},
        "checkpointing": {"gradient_checkpointing": True},
        "sdpa": {"attention": "sdpa"},
    }.items():
        rec = Recorder()
        run_sft(tiny_chat_model, train, None, tmp_path / name, conf(max_steps=4, **extra), rec.hooks())
        curves[name] = list(rec.losses().values())
    for name in ("checkpointing", "sdpa"):
        assert curves[name] == pytest.approx(curves["plain"], rel=1e-5), name


def test_without_packing_each_row_is_one_sample(tiny_chat_model: Path, data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    train, _ = data
    result = run_sft(tiny_chat_model, train, None, tmp_path / "o", conf(packing=False, max_steps=3))
    assert result.metrics["rows_per_step"] == 4 and result.metrics["steps"] == 3


@pytest.mark.slow  # inductor compiles for ~30 s
def test_compile_option_runs(tiny_chat_model: Path, data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    train, _ = data
    plain, compiled = Recorder(), Recorder()
    run_sft(tiny_chat_model, train, None, tmp_path / "a", conf(max_steps=2), plain.hooks())
    run_sft(tiny_chat_model, train, None, tmp_path / "b", conf(max_steps=2, compile=True), compiled.hooks())
    assert list(compiled.losses().values()) == pytest.approx(list(plain.losses().values()), rel=1e-4)


def test_checkpoint_budget_is_enforced(tiny_chat_model: Path, data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as err:
        run_sft(tiny_chat_model, data[0], None, tmp_path / "o", conf(keep_last=3, checkpoint_budget_gb=1e-6))
    assert err.value.problems[0].field == "keep_last"
