"""Webhook delivery against a real local HTTP server: retried with backoff until it answers,
given up after the bounded attempts, delivery state recorded on the alert, and never in the way
of the monitoring pass (a receiver that hangs does not slow evaluation down)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from onebox.monitor.alerts import AlertEngine
from onebox.monitor.rules import load_rules
from onebox.monitor.samples import COMPONENT, Sample, Snapshot
from onebox.monitor.webhooks import Notifier
from onebox.services import events
from onebox.services.context import App

T0 = 1_800_000_000.0


class Receiver:
    """An HTTP server in a thread answering 503 to the first ``fail`` POSTs, then 200 (or
    ``status`` for ever), optionally after ``delay`` seconds."""

    def __init__(self, fail: int = 0, status: int = 200, delay: float = 0.0) -> None:
        self.fail, self.status, self.delay = fail, status, delay
        self.bodies: list[dict[str, Any]] = []
        self.times: list[float] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                receiver.bodies.append(body)
                receiver.times.append(time.monotonic())
                time.sleep(receiver.delay)
                code = 503 if len(receiver.bodies) <= receiver.fail else receiver.status
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=s3cret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(**kw: Any) -> Receiver:
        made.append(Receiver(**kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


def until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def _engine(app: App, tmp_path: Path, urls: list[str], **notifier: Any) -> AlertEngine:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: gpu_hot\n    for: 0\n", encoding="utf-8")
    rules = load_rules(path, urls)
    return AlertEngine(app.db, "box", rules, notifier=Notifier(app.db, rules.webhooks, **notifier))


def _hot(engine: AlertEngine, t: float, celsius: float) -> list[dict]:
    return engine.evaluate(
        Snapshot("box", T0 + t, [Sample(COMPONENT, "gpu0", "gpu_temperature_celsius", celsius)])
    )


def _deliveries(app: App) -> dict[str, dict[str, Any]]:
    [alert] = events.list_events(app, alerts_only=True)
    return alert["deliveries"]


def test_retries_with_backoff_until_delivered_then_resolved_too(
    sqlite_app: App, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    flaky = receivers(fail=2)
    engine = _engine(sqlite_app, tmp_path, [flaky.url], backoff_s=0.1, max_attempts=5)
    try:
        [fired] = _hot(engine, 0, 95)
        key = f"firing #0 {flaky.url.split('/hook')[0]}"
        assert fired["deliveries"] == {key: {"status": "pending", "attempts": 0}}
        until(lambda: _deliveries(sqlite_app)[key]["status"] == "delivered")
        record = _deliveries(sqlite_app)[key]
        assert record["attempts"] == 3 and record["last_error"] is None and record["delivered_at"]
        assert len(flaky.bodies) == 3
        gaps = [b - a for a, b in zip(flaky.times, flaky.times[1:], strict=False)]
        assert gaps[0] >= 0.09 and gaps[1] >= 0.19  # 0.1 s, then 0.2 s
        body = flaky.bodies[-1]
        assert body["source"] == "onebox" and body["state"] == "firing"
        assert body["alert"]["id"] == fired["id"] and body["alert"]["rule"] == "gpu_hot"
        assert body["alert"]["resource"] == "gpu0" and body["alert"]["value"] == 95
        # the token in the URL is not written anywhere the API shows
        assert "s3cret" not in json.dumps(events.list_events(sqlite_app, alerts_only=True))
        [resolved] = _hot(engine, 10, 60)
        until(
            lambda: (
                _deliveries(sqlite_app).get(key.replace("firing", "resolved"), {}).get("status")
                == "delivered"
            )
        )
        assert flaky.bodies[-1]["state"] == "resolved" and flaky.bodies[-1]["alert"]["id"] == resolved["id"]
    finally:
        engine.close()


def test_bounded_attempts_and_final_client_errors(
    sqlite_app: App, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    down = receivers(fail=1000)
    refused = receivers(status=404)
    engine = _engine(sqlite_app, tmp_path, [down.url, refused.url], backoff_s=0.05, max_attempts=3)
    try:
        _hot(engine, 0, 95)
        until(lambda: all(d["status"] == "failed" for d in _deliveries(sqlite_app).values()))
        records = sorted(_deliveries(sqlite_app).values(), key=lambda d: d["attempts"])
        assert [(d["attempts"], d["last_error"]) for d in records] == [(1, "HTTP 404"), (3, "HTTP 503")]
        assert len(down.bodies) == 3 and len(refused.bodies) == 1
    finally:
        engine.close()


def test_a_hanging_receiver_never_blocks_the_pass(
    sqlite_app: App, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    slow = receivers(delay=3.0)
    engine = _engine(sqlite_app, tmp_path, [slow.url], timeout_s=0.5, backoff_s=0.05, max_attempts=2)
    try:
        started = time.monotonic()
        [_fired] = _hot(engine, 0, 95)
        _hot(engine, 10, 96)
        assert time.monotonic() - started < 1.0  # two passes, each only queued the delivery
        until(lambda: next(iter(_deliveries(sqlite_app).values()))["status"] == "failed", timeout=20)
        record = next(iter(_deliveries(sqlite_app).values()))
        assert record["attempts"] == 2 and "Timeout" in record["last_error"]
    finally:
        engine.close()


def test_unreachable_receiver_and_severity_filter(sqlite_app: App, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n  - name: gpu_hot\n    for: 0\nwebhooks:\n  - url: http://127.0.0.1:9/x\n"
        "  - url: http://127.0.0.1:9/y\n    min_severity: critical\n",
        encoding="utf-8",
    )
    rules = load_rules(path)
    notifier = Notifier(sqlite_app.db, rules.webhooks, backoff_s=0.05, max_attempts=2)
    engine = AlertEngine(sqlite_app.db, "box", rules, notifier=notifier)
    try:
        _hot(engine, 0, 95)  # gpu_hot is a warning: only the first webhook wants it
        until(notifier.idle)
        [(key, record)] = _deliveries(sqlite_app).items()
        assert key == "firing #0 http://127.0.0.1:9" and record["status"] == "failed"
        assert "ConnectError" in record["last_error"]
    finally:
        engine.close()


def test_pending_deliveries_resume_after_a_restart(
    sqlite_app: App, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(fail=1)
    first = _engine(sqlite_app, tmp_path, [receiver.url], backoff_s=3600, max_attempts=5)
    _hot(first, 0, 95)
    until(lambda: next(iter(_deliveries(sqlite_app).values()))["attempts"] == 1)
    first.close()  # the gateway stops with the retry an hour away
    [record] = _deliveries(sqlite_app).values()
    assert record["status"] == "pending" and record["last_error"] == "HTTP 503"
    second = AlertEngine.build(sqlite_app.db, "box", load_rules(tmp_path / "rules.yaml", [receiver.url]))
    try:
        assert second.notifier is not None
        until(lambda: next(iter(_deliveries(sqlite_app).values()))["status"] == "delivered")
        assert next(iter(_deliveries(sqlite_app).values()))["attempts"] == 2
        assert receiver.bodies[-1]["state"] == "firing" and len(receiver.bodies) == 2
    finally:
        second.close()
