"""Alert rules: the shipped file, an operator's file (add, replace, switch off, webhooks), every
problem reported at once naming its field and fix; and the engine's durations and hysteresis on
an injected clock, with alerts as events that fire, stay single, and resolve."""

from __future__ import annotations

from pathlib import Path

import pytest

from onebox.errors import ConfigError
from onebox.monitor.alerts import AlertEngine
from onebox.monitor.rules import load_rules, parse_duration
from onebox.monitor.samples import COMPONENT, NODE, TASK, Sample, Snapshot
from onebox.services import events
from onebox.services.context import App
from tests.monitor.helpers import project_id

T0 = 1_800_000_000.0


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_rules_cover_the_issue() -> None:
    rules = load_rules()
    names = {r.name for r in rules.enabled}
    assert {
        "node_lost", "disk_full", "gpu_hot", "gpu_throttled", "gpu_ecc_errors", "job_stalled",
        "job_heartbeat_lost", "job_loss_nan", "job_loss_diverging", "deployment_error_rate",
        "deployment_ttft_slow", "deployment_tpot_slow", "worker_oom_killed",
    } <= names  # fmt: skip
    disk = rules.get("disk_full")
    assert disk is not None and disk.threshold == 0.9 and disk.for_s == 120 and disk.clear == 0.88
    assert rules.webhooks == ()


def test_an_operator_file_adds_replaces_and_switches_off(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
rules:
  - name: disk_full
    threshold: 0.95
    for: 30s
  - name: gpu_throttled
    enabled: false
  - name: box_swapping
    metric: swap_used_bytes
    op: ">"
    threshold: 1e9
    severity: warning
    message: "{node} swaps {value:.0f} bytes"
webhooks:
  - https://hooks.example.com/a?token=secret
  - url: http://127.0.0.1:9/b
    min_severity: error
    send_resolved: false
""",
    )
    rules = load_rules(path, ["https://ops.example.org/onebox"])
    disk = rules.get("disk_full")
    assert disk is not None and (disk.threshold, disk.for_s, disk.clear) == (0.95, 30, None)
    assert disk.message and disk.level == "component"  # the rest is the shipped rule's
    throttled = rules.get("gpu_throttled")
    assert throttled is not None and not throttled.enabled and throttled not in rules.enabled
    swap = rules.get("box_swapping")
    assert swap is not None and swap.render(value=2e9, node="n1") == "n1 swaps 2000000000 bytes"
    assert [h.label for h in rules.webhooks] == [
        "https://ops.example.org",
        "https://hooks.example.com",  # the token in the query never reaches a delivery record
        "http://127.0.0.1:9",
    ]
    assert rules.webhooks[2].min_severity == "error" and not rules.webhooks[2].send_resolved


def test_every_problem_is_reported_at_once_with_field_and_fix(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
rules:
  - name: Bad Name
    metric: fs_usage_ratio
    threshold: 0.9
  - name: typo_metric
    metric: fs_usage_ration
    threshold: 1
  - name: wrong_level
    metric: fs_usage_ratio
    level: cluster
    threshold: 0.9
  - name: bad_values
    metric: gpu_temperature_celsius
    op: "=>"
    threshold: hot
    for: soon
    severity: urgent
    treshold: 3
  - name: inverted_hysteresis
    metric: gpu_temperature_celsius
    threshold: 85
    clear: 90
  - name: bad_template
    metric: node_up
    op: "<"
    threshold: 1
    message: "{host} is gone"
  - name: twice
    metric: node_up
    threshold: 1
  - name: twice
    metric: node_up
    threshold: 1
webhooks:
  - ftp://files.example.com/x
  - url: https://ok.example.com
    min_severity: loud
alarms: []
""",
    )
    with pytest.raises(ConfigError) as info:
        load_rules(path, ["not a url"])
    problems = {p.field: p for p in info.value.problems}
    src = str(path)
    expected = {
        f"{src}: rules[0].name",
        f"{src}: rules[1].metric",
        f"{src}: rules[2].level",
        f"{src}: rules[3].op",
        f"{src}: rules[3].threshold",
        f"{src}: rules[3].for",
        f"{src}: rules[3].severity",
        f"{src}: rules[3].treshold",
        f"{src}: rules[4].clear",
        f"{src}: rules[5].message",
        f"{src}: rules[7].name",
        f"{src}: webhooks[0].url",
        f"{src}: webhooks[1].min_severity",
        f"{src}: alarms",
        "ONEBOX_ALERT_WEBHOOKS[0].url",
    }
    assert expected <= set(problems), sorted(set(problems))
    assert "fs_usage_ratio" in (problems[f"{src}: rules[1].metric"].fix or "")  # did you mean
    assert "'threshold'" in (problems[f"{src}: rules[3].treshold"].fix or "")
    assert "component" in (problems[f"{src}: rules[2].level"].fix or "")
    assert "{resource}" in (problems[f"{src}: rules[5].message"].fix or "")
    assert all(p.reason for p in info.value.problems)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_rules(tmp_path / "missing.yaml")
    assert info.value.problems[0].field == "ONEBOX_ALERT_RULES_FILE"
    path = _write(tmp_path, "rules:\n  - name: x\n    metric: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_rules(path)
    assert info.value.problems[0].line is not None and "YAML" in info.value.problems[0].reason


def test_durations() -> None:
    assert [parse_duration(v) for v in ("90", "90s", "2m", "1.5h", "1d", 30, "250ms")] == [
        90, 90, 120, 5400, 86400, 30, 0.25,
    ]  # fmt: skip
    assert [parse_duration(v) for v in ("soon", "-1m", True, None, float("nan"))] == [None] * 5


def _engine(app: App, tmp_path: Path, text: str) -> AlertEngine:
    return AlertEngine(app.db, "box", load_rules(_write(tmp_path, text)))


def _alerts(app: App, state: str = "all") -> list[dict]:
    return events.list_events(app, state=state, alerts_only=True)


def test_for_and_hysteresis_on_an_injected_clock(sqlite_app: App, tmp_path: Path) -> None:
    engine = _engine(
        sqlite_app,
        tmp_path,
        """
rules:
  - name: disk_full
    for: 2m
    clear: 0.85
    clear_for: 30s
""",
    )

    def fs(t: float, ratio: float) -> list[dict]:
        snap = Snapshot("box", T0 + t, [Sample(COMPONENT, "fs:/data", "fs_usage_ratio", ratio)])
        return engine.evaluate(snap)

    assert fs(0, 0.95) == [] and fs(60, 0.97) == []  # pending, not yet two minutes
    assert fs(90, 0.50) == []  # dipped: the wait starts again
    assert fs(100, 0.95) == [] and fs(200, 0.95) == []
    [fired] = fs(220, 0.96)
    assert fired["state"] == "firing" and fired["kind"] == "alert.firing.disk_full"
    assert fired["severity"] == "error" and fired["resource_type"] == "node" and fired["resource_id"] == "box"
    assert fired["resource"] == "fs:/data" and fired["node"] == "box" and fired["value"] == 0.96
    assert fired["message"] == "file system fs:/data on box is 96% full (over 90% for 2m)"
    assert fired["time"].startswith("2027-01-15")  # the monitor's clock, not the wall clock
    # in the hysteresis band (0.85-0.90) it stays firing, and it never fires twice
    assert fs(230, 0.88) == [] and fs(400, 0.99) == []
    assert fs(410, 0.80) == []  # clear, but not for 30 s yet
    assert fs(420, 0.87) == []  # back in the band: the clear wait resets
    assert fs(430, 0.80) == [] and fs(450, 0.80) == []
    [resolved] = fs(460, 0.80)
    assert resolved["id"] == fired["id"] and resolved["state"] == "resolved"
    assert resolved["resolution"] == "fs_usage_ratio is back to 0.8"
    [row] = _alerts(sqlite_app)
    assert row["kind"] == "alert.resolved.disk_full" and row["resolved_at"] and row["fired_at"]
    [again] = [*fs(500, 0.95), *fs(620, 0.95)]  # a new alert, a new event
    assert again["id"] != fired["id"]
    assert [a["state"] for a in _alerts(sqlite_app)] == ["firing", "resolved"]


def test_alerts_survive_a_restart_and_gone_resources_resolve(sqlite_app: App, tmp_path: Path) -> None:
    text = "rules:\n  - name: job_loss_diverging\n    for: 0\n"
    pid = project_id(sqlite_app, "default")

    def job(loss: float) -> Sample:
        return Sample(
            TASK, "job:job_1", "job_loss_ratio_to_min", loss, name="train", project_id=pid, project="default"
        )

    first = _engine(sqlite_app, tmp_path, text)
    [fired] = first.evaluate(Snapshot("box", T0, [job(3.0)]))
    assert (
        fired["project"] == "default" and fired["resource_type"] == "job" and fired["resource_id"] == "job_1"
    )
    # a new monitor (gateway restart) adopts the open alert instead of firing it again
    second = _engine(sqlite_app, tmp_path, text)
    assert second.evaluate(Snapshot("box", T0 + 10, [job(3.5)])) == []
    [resolved] = second.evaluate(Snapshot("box", T0 + 20, []))  # the job ended
    assert resolved["id"] == fired["id"] and "no longer reports" in resolved["resolution"]
    # the job's own event list shows it with the job's other events
    assert [e["kind"] for e in events.list_events(sqlite_app, resource="job:job_1")] == [
        "alert.resolved.job_loss_diverging"
    ]


def test_another_nodes_alert_is_left_to_it_unless_it_is_lost(sqlite_app: App, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from onebox.store.tables import Node

    text = "rules:\n  - name: gpu_hot\n    for: 0\n"
    other = AlertEngine(sqlite_app.db, "box-b", load_rules(_write(tmp_path, text)))
    [fired] = other.evaluate(
        Snapshot("box-b", T0, [Sample(COMPONENT, "gpu0", "gpu_temperature_celsius", 95)])
    )
    assert fired["node"] == "box-b"
    mine = AlertEngine(sqlite_app.db, "box-a", load_rules(_write(tmp_path, text)))
    assert mine.evaluate(Snapshot("box-a", T0 + 10, [])) == []  # box-b's gpu0 is not box-a's to judge
    with sqlite_app.db.session() as s:  # box-b stops beating
        s.add(Node(id="box-b", hostname="b", heartbeat_at=datetime.fromtimestamp(T0, UTC), interval_s=10))
    changes = mine.evaluate(Snapshot("box-a", T0 + 100, []))
    resolved = next(c for c in changes if c["id"] == fired["id"])
    assert resolved["state"] == "resolved"
    lost = next(c for c in changes if c["rule"] == "node_lost")  # and the shipped rule saw it lost
    assert lost["state"] == "firing" and lost["resource_id"] == "box-b" and lost["severity"] == "critical"
    assert "no heartbeat" in lost["message"]


def test_node_level_samples_and_levels_filter(sqlite_app: App, tmp_path: Path) -> None:
    engine = _engine(sqlite_app, tmp_path, "rules:\n  - name: gpu_ecc_errors\n    level: node\n")
    snap = Snapshot(
        "box",
        T0,
        [
            Sample(COMPONENT, "gpu0", "gpu_ecc_uncorrected_errors", 2),
            Sample(NODE, "box", "gpu_ecc_uncorrected_errors", 2),
        ],
    )
    [fired] = engine.evaluate(snap)
    assert fired["level"] == "node" and fired["resource"] == "box"


def test_lifecycle_and_acknowledgement_on_both_backends(app: App, tmp_path: Path) -> None:
    engine = _engine(app, tmp_path, "rules:\n  - name: gpu_hot\n    for: 0\n")
    long_node = "a-node-with-a-name-longer-than-32-characters"
    engine.node = long_node
    [fired] = engine.evaluate(
        Snapshot(long_node, T0, [Sample(COMPONENT, "gpu0", "gpu_temperature_celsius", 95)])
    )
    assert fired["resource_id"] == long_node[:32] and fired["node"] == long_node
    acked = events.acknowledge(app, fired["id"], "cooling fixed", now=T0 + 5)
    assert acked["acknowledged"]["note"] == "cooling fixed" and acked["acknowledged"]["by"].startswith(
        "local:"
    )
    [resolved] = engine.evaluate(
        Snapshot(long_node, T0 + 10, [Sample(COMPONENT, "gpu0", "gpu_temperature_celsius", 70)])
    )
    [row] = events.list_events(app, state="resolved", severity="warning", since=T0 - 1)
    assert row["id"] == resolved["id"] == fired["id"] and row["acknowledged"]["note"] == "cooling fixed"
    assert events.list_events(app, state="firing") == []
