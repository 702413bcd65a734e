"""Quotas: requests and tokens per minute on ``/v1`` (per key and per project), and job slots.

The rate limits are enforced in the gateway's process by :class:`QuotaGate` with GCRA (the
generic cell rate algorithm, i.e. a token bucket stored as one timestamp). Why GCRA rather than a
sliding window:

- it keeps one float per counter (the "theoretical arrival time"), so state is O(1) per key and
  an update is O(1), with no per-request log;
- the ``Retry-After`` it gives is exact: the moment the bucket holds enough again, not the end
  of a fixed window;
- capacity replenishes continuously (as OpenAI documents its own limits), so there is no burst of
  twice the limit across a window boundary, which fixed and two-bucket windows allow;
- tokens are only known after the answer, and a debt recorded late is just a later timestamp.

A limit of ``L`` per minute allows a burst of ``L`` and then one unit every ``60/L`` seconds.
Tokens are charged after the response (:meth:`QuotaGate.record_tokens`); admission is refused
while the tokens already charged exceed one minute's budget. Limits come in as plain values
(:class:`Limits`) so a request costs no database read; :class:`LimitsCache` loads them with a
short TTL, so a changed quota takes effect within seconds.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from onebox.errors import QuotaExceededError
from onebox.jobs import state
from onebox.security.principal import Principal
from onebox.store.db import Database
from onebox.store.tables import ApiKey, Job, Project

WINDOW_S = 60.0
"""The rate-limit period: limits are per minute."""

Clock = Callable[[], float]


@dataclass(frozen=True)
class Limits:
    """Per-minute limits of one key or project; None is unlimited, 0 blocks."""

    rpm: int | None = None
    tpm: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None


UNLIMITED = Limits()


@dataclass
class Ticket:
    """What :meth:`QuotaGate.admit` let through; hand it back to :meth:`QuotaGate.record_tokens`."""

    key_id: str | None
    project_id: str
    key_tpm: int | None
    project_tpm: int | None
    headers: dict[str, str] = field(default_factory=dict)
    """OpenAI-style ``x-ratelimit-*`` headers for the tightest limits (empty when unlimited)."""
    recorded: bool = False


@dataclass(frozen=True)
class _Check:
    scope: str  # key | project
    ident: str
    metric: str  # rpm | tpm
    limit: int


def _describe(c: _Check) -> str:
    what = "requests per minute" if c.metric == "rpm" else "tokens per minute"
    who = f"API key {c.ident}" if c.scope == "key" else f"project {c.ident}"
    return f"{who}: {what} (limit {c.limit})"


def _fmt_reset(seconds: float) -> str:
    return f"{max(0.0, seconds):.3f}".rstrip("0").rstrip(".") + "s"


class QuotaGate:
    """In-process rate limiter for the gateway; thread- and asyncio-safe (one short lock, no
    awaits inside), memory bounded by ``max_entries`` counters (least recently used dropped)."""

    def __init__(
        self, *, window_s: float = WINDOW_S, max_entries: int = 100_000, clock: Clock = time.monotonic
    ) -> None:
        if window_s <= 0 or max_entries < 4:
            raise ValueError("window_s must be > 0 and max_entries >= 4")
        self.window_s = window_s
        self.max_entries = max_entries
        self._clock = clock
        self._tat: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted_active = 0
        """Counters dropped while they still held debt (raise ``max_entries`` if this grows)."""

    def __len__(self) -> int:
        return len(self._tat)

    # -- the two calls the gateway makes ------------------------------------------------------

    def admit(
        self,
        principal: Principal,
        key_limits: Limits | None,
        project_limits: Limits | None,
        now: float | None = None,
    ) -> Ticket:
        """Let one ``/v1`` request through or raise :class:`QuotaExceededError`.

        All four counters (key/project x rpm/tpm) are checked before any is charged, so a refused
        request costs nothing. The error names the binding quota and carries ``retry_after``:
        the seconds until every exhausted quota has room again."""
        now = self._clock() if now is None else now
        key_limits = key_limits if principal.key_id else None
        checks: list[_Check] = []
        for scope, ident, lim in (
            ("key", principal.key_id, key_limits),
            ("project", principal.project_id, project_limits),
        ):
            if lim is None or ident is None:
                continue
            if lim.rpm is not None:
                checks.append(_Check(scope, ident, "rpm", lim.rpm))
            if lim.tpm is not None:
                checks.append(_Check(scope, ident, "tpm", lim.tpm))
        ticket = Ticket(
            key_id=principal.key_id,
            project_id=principal.project_id,
            key_tpm=key_limits.tpm if key_limits else None,
            project_tpm=project_limits.tpm if project_limits else None,
        )
        if not checks:
            return ticket
        names = {c: principal.project if c.scope == "project" else c.ident for c in checks}
        with self._lock:
            denied: list[tuple[float, _Check]] = []
            charged: list[tuple[_Check, float]] = []
            for c in checks:
                tat = max(self._get(c), now)
                if c.limit <= 0:
                    denied.append((self.window_s, c))
                elif c.metric == "rpm":
                    new_tat = tat + self.window_s / c.limit
                    if new_tat - now > self.window_s + 1e-9:
                        denied.append((new_tat - now - self.window_s, c))
                    else:
                        charged.append((c, new_tat))
                elif tat - now >= self.window_s - 1e-9:  # tokens: the last minute's budget is spent
                    denied.append((tat - now - self.window_s, c))
                else:
                    charged.append((c, tat))
            if denied:
                wait, worst = max(denied, key=lambda d: d[0])
                wait = max(math.ceil(wait * 1000) / 1000, 0.001)
                label = _describe(_Check(worst.scope, names[worst], worst.metric, worst.limit))
                raise QuotaExceededError(
                    f"rate limit reached for {label}; retry in {wait:.3f} s",
                    retry_after=wait,
                    quota=f"{worst.scope}.{worst.metric}",
                    limit=worst.limit,
                    exceeded=sorted({f"{c.scope}.{c.metric}" for _, c in denied}),
                    openai_code="rate_limit_exceeded",
                )
            for c, new_tat in charged:
                if c.metric == "rpm":
                    self._set(c, new_tat, now)
            ticket.headers = self._headers(charged, now)
        return ticket

    def record_tokens(self, ticket: Ticket, tokens: int, now: float | None = None) -> None:
        """Charge a finished request's tokens (prompt + completion) to its key and project.
        Charging twice for one ticket is ignored."""
        if ticket.recorded or tokens <= 0:
            ticket.recorded = True
            return
        ticket.recorded = True
        now = self._clock() if now is None else now
        with self._lock:
            for scope, ident, limit in (
                ("key", ticket.key_id, ticket.key_tpm),
                ("project", ticket.project_id, ticket.project_tpm),
            ):
                if ident is None or not limit or limit <= 0:
                    continue
                c = _Check(scope, ident, "tpm", limit)
                self._set(c, max(self._get(c), now) + tokens * self.window_s / limit, now)

    def usage(self, scope: str, ident: str, limits: Limits, now: float | None = None) -> dict[str, float]:
        """How much of each limit the last minute used (GCRA's debt expressed in units)."""
        now = self._clock() if now is None else now
        out: dict[str, float] = {}
        with self._lock:
            for metric, limit in (("rpm", limits.rpm), ("tpm", limits.tpm)):
                if limit:
                    debt = max(0.0, self._tat.get((scope, ident, metric), now) - now)
                    out[metric] = round(debt * limit / self.window_s, 3)
        return out

    def reset(self) -> None:
        with self._lock:
            self._tat.clear()

    # -- internals ----------------------------------------------------------------------------

    def _get(self, c: _Check) -> float:
        key = (c.scope, c.ident, c.metric)
        tat = self._tat.get(key)
        if tat is None:
            return -math.inf
        self._tat.move_to_end(key)
        return tat

    def _set(self, c: _Check, tat: float, now: float) -> None:
        key = (c.scope, c.ident, c.metric)
        self._tat[key] = tat
        self._tat.move_to_end(key)
        while len(self._tat) > self.max_entries:
            _, old = self._tat.popitem(last=False)
            if old > now:
                self.evicted_active += 1

    def _headers(self, charged: list[tuple[_Check, float]], now: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        for metric, unit in (("rpm", "requests"), ("tpm", "tokens")):
            best: tuple[int, int, float] | None = None  # remaining, limit, reset
            for c, tat in charged:
                if c.metric != metric:
                    continue
                debt = max(0.0, tat - now)
                remaining = max(0, math.floor(c.limit - debt * c.limit / self.window_s + 1e-9))
                if best is None or remaining < best[0]:
                    best = (remaining, c.limit, debt)
            if best is not None:
                headers[f"x-ratelimit-limit-{unit}"] = str(best[1])
                headers[f"x-ratelimit-remaining-{unit}"] = str(best[0])
                headers[f"x-ratelimit-reset-{unit}"] = _fmt_reset(best[2])
        return headers


def tokens_from_usage(usage: Any, fallback: int = 0) -> int:
    """Tokens to charge for an OpenAI ``usage`` object: ``total_tokens``, else prompt +
    completion, else ``fallback`` (e.g. the number of streamed content chunks)."""
    if not isinstance(usage, dict):
        return max(0, int(fallback))
    try:
        if usage.get("total_tokens") is not None:
            return max(0, int(usage["total_tokens"]))
        return max(0, int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0))
    except (TypeError, ValueError):
        return max(0, int(fallback))


class LimitsCache:
    """Key and project limits read from the store at most once per ``ttl_s`` each, so the gate
    does no database read per request yet a changed quota applies within seconds."""

    def __init__(
        self, db: Database, *, ttl_s: float = 5.0, max_entries: int = 10_000, clock: Clock = time.monotonic
    ) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, Limits]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, principal: Principal) -> tuple[Limits | None, Limits]:
        """(key limits or None without a key, project limits) for ``principal``."""
        key = self.key_limits(principal.key_id) if principal.key_id else None
        return key, self.project_limits(principal.project_id)

    def key_limits(self, key_id: str) -> Limits:
        return self._cached("key", key_id)

    def project_limits(self, project_id: str) -> Limits:
        return self._cached("project", project_id)

    def invalidate(self, scope: str | None = None, ident: str | None = None) -> None:
        """Forget cached limits (all, or one key/project) so the next request reads them anew."""
        with self._lock:
            if scope is None:
                self._entries.clear()
            else:
                self._entries.pop((scope, ident or ""), None)

    def _cached(self, scope: str, ident: str) -> Limits:
        now = self._clock()
        with self._lock:
            hit = self._entries.get((scope, ident))
            if hit is not None and now - hit[0] < self.ttl_s:
                return hit[1]
        limits = self._load(scope, ident)  # outside the lock: a slow read must not stall others
        with self._lock:
            self._entries[(scope, ident)] = (now, limits)
            self._entries.move_to_end((scope, ident))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return limits

    def _load(self, scope: str, ident: str) -> Limits:
        with self.db.session() as s:
            if scope == "key":
                k = s.get(ApiKey, ident)
                return Limits(k.rpm_limit, k.tpm_limit) if k is not None else UNLIMITED
            p = s.get(Project, ident)
            return Limits(p.rpm_limit, p.tpm_limit) if p is not None else UNLIMITED


# -- concurrent jobs ------------------------------------------------------------------------------

PENDING = (state.QUEUED, *state.ACTIVE)
"""Statuses that hold one of the project's job slots."""
JOB_RETRY_DEFAULT_S = 60.0
JOB_RETRY_MIN_S, JOB_RETRY_MAX_S = 10.0, 3600.0


def active_jobs(session: Session, project_id: str) -> int:
    """Jobs of the project that are queued or running."""
    q = select(func.count()).select_from(Job).where(Job.project_id == project_id, Job.status.in_(PENDING))
    return int(session.scalar(q) or 0)


def check_job_slots(session: Session, project_id: str, now: datetime | None = None) -> None:
    """Refuse one more job when the project's queued + running jobs fill ``max_concurrent_jobs``.

    ``retry_after`` estimates when the first running job should finish: the mean duration of the
    project's recent jobs less the elapsed time of its longest-running one (60 s without history)."""
    project = session.get(Project, project_id)
    limit = project.max_concurrent_jobs if project is not None else None
    if limit is None:
        return
    used = active_jobs(session, project_id)
    if used < limit:
        return
    now = now or datetime.now(UTC)
    recent = session.execute(
        select(Job.started_at, Job.finished_at)
        .where(
            Job.project_id == project_id,
            Job.status == state.SUCCEEDED,
            Job.started_at.is_not(None),
            Job.finished_at.is_not(None),
        )
        .order_by(Job.finished_at.desc())
        .limit(20)
    ).all()
    wait = JOB_RETRY_DEFAULT_S
    if recent:
        mean = sum((f - s).total_seconds() for s, f in recent) / len(recent)
        oldest = session.scalar(
            select(func.min(Job.started_at)).where(
                Job.project_id == project_id, Job.status.in_(state.ACTIVE), Job.started_at.is_not(None)
            )
        )
        elapsed = (now - oldest).total_seconds() if oldest is not None else 0.0
        wait = mean - elapsed
    wait = float(min(JOB_RETRY_MAX_S, max(JOB_RETRY_MIN_S, wait)))
    name = project.name if project is not None else project_id
    raise QuotaExceededError(
        f"project {name!r} already has {used} queued or running job(s), its limit of concurrent jobs "
        f"is {limit}; wait for one to finish (about {wait:.0f} s) or cancel one",
        retry_after=wait,
        quota="project.jobs",
        limit=limit,
        used=used,
    )
