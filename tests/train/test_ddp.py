"""Data parallelism: 2 CPU processes (torchrun, gloo) follow the loss curve of 1 process with the
same global batch, and progress, stop and errors cross the process boundary."""

from __future__ import annotations

from pathlib import Path

import pytest

from onebox.errors import ConfigError
from onebox.train.config import SFTConfig
from onebox.train.launch import run_sft_distributed
from onebox.train.sft import SFTHooks, run_sft
from tests.train.conftest import write_chats

COMMON = dict(
    max_seq_len=256, micro_batch_size=2, precision="fp32", lr=1e-2, epochs=2, eval_every=3, save_every=4
)


def test_two_processes_match_one_process(tiny_chat_model: Path, tmp_path: Path) -> None:
    train = write_chats(tmp_path / "train.parquet", 60, max_words=6)
    val = write_chats(tmp_path / "val.parquet", 9, seed=5, max_words=6)

    single: dict[int, float] = {}
    one = run_sft(
        tiny_chat_model,
        train,
        val,
        tmp_path / "one",
        SFTConfig(**COMMON, grad_accum=2),
        SFTHooks(on_step=lambda s, t, m: single.__setitem__(s, m["loss"])),
    )

    multi: dict[int, float] = {}
    messages: list[str] = []
    checkpoints: list[int] = []
    two = run_sft_distributed(
        tiny_chat_model,
        train,
        val,
        tmp_path / "two",
        SFTConfig(**COMMON, grad_accum=1, nproc=2),
        SFTHooks(
            on_step=lambda s, t, m: multi.__setitem__(s, m["loss"]),
            on_message=messages.append,
            on_checkpoint=lambda s, p: checkpoints.append(s),
        ),
    )
    assert two.metrics["processes"] == 2 and one.metrics["processes"] == 1
    assert sorted(multi) == sorted(single) and len(single) >= 6
    for step, loss in single.items():
        assert multi[step] == pytest.approx(loss, rel=1e-4), step
    assert two.metrics["val_loss"] == pytest.approx(one.metrics["val_loss"], rel=1e-4)
    assert checkpoints and checkpoints[-1] == two.metrics["steps"]
    assert (
        two.adapter_dir == tmp_path / "two" / "adapter"
        and (two.adapter_dir / "adapter_model.safetensors").is_file()
    )


@pytest.mark.slow
def test_a_rank_error_comes_back_as_the_same_onebox_error(tiny_chat_model: Path, tmp_path: Path) -> None:
    train = write_chats(tmp_path / "train.parquet", 10, max_words=6)
    with pytest.raises(ConfigError) as err:
        run_sft_distributed(
            tiny_chat_model,
            train,
            None,
            tmp_path / "bad",
            SFTConfig(**{**COMMON, "max_seq_len": 4096}, nproc=2),
        )
    assert err.value.problems[0].field == "max_seq_len"


@pytest.mark.slow
def test_fsdp_full_fine_tuning_matches_one_process_and_resumes(tiny_chat_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    train = write_chats(tmp_path / "train.parquet", 40, max_words=6)
    common = {**COMMON, "method": "full", "lr": 2e-3, "epochs": 1, "save_every": 2, "eval_every": 0}
    single: dict[int, float] = {}
    one = run_sft(
        tiny_chat_model,
        train,
        None,
        tmp_path / "one",
        SFTConfig(**common, grad_accum=2),
        SFTHooks(on_step=lambda s, t, m: single.__setitem__(s, m["loss"])),
    )
    sharded: dict[int, float] = {}
    cfg = SFTConfig(**common, grad_accum=1, nproc=2, distributed="fsdp")
    stop_after = 2
    first = run_sft_distributed(
        tiny_chat_model,
        train,
        None,
        tmp_path / "two",
        cfg,
        SFTHooks(
            on_step=lambda s, t, m: sharded.__setitem__(s, m["loss"]),
            should_stop=lambda: len(sharded) >= stop_after,
        ),
    )
    assert first.stopped
    two = run_sft_distributed(
        tiny_chat_model,
        train,
        None,
        tmp_path / "two",
        cfg,
        SFTHooks(on_step=lambda s, t, m: sharded.__setitem__(s, m["loss"])),
    )
    assert two.resumed_from_step is not None and two.resumed_from_step >= stop_after
    assert sorted(sharded) == sorted(single)
    for step, loss in single.items():
        assert sharded[step] == pytest.approx(loss, rel=1e-4), step
    import torch

    ids = torch.tensor([[3, 4, 5, 6]])
    a = AutoModelForCausalLM.from_pretrained(one.model_dir)(ids).logits
    b = AutoModelForCausalLM.from_pretrained(two.model_dir)(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
