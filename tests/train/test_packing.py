"""Packing without cross-contamination: a packed batch has exactly the loss (and gradients) of
its samples run one by one through the unmodified Hugging Face model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onebox.train.config import SFTConfig
from onebox.train.data import ChatEncoder, StepPlan, collate, pack
from onebox.train.model import load_model, load_tokenizer, resolve_precision
from onebox.train.sft import _LossModule
from tests.train.conftest import chat_examples


def test_pack_fills_rows_and_keeps_every_sample_once() -> None:
    lengths = [5, 9, 3, 7, 2, 8, 6, 1, 4]
    rows = pack(lengths, list(range(len(lengths))), capacity=10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 5  # 45 tokens in rows of 10: the minimum


def test_step_plan_splits_the_same_global_batch_across_processes(smol_tokenizer) -> None:  # type: ignore[no-untyped-def]
    samples, _ = ChatEncoder(smol_tokenizer).encode(chat_examples(50), max_seq_len=128)
    common = dict(max_seq_len=128, packing=True, seed=3, epochs=2.0, max_steps=None)
    one = StepPlan(samples, micro_batch_size=2, grad_accum=2, world=1, **common)
    two = StepPlan(samples, micro_batch_size=2, grad_accum=1, world=2, **common)
    assert one.total_steps == two.total_steps > 2
    for step in range(one.total_steps):
        rows_one = [r for j in range(2) for r in one.micro_rows(step, j, 0)]
        rows_two = [r for rank in range(2) for r in two.micro_rows(step, 0, rank)]
        assert rows_one == rows_two
    assert one.rows(0) != one.rows(1)  # reshuffled per epoch
    again = StepPlan(samples, micro_batch_size=2, grad_accum=2, world=1, **common)
    assert again.rows(1) == one.rows(1)  # but deterministically


def test_labels_never_cross_sample_boundaries(smol_tokenizer) -> None:  # type: ignore[no-untyped-def]
    samples, _ = ChatEncoder(smol_tokenizer).encode(chat_examples(6), max_seq_len=256)
    batch = collate(samples, [list(range(6))], pad_id=0)
    at = 0
    for n in batch.lengths[0]:
        assert batch.labels[0, at + n - 1] == -100  # the last token of a sample predicts nothing
        assert batch.position_ids[0, at] == 0
        at += n


@pytest.mark.parametrize("attention", ["varlen", "sdpa", "eager"])
def test_packed_loss_equals_separate_loss(tiny_chat_model: Path, attention: str) -> None:
    from transformers import AutoModelForCausalLM

    cfg = SFTConfig(method="full", precision="fp32", attention=attention, max_seq_len=256)
    tok = load_tokenizer(tiny_chat_model)
    samples, _ = ChatEncoder(tok).encode(chat_examples(8, max_words=6), max_seq_len=256)
    rows = pack([len(s) for s in samples], list(range(len(samples))), 256)
    assert any(len(r) > 2 for r in rows)
    precision = resolve_precision("fp32", torch.device("cpu"), "full")
    loaded = load_model(tiny_chat_model, cfg, precision, torch.device("cpu"))
    module = _LossModule(loaded.model, loaded.attn, precision)
    batch = collate(samples, rows, pad_id=tok.pad_token_id)
    packed = module(batch.input_ids, batch.position_ids, batch.labels, batch.lengths)
    packed_grads = torch.autograd.grad(packed, [p for p in loaded.model.parameters()])

    ref_model = AutoModelForCausalLM.from_pretrained(
        tiny_chat_model, dtype=torch.float32, attn_implementation="eager"
    )
    separate = 0.0
    for s in samples:
        ids = torch.from_numpy(s.ids)[None]
        labels = torch.where(torch.from_numpy(s.target)[None], ids, -100)
        out = ref_model(input_ids=ids, labels=labels)  # HF shifts labels itself
        separate = separate + out.loss * s.num_targets
    ref_grads = torch.autograd.grad(separate, [p for p in ref_model.parameters()])
    torch.testing.assert_close(packed, separate, rtol=1e-5, atol=1e-4)
    for a, b in zip(packed_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
