"""Sampling on synthetic logits: no model needed."""

from __future__ import annotations

import math

import pytest
import torch

from onebox.engine.sampler import Sampler, SampleRow
from onebox.engine.types import SamplingParams
from onebox.errors import InvalidInputError

V = 50


def row(
    params: SamplingParams,
    history: list[int] | None = None,
    prompt_len: int | None = None,
    seed: int | None = None,
) -> SampleRow:
    toks = history or [1, 2, 3]
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return SampleRow(params, toks, len(toks) if prompt_len is None else prompt_len, frozenset({0}), gen)


def logits(n: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_and_degenerate_filters_pick_the_argmax() -> None:
    lg = logits(4)
    best = lg.argmax(-1).tolist()
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=1.0, top_p=1e-6),
        SamplingParams(temperature=1.0, min_p=1.0),
    ]
    out = Sampler().sample(lg.clone(), [row(p) for p in params])
    assert [o.token_id for o in out] == best


def test_seed_is_reproducible_and_independent_of_the_batch() -> None:
    p = SamplingParams(temperature=1.0, seed=42)
    lg = logits(1)
    a = [Sampler().sample(lg.clone(), [row(p, seed=42)])[0].token_id for _ in range(3)]
    batch = torch.cat([logits(1, seed=7), lg, logits(1, seed=8)])
    b = Sampler().sample(batch, [row(SamplingParams()), row(p, seed=42), row(SamplingParams())])[1].token_id
    assert a == [a[0]] * 3 and b == a[0]


def test_sampling_follows_the_distribution() -> None:
    lg = torch.full((1, V), -30.0)
    lg[0, 5], lg[0, 9] = math.log(0.8), math.log(0.2)
    gen_row = row(SamplingParams(temperature=1.0), seed=1)
    counts = {5: 0, 9: 0}
    for _ in range(2000):
        counts[Sampler().sample(lg.clone(), [gen_row])[0].token_id] += 1
    assert 0.75 < counts[5] / 2000 < 0.85


def test_top_k_and_top_p_restrict_the_candidates() -> None:
    lg = logits(1)
    top3 = set(torch.topk(lg[0], 3).indices.tolist())
    gen_row = row(SamplingParams(temperature=2.0, top_k=3), seed=3)
    seen = {Sampler().sample(lg.clone(), [gen_row])[0].token_id for _ in range(200)}
    assert seen <= top3 and len(seen) > 1
    probs = torch.softmax(lg[0], -1)
    order = torch.argsort(probs, descending=True)
    nucleus = set(order[: int((torch.cumsum(probs[order], 0) < 0.5).sum()) + 1].tolist())
    gen_row = row(SamplingParams(temperature=1.0, top_p=0.5), seed=4)
    seen = {Sampler().sample(lg.clone(), [gen_row])[0].token_id for _ in range(200)}
    assert seen <= nucleus


def test_penalties() -> None:
    lg = torch.zeros(1, V)
    lg[0, 7] = 2.0
    lg[0, 8] = 1.9
    # token 7 was generated twice: frequency penalty 0.1 * 2 + presence 0 leaves 1.8 < 1.9
    out = Sampler().sample(
        lg.clone(), [row(SamplingParams(temperature=0.0, frequency_penalty=0.1), [1, 7, 7], prompt_len=1)]
    )
    assert out[0].token_id == 8
    out = Sampler().sample(
        lg.clone(), [row(SamplingParams(temperature=0.0, presence_penalty=0.05), [1, 7, 7], prompt_len=1)]
    )
    assert out[0].token_id == 7  # presence counts once: 1.95 > 1.9
    # repetition penalty covers the prompt too
    out = Sampler().sample(
        lg.clone(), [row(SamplingParams(temperature=0.0, repetition_penalty=1.2), [7], prompt_len=1)]
    )
    assert out[0].token_id == 8


def test_min_tokens_and_ignore_eos_suppress_eos() -> None:
    lg = torch.zeros(1, V)
    lg[0, 0] = 10.0  # EOS is by far the most likely
    assert Sampler().sample(lg.clone(), [row(SamplingParams(temperature=0.0))])[0].token_id == 0
    assert (
        Sampler().sample(lg.clone(), [row(SamplingParams(temperature=0.0, ignore_eos=True))])[0].token_id != 0
    )
    p = SamplingParams(temperature=0.0, min_tokens=2, max_tokens=5)
    assert Sampler().sample(lg.clone(), [row(p, [1, 2, 3, 4], prompt_len=3)])[0].token_id != 0
    assert Sampler().sample(lg.clone(), [row(p, [1, 2, 3, 4, 5], prompt_len=3)])[0].token_id == 0


def test_logprobs() -> None:
    lg = logits(1)
    out = Sampler().sample(lg.clone(), [row(SamplingParams(temperature=0.0, logprobs=3))])[0]
    ref = torch.log_softmax(lg[0], -1)
    assert out.logprob is not None
    assert out.logprob.token_id == out.token_id
    assert out.logprob.logprob == pytest.approx(float(ref.max()), abs=1e-5)
    assert [t for t, _ in out.logprob.top] == torch.topk(ref, 3).indices.tolist()


def test_bad_params_are_all_reported() -> None:
    with pytest.raises(InvalidInputError) as exc:
        SamplingParams(max_tokens=0, temperature=-1, top_p=0, min_p=2, logprobs=99)
    fields = {p.field for p in exc.value.problems}
    assert {"max_tokens", "temperature", "top_p", "min_p", "top_logprobs"} <= fields
