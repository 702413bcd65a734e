"""QuotaGate (GCRA per key and per project), LimitsCache and the concurrent-jobs quota."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from onebox.api.errors import error_response
from onebox.errors import QuotaExceededError
from onebox.jobs import state
from onebox.security.principal import Principal
from onebox.security.quotas import (
    Limits,
    LimitsCache,
    QuotaGate,
    check_job_slots,
    tokens_from_usage,
)
from onebox.services.context import App
from onebox.store.tables import ApiKey, Job, Project, User, new_id


def who(key: str | None = "key_a", project_id: str = "prj_1") -> Principal:
    return Principal("u1", "ann", project_id, "proj", "developer", key_id=key)


def admit_n(gate: QuotaGate, n: int, p: Principal, kl: Limits | None, pl: Limits | None, now: float) -> int:
    ok = 0
    for _ in range(n):
        try:
            gate.admit(p, kl, pl, now=now)
            ok += 1
        except QuotaExceededError:
            pass
    return ok


def test_key_rpm_burst_then_exact_retry_after() -> None:
    gate = QuotaGate()
    p = who()
    assert admit_n(gate, 10, p, Limits(rpm=6), None, now=100.0) == 6
    with pytest.raises(QuotaExceededError) as ei:
        gate.admit(p, Limits(rpm=6), None, now=100.0)
    err = ei.value
    assert err.details["quota"] == "key.rpm" and err.details["limit"] == 6
    assert err.details["retry_after"] == pytest.approx(10.0)  # one request every 60/6 s
    assert "API key key_a" in err.message and "requests per minute (limit 6)" in err.message
    # 4 s later it is still 6 s off; the retry_after follows the clock, it is not a constant
    with pytest.raises(QuotaExceededError) as ei:
        gate.admit(p, Limits(rpm=6), None, now=104.0)
    assert ei.value.details["retry_after"] == pytest.approx(6.0)
    # the window slides: after exactly retry_after one more is allowed, then none
    gate.admit(p, Limits(rpm=6), None, now=110.0)
    with pytest.raises(QuotaExceededError):
        gate.admit(p, Limits(rpm=6), None, now=110.0)
    # a full minute of quiet restores the whole burst
    assert admit_n(gate, 10, p, Limits(rpm=6), None, now=170.0) == 6


def test_steady_rate_at_the_limit_is_never_refused() -> None:
    gate = QuotaGate()
    p = who()
    t = 0.0
    for _ in range(500):
        gate.admit(p, Limits(rpm=120), None, now=t)
        t += 0.5


def test_project_rpm_is_shared_by_its_keys_and_named_in_the_error() -> None:
    gate = QuotaGate()
    project = Limits(rpm=4)
    assert admit_n(gate, 3, who("k1"), None, project, now=0.0) == 3
    gate.admit(who("k2"), None, project, now=0.0)
    with pytest.raises(QuotaExceededError) as ei:
        gate.admit(who("k3"), None, project, now=0.0)
    assert ei.value.details["quota"] == "project.rpm"
    assert "project proj" in ei.value.message
    assert ei.value.details["retry_after"] == pytest.approx(15.0)
    # another project is not affected
    gate.admit(who("k3", project_id="prj_2"), None, project, now=0.0)


def test_refused_request_charges_nothing() -> None:
    gate = QuotaGate()
    p = who()
    # key allows many, project allows 2: the refused third must not consume key quota
    key = Limits(rpm=3)
    assert admit_n(gate, 2, p, key, Limits(rpm=2), now=0.0) == 2
    for _ in range(5):
        with pytest.raises(QuotaExceededError):
            gate.admit(p, key, Limits(rpm=2), now=0.0)
    gate.admit(p, key, None, now=0.0)  # the key still has its third request


def test_tpm_denies_after_the_budget_is_spent_and_recovers() -> None:
    gate = QuotaGate()
    p = who()
    kl = Limits(tpm=600)  # 10 tokens per second
    t = gate.admit(p, kl, None, now=0.0)
    gate.record_tokens(t, 400, now=1.0)
    t = gate.admit(p, kl, None, now=1.0)  # 200 left: admitted (tokens are unknown up front)
    gate.record_tokens(t, 500, now=2.0)  # overshoots to 900 of 600
    with pytest.raises(QuotaExceededError) as ei:
        gate.admit(p, kl, None, now=2.0)
    assert ei.value.details["quota"] == "key.tpm"
    # 900 tokens charged from t=1 at 10/s: debt runs to t=91, under a minute's worth from t=31
    assert ei.value.details["retry_after"] == pytest.approx(29.0)
    gate.admit(p, kl, None, now=2.0 + ei.value.details["retry_after"] + 0.01)


def test_record_tokens_once_per_ticket_and_project_tpm() -> None:
    gate = QuotaGate()
    pl = Limits(tpm=60)
    t = gate.admit(who("k1"), None, pl, now=0.0)
    gate.record_tokens(t, 60, now=0.0)
    gate.record_tokens(t, 60, now=0.0)  # ignored
    with pytest.raises(QuotaExceededError) as ei:
        gate.admit(who("k2"), None, pl, now=0.0)
    assert ei.value.details["quota"] == "project.tpm"
    assert ei.value.details["retry_after"] == pytest.approx(0.001)  # exactly at the limit: next tick
    gate.admit(who("k2"), None, pl, now=1.0)


def test_zero_limit_blocks_and_none_is_unlimited() -> None:
    gate = QuotaGate()
    with pytest.raises(QuotaExceededError) as ei:
        gate.admit(who(), Limits(rpm=0), None, now=0.0)
    assert ei.value.details["retry_after"] == 60.0
    assert admit_n(gate, 1000, who(), Limits(), Limits(), now=0.0) == 1000
    assert len(gate) == 0  # unlimited requests keep no state


def test_retry_after_is_the_largest_of_the_exceeded_quotas() -> None:
    gate = QuotaGate()
    p = who()
    gate.admit(p, Limits(rpm=1), Limits(rpm=2), now=0.0)
    gate.admit(who("other"), None, Limits(rpm=2), now=0.0)
    with pytest.raises(QuotaExceededError) as ei:
        gate.admit(p, Limits(rpm=1), Limits(rpm=2), now=0.0)
    assert ei.value.details["exceeded"] == ["key.rpm", "project.rpm"]
    assert ei.value.details["quota"] == "key.rpm" and ei.value.details["retry_after"] == pytest.approx(60)


def test_error_becomes_429_with_retry_after_in_openai_shape() -> None:
    gate = QuotaGate()
    gate.admit(who(), Limits(rpm=1), None, now=0.0)
    with pytest.raises(QuotaExceededError) as ei:
        gate.admit(who(), Limits(rpm=1), None, now=0.5)
    resp = error_response(ei.value, openai=True)
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "60"  # 59.5 s rounded up
    body = resp.body.decode()
    assert '"type":"rate_limit_error"' in body and '"code":"rate_limit_exceeded"' in body


def test_ratelimit_headers_show_the_tightest_limit() -> None:
    gate = QuotaGate()
    t = gate.admit(who(), Limits(rpm=10, tpm=1000), Limits(rpm=5), now=0.0)
    assert t.headers["x-ratelimit-limit-requests"] == "5"
    assert t.headers["x-ratelimit-remaining-requests"] == "4"
    assert t.headers["x-ratelimit-reset-requests"] == "12s"
    assert t.headers["x-ratelimit-remaining-tokens"] == "1000"


def test_memory_is_bounded_with_many_keys() -> None:
    gate = QuotaGate(max_entries=100)
    for i in range(5000):
        gate.admit(who(f"k{i}", project_id=f"p{i % 7}"), Limits(rpm=10, tpm=100), Limits(rpm=10_000), now=i)
    assert len(gate) <= 100
    # recently used counters survive eviction: the last key is still limited
    p = who("k4999", project_id=f"p{4999 % 7}")
    assert admit_n(gate, 20, p, Limits(rpm=10), None, now=4999) == 9


def test_key_limits_ignored_without_a_key() -> None:
    gate = QuotaGate()
    assert admit_n(gate, 5, who(key=None), Limits(rpm=1), None, now=0.0) == 5


def test_tokens_from_usage() -> None:
    assert tokens_from_usage({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}) == 7
    assert tokens_from_usage({"prompt_tokens": 3, "completion_tokens": 4}) == 7
    assert tokens_from_usage(None, fallback=5) == 5
    assert tokens_from_usage({"total_tokens": "x"}, fallback=2) == 2


def test_usage_reports_the_debt_in_units() -> None:
    gate = QuotaGate()
    for _ in range(3):
        gate.admit(who(), Limits(rpm=6), None, now=0.0)
    assert gate.usage("key", "key_a", Limits(rpm=6), now=0.0) == {"rpm": 3.0}
    assert gate.usage("key", "key_a", Limits(rpm=6), now=20.0) == {"rpm": 1.0}


# -- limits from the store ----------------------------------------------------------------------


def _key(app: App, project_id: str, rpm: int | None, tpm: int | None) -> str:
    with app.db.session() as s:
        user = User(id=new_id("usr"), username=f"u{new_id('x')[-6:]}", password_hash="x")
        s.add(user)
        s.flush()
        key = ApiKey(
            id=new_id("key"), prefix=new_id("")[-12:], secret_hash="0" * 64, user_id=user.id,
            project_id=project_id, rpm_limit=rpm, tpm_limit=tpm,
        )  # fmt: skip
        s.add(key)
        return key.id


def _project_id(app: App) -> str:
    return app.actor().project_id


def test_limits_cache_reads_once_per_ttl(sqlite_app: App) -> None:
    app = sqlite_app
    pid = _project_id(app)
    kid = _key(app, pid, 10, None)
    clock = [0.0]
    cache = LimitsCache(app.db, ttl_s=5, clock=lambda: clock[0])
    p = Principal("u", "u", pid, "default", "developer", key_id=kid)
    assert cache.get(p) == (Limits(10, None), Limits(None, None))
    with app.db.session() as s:
        s.get(ApiKey, kid).rpm_limit = 20  # type: ignore[union-attr]
        s.get(Project, pid).tpm_limit = 1000  # type: ignore[union-attr]
    clock[0] = 4.9
    assert cache.get(p) == (Limits(10, None), Limits(None, None))  # cached
    clock[0] = 5.0
    assert cache.get(p) == (Limits(20, None), Limits(None, 1000))  # re-read after the TTL
    assert cache.key_limits("key_missing") == Limits()
    with app.db.session() as s:
        s.get(ApiKey, kid).rpm_limit = 30  # type: ignore[union-attr]
    cache.invalidate("key", kid)
    assert cache.key_limits(kid).rpm == 30


# -- concurrent jobs ------------------------------------------------------------------------------


def _job(app: App, pid: str, status: str, **kw: object) -> None:
    with app.db.session() as s:
        s.add(Job(id=new_id("job"), project_id=pid, name="j", status=status, type="noop", **kw))


def test_job_slots(sqlite_app: App) -> None:
    app = sqlite_app
    pid = _project_id(app)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    with app.db.session() as s:
        check_job_slots(s, pid, now)  # no limit set
        s.get(Project, pid).max_concurrent_jobs = 2  # type: ignore[union-attr]
    _job(app, pid, state.QUEUED)
    _job(
        app,
        pid,
        state.SUCCEEDED,
        started_at=now - timedelta(seconds=700),
        finished_at=now - timedelta(seconds=400),
    )
    with app.db.session() as s:
        check_job_slots(s, pid, now)  # one of two slots used
    _job(app, pid, state.RUNNING, started_at=now - timedelta(seconds=100))
    with app.db.session() as s, pytest.raises(QuotaExceededError) as ei:
        check_job_slots(s, pid, now)
    err = ei.value
    assert err.details["quota"] == "project.jobs" and err.details["limit"] == 2 and err.details["used"] == 2
    assert err.details["retry_after"] == pytest.approx(200.0)  # mean 300 s, running for 100 s
    assert "limit of concurrent jobs is 2" in err.message
