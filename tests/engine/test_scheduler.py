"""The scheduler as plain data: a fake runner that 'samples' a fixed token stands in for the model."""

from __future__ import annotations

import pytest

from onebox.engine.scheduler import SampledToken, Scheduler, SchedulerOutput, SeqStatus, Sequence
from onebox.engine.types import SamplingParams
from onebox.errors import InvalidInputError, OverloadedError

EOS = 2


def make(slots: int = 2, budget: int = 8, max_len: int = 64, waiting: int = 4) -> Scheduler:
    return Scheduler(
        num_slots=slots, max_model_len=max_len, max_num_batched_tokens=budget, max_waiting=waiting
    )


def seq(rid: str, n_prompt: int, **params: object) -> Sequence:
    p = SamplingParams(**{"max_tokens": 4, "temperature": 0.0, **params})  # type: ignore[arg-type]
    return Sequence(rid, n_prompt, p, list(range(10, 10 + n_prompt)), eos_token_ids=frozenset({EOS}))


def fake_run(out: SchedulerOutput, token: int = 7) -> dict[str, SampledToken]:
    """What a runner returns: one token for every scheduled sequence that samples."""
    return {s.seq.request_id: SampledToken(token) for s in out.scheduled if s.sample}


def test_long_prompt_is_chunked_and_interleaved_with_decodes() -> None:
    s = make(budget=8)
    s.add(seq("short", 3, max_tokens=10))
    out = s.schedule()
    assert [(p.seq.request_id, p.num_tokens, p.sample) for p in out.prefills] == [("short", 3, True)]
    s.update_from_output(out, fake_run(out))
    s.add(seq("long", 20))
    chunks = []
    for _ in range(3):
        out = s.schedule()
        # the running stream decodes every step while the long prompt is prefilled in chunks
        assert [d.seq.request_id for d in out.decodes] == ["short"]
        assert out.num_tokens <= 8
        chunks.append([(p.start, p.num_tokens, p.sample) for p in out.prefills])
        s.update_from_output(out, fake_run(out))
    assert chunks == [[(0, 7, False)], [(7, 7, False)], [(14, 6, True)]]
    assert s.get("long").num_output == 1  # type: ignore[union-attr]


def test_requests_join_and_leave_between_steps() -> None:
    s = make(slots=2, budget=32)
    for rid in ("a", "b", "c"):
        s.add(seq(rid, 2, max_tokens=2))
    out = s.schedule()
    assert {p.seq.request_id for p in out.prefills} == {"a", "b"}  # only two slots
    assert [q.request_id for q in s.waiting] == ["c"]
    s.update_from_output(out, fake_run(out))
    out = s.schedule()
    res = s.update_from_output(out, fake_run(out))
    assert {r.request_id for r in res if r.finished} == {"a", "b"}
    assert all(r.finish_reason == "length" for r in res)
    out = s.schedule()  # c takes a freed slot
    assert [p.seq.request_id for p in out.prefills] == ["c"]
    assert s.slots.num_used == 1


def test_eos_and_stop_tokens_finish_without_being_emitted() -> None:
    s = make()
    s.add(seq("a", 2, max_tokens=10))
    s.add(seq("b", 2, max_tokens=10, stop_token_ids=(99,)))
    out = s.schedule()
    res = s.update_from_output(out, {"a": SampledToken(EOS), "b": SampledToken(99)})
    assert [(r.request_id, r.new_token_ids, r.finish_reason) for r in res] == [
        ("a", [], "stop"),
        ("b", [], "stop"),
    ]
    assert s.slots.num_free == 2 and not s.has_work


def test_min_tokens_and_ignore_eos_keep_generating() -> None:
    s = make()
    s.add(seq("a", 2, max_tokens=3, ignore_eos=True))
    s.add(seq("b", 2, max_tokens=5, min_tokens=2))
    out = s.schedule()
    res = s.update_from_output(out, {"a": SampledToken(EOS), "b": SampledToken(EOS)})
    assert [(r.new_token_ids, r.finished) for r in res] == [([EOS], False), ([EOS], False)]
    out = s.schedule()
    res = s.update_from_output(out, {"a": SampledToken(EOS), "b": SampledToken(EOS)})
    assert [(r.request_id, r.finished) for r in res] == [("a", False), ("b", False)]  # 2 = min_tokens
    out = s.schedule()
    res = s.update_from_output(out, {"a": SampledToken(EOS), "b": SampledToken(EOS)})
    assert [(r.request_id, r.finished, r.finish_reason) for r in res] == [
        ("a", True, "length"),
        ("b", True, "stop"),
    ]


def test_context_end_finishes_with_length() -> None:
    s = make(max_len=8)
    s.add(seq("a", 5, max_tokens=3))
    for _ in range(3):
        out = s.schedule()
        res = s.update_from_output(out, fake_run(out))
    assert res[0].finished and res[0].finish_reason == "length" and res[0].num_output_tokens == 3


def test_validation_and_overload_change_nothing() -> None:
    s = make(slots=1, waiting=1, max_len=16)
    with pytest.raises(InvalidInputError) as exc:
        s.add(seq("big", 14, max_tokens=4))
    assert exc.value.problems[0].field == "max_tokens"
    s.add(seq("a", 2))
    s.schedule()  # a runs
    s.add(seq("b", 2))  # b waits
    with pytest.raises(OverloadedError) as over:
        s.add(seq("c", 2))
    assert over.value.details["retry_after"] >= 1
    assert [q.request_id for q in s.waiting] == ["b"] and s.get("c") is None
    with pytest.raises(InvalidInputError):
        s.add(seq("a", 2))  # duplicate id


def test_abort_frees_the_slot_at_once() -> None:
    s = make(slots=1)
    s.add(seq("a", 2, max_tokens=50))
    s.add(seq("b", 2))
    out = s.schedule()
    s.update_from_output(out, fake_run(out))
    s.abort("a")
    assert s.slots.num_free == 1
    aborted = s.pop_aborted()
    assert [(r.request_id, r.finish_reason, r.finished) for r in aborted] == [("a", "abort", True)]
    out = s.schedule()
    assert [p.seq.request_id for p in out.prefills] == ["b"] and not out.decodes
    s.abort("b")
    s.abort("unknown")  # ignored
    s.update_from_output(out, fake_run(out))  # the step that ran while b was aborted is dropped
    assert s.get("b") is None and s.slots.num_free == 1


def test_abort_of_waiting_request() -> None:
    s = make(slots=1)
    s.add(seq("a", 2))
    s.schedule()
    s.add(seq("b", 2))
    s.abort("b")
    assert not s.waiting and s.pop_aborted()[0].request_id == "b"
    assert s.get("a") is not None and s.get("a").status is SeqStatus.RUNNING  # type: ignore[union-attr]


def test_lowest_free_slot_keeps_slots_packed() -> None:
    s = make(slots=4, budget=64)
    for rid in "abcd":
        s.add(seq(rid, 2, max_tokens=50))
    out = s.schedule()
    s.update_from_output(out, fake_run(out))
    s.abort("b")
    s.add(seq("e", 2))
    s.schedule()
    assert s.get("e").slot == 1  # type: ignore[union-attr]


def run_to_end(s: Scheduler) -> list[SchedulerOutput]:
    outs = []
    while s.has_work:
        out = s.schedule()
        outs.append(out)
        s.update_from_output(out, fake_run(out))
    return outs


def prompt_seq(rid: str, tokens: list[int], lora: object = None) -> Sequence:
    p = SamplingParams(max_tokens=2, temperature=0.0)
    return Sequence(rid, len(tokens), p, list(tokens), lora=lora, eos_token_ids=frozenset({EOS}))


SHARED = list(range(100, 140))  # a 40-token "system prompt"


def test_prefix_cache_reuses_a_finished_slot_in_place() -> None:
    s = make(slots=2, budget=64)
    s.add(prompt_seq("a", [*SHARED, 1, 2, 3]))
    run_to_end(s)
    s.add(prompt_seq("b", [*SHARED, 4, 5]))
    out = s.schedule()
    (p,) = out.prefills
    assert p.seq.slot == 0 and p.start == 40 and p.num_tokens == 2  # the slot already holds SHARED
    assert out.copies == []
    assert s.prefix is not None and s.prefix.hit_tokens_total == 40


def test_prefix_cache_copies_from_a_running_slot_and_always_computes_the_last_token() -> None:
    s = make(slots=3, budget=64)
    s.add(prompt_seq("a", [*SHARED, 1, 2, 3]))
    s.update_from_output(out := s.schedule(), fake_run(out))  # a prefilled, now decoding in slot 0
    s.add(prompt_seq("b", [*SHARED, 1, 2, 3]))  # the identical prompt
    out = s.schedule()
    (p,) = out.prefills
    assert out.copies == [(0, 1, 42)] and p.start == 42 and p.num_tokens == 1 and p.sample


def test_prefix_cache_needs_the_same_adapter_and_can_be_off() -> None:
    s = make(slots=3, budget=64)
    s.add(prompt_seq("a", [*SHARED, 1], lora="adapter-x"))
    s.update_from_output(out := s.schedule(), fake_run(out))
    s.add(prompt_seq("b", [*SHARED, 2]))  # base model: a's keys/values do not apply
    out = s.schedule()
    assert out.copies == [] and out.prefills[0].start == 0
    off = Scheduler(
        num_slots=2, max_model_len=64, max_num_batched_tokens=64, max_waiting=4, prefix_caching=False
    )
    off.add(prompt_seq("a", [*SHARED, 1]))
    run_to_end(off)
    off.add(prompt_seq("b", [*SHARED, 2]))
    assert off.schedule().prefills[0].start == 0


def test_prefix_cache_forgets_a_slot_when_it_is_reused() -> None:
    s = make(slots=1, budget=64)
    s.add(prompt_seq("a", [*SHARED, 1]))
    run_to_end(s)
    other = list(range(300, 340))
    s.add(prompt_seq("b", [*other, 1]))
    run_to_end(s)  # slot 0 now holds `other`
    s.add(prompt_seq("c", [*SHARED, 2]))
    assert s.schedule().prefills[0].start == 0
