"""Webhook delivery of alerts: POST JSON to the operator's URLs from a background thread, with
bounded retries and exponential backoff, recording each delivery's state on the alert.

The monitor pass only queues (``submit`` never blocks on the network), so a slow or dead
receiver cannot stall monitoring. URLs come only from the operator's configuration (the rules
file or the ``alert_webhooks`` setting), never from a request, and redirects are not followed.
A delivery is retried on connection errors, timeouts, 408, 429 and 5xx answers; any other 4xx is
final. Deliveries still queued when the process stops stay recorded as ``pending``, and the next
monitor picks them up again (:meth:`Notifier.resume`) while the webhook is still configured.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select

from onebox import __version__
from onebox.monitor import alert_store
from onebox.monitor.rules import Webhook, severity_rank
from onebox.store.db import Database
from onebox.store.tables import Event, utcnow

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
BACKOFF_S = 2.0
BACKOFF_MAX_S = 300.0
TIMEOUT_S = 5.0
RETRY_STATUSES = frozenset({408, 429})
RESUME_WITHIN_S = 86400.0
"""Pending deliveries of alerts younger than this are resumed after a restart."""

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    event_id: str = field(compare=False)
    key: str = field(compare=False)
    hook: Webhook = field(compare=False)
    payload: dict[str, Any] = field(compare=False)
    attempt: int = field(default=0, compare=False)


def payload(alert: dict[str, Any]) -> dict[str, Any]:
    """The JSON body a webhook receives: the alert as the API shows it, minus delivery records."""
    body = {k: v for k, v in alert.items() if k != "deliveries"}
    return {"source": "onebox", "version": __version__, "state": alert.get("state"), "alert": body}


class Notifier:
    """Queues alert notifications and delivers them from one daemon thread."""

    def __init__(
        self,
        db: Database,
        webhooks: tuple[Webhook, ...] | list[Webhook],
        *,
        max_attempts: int = MAX_ATTEMPTS,
        backoff_s: float = BACKOFF_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        timeout_s: float = TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.webhooks = tuple(webhooks)
        self.max_attempts = max(1, max_attempts)
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._queue: list[_Delivery] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._stop = False
        self._busy = 0
        self._thread: threading.Thread | None = None

    def targets(self, alert: dict[str, Any]) -> list[Webhook]:
        """The webhooks that want this alert in its current state."""
        rank = severity_rank(str(alert.get("severity")))
        resolved = alert.get("state") == alert_store.RESOLVED
        wanted = [h for h in self.webhooks if rank >= severity_rank(h.min_severity)]
        return [h for h in wanted if h.send_resolved or not resolved]

    @staticmethod
    def key(alert: dict[str, Any], hook: Webhook, index: int) -> str:
        return f"{alert.get('state')} #{index} {hook.label}"

    def pending_records(self, alert: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Delivery records to store with the alert before it is submitted."""
        return {
            self.key(alert, h, self.webhooks.index(h)): {"status": PENDING, "attempts": 0}
            for h in self.targets(alert)
        }

    def submit(self, alert: dict[str, Any]) -> int:
        """Queue the alert for every webhook that wants it; returns how many. Never blocks."""
        body = payload(alert)
        hooks = self.targets(alert)
        with self._cv:
            for h in hooks:
                key = self.key(alert, h, self.webhooks.index(h))
                item = _Delivery(self.clock(), next(self._seq), alert["id"], key, h, body)
                heapq.heappush(self._queue, item)
            self._cv.notify()
        if hooks:
            self._ensure_thread()
        return len(hooks)

    def resume(self, within_s: float = RESUME_WITHIN_S) -> int:
        """Queue again the deliveries a previous process left pending (same webhook position and
        origin in the configuration); returns how many."""
        if not self.webhooks:
            return 0
        floor = utcnow() - timedelta(seconds=within_s)
        with self.db.session() as s:
            rows = list(
                s.scalars(
                    select(Event).where(Event.kind.like(f"{alert_store.PREFIX}%"), Event.created_at >= floor)
                )
            )
        n = 0
        for ev in rows:
            alert = alert_store.view(ev)
            for key, record in (alert.get("deliveries") or {}).items():
                state, _, rest = key.partition(" #")
                index, _, label = rest.partition(" ")
                if record.get("status") != PENDING or not index.isdigit() or int(index) >= len(self.webhooks):
                    continue
                hook = self.webhooks[int(index)]
                if hook.label != label:
                    continue
                body = payload({**alert, "state": state})
                item = _Delivery(
                    self.clock(), next(self._seq), ev.id, key, hook, body, int(record.get("attempts", 0))
                )
                with self._cv:
                    heapq.heappush(self._queue, item)
                    self._cv.notify()
                n += 1
        if n:
            self._ensure_thread()
        return n

    def _ensure_thread(self) -> None:
        with self._cv:
            if self._thread is None and not self._stop:
                self._thread = threading.Thread(target=self._run, name="onebox-webhooks", daemon=True)
                self._thread.start()

    def idle(self) -> bool:
        """Nothing queued or being sent (for tests and orderly shutdown)."""
        with self._cv:
            return not self._queue and not self._busy

    def close(self, timeout: float = 2.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _next(self) -> _Delivery | None:
        with self._cv:
            while not self._stop:
                if self._queue:
                    wait = self._queue[0].due - self.clock()
                    if wait <= 0:
                        self._busy += 1
                        return heapq.heappop(self._queue)
                    self._cv.wait(min(wait, 1.0))
                else:
                    self._cv.wait(1.0)
            return None

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
            while (item := self._next()) is not None:
                try:
                    self._attempt(client, item)
                except Exception:  # a store hiccup while recording: keep delivering the rest
                    log.exception("webhook delivery bookkeeping failed")
                finally:
                    with self._cv:
                        self._busy -= 1

    def _attempt(self, client: httpx.Client, item: _Delivery) -> None:
        item.attempt += 1
        error: str | None = None
        retry = True
        try:
            resp = client.post(
                item.hook.url, json=item.payload, headers={"user-agent": f"onebox/{__version__}"}
            )
            if resp.is_success:
                retry = False
            else:
                error = f"HTTP {resp.status_code}"
                retry = resp.status_code >= 500 or resp.status_code in RETRY_STATUSES
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        now = time.time()
        record: dict[str, Any] = {"attempts": item.attempt, "last_attempt_at": now, "last_error": error}
        if error is None:
            record["status"] = DELIVERED
            record["delivered_at"] = now
        elif retry and item.attempt < self.max_attempts:
            delay = min(self.backoff_max_s, self.backoff_s * 2 ** (item.attempt - 1))
            record["status"] = PENDING
            record["next_attempt_at"] = now + delay
            item.due = self.clock() + delay
            with self._cv:
                heapq.heappush(self._queue, item)
                self._cv.notify()
        else:
            record["status"] = FAILED
            log.warning("webhook %s gave up on alert %s: %s", item.hook.label, item.event_id, error)
        alert_store.set_deliveries(self.db, item.event_id, {item.key: record})
