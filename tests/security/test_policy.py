"""Use-policy evaluation with an injected clock and machine fingerprint: every condition, windows
across midnight and in other time zones, and validation that reports every problem at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from onebox.errors import InvalidInputError
from onebox.security import fingerprint
from onebox.security.policy import PolicyRules, evaluate, in_window, parse_window, validate_rules
from onebox.security.principal import Principal

HOST_A = "a" * 32
HOST_B = "b" * 32
NOW = datetime(2025, 6, 4, 10, 0, tzinfo=UTC)  # a Wednesday


def alice(role: str = "developer", project: str = "research") -> Principal:
    return Principal("usr_alice", "alice", f"prj_{project}", project, role)


def rules(**kw: object) -> PolicyRules:
    return validate_rules(kw)


def test_empty_rules_allow_everything() -> None:
    d = evaluate(rules(), alice(), "model.deploy", NOW, None)
    assert d.allowed and d.condition is None


@pytest.mark.parametrize(
    "kw, condition",
    [
        ({"allowed_projects": ["prod"]}, "project"),
        ({"allowed_users": ["bob"]}, "user"),
        ({"allowed_roles": ["operator", "admin"]}, "role"),
        ({"valid_from": "2025-06-05"}, "valid_from"),
        ({"valid_until": "2025-06-03"}, "valid_until"),
        ({"windows": ["mon-fri 12:00-13:00 UTC"]}, "window"),
        ({"hosts": [HOST_B]}, "host"),
    ],
)
def test_each_condition_denies_and_names_itself(kw: dict[str, object], condition: str) -> None:
    d = evaluate(rules(**kw), alice(), "model.deploy", NOW, HOST_A)
    assert not d.allowed and d.condition == condition
    assert d.reason and d.fix


@pytest.mark.parametrize(
    "kw",
    [
        {"allowed_projects": ["research"]},
        {"allowed_projects": ["prj_research"]},
        {"allowed_users": ["alice"]},
        {"allowed_users": ["usr_alice"]},
        {"allowed_roles": ["developer"]},
        {"valid_from": "2025-06-04", "valid_until": "2025-06-04"},  # the whole UTC day
        {"windows": ["wed 09:00-11:00 UTC"]},
        {"hosts": [HOST_B, HOST_A]},
    ],
)
def test_each_condition_allows_when_met(kw: dict[str, object]) -> None:
    assert evaluate(rules(**kw), alice(), "model.deploy", NOW, HOST_A).allowed


def test_first_failing_condition_is_named() -> None:
    r = rules(allowed_users=["bob"], valid_until="2020-01-01", hosts=[HOST_B])
    assert evaluate(r, alice(), "model.load", NOW, HOST_A).condition == "user"
    # a system continuation (no principal) skips who, still checks when and where
    assert evaluate(r, None, "model.load", NOW, HOST_A).condition == "valid_until"
    r2 = rules(allowed_users=["bob"], hosts=[HOST_B])
    assert evaluate(r2, None, "model.load", NOW, HOST_A).condition == "host"
    assert evaluate(r2, None, "model.load", NOW, HOST_B).allowed


def test_site_admin_counts_as_admin_role() -> None:
    admin = Principal("usr_root", "root", "prj_x", "x", "viewer", is_admin=True)
    assert evaluate(rules(allowed_roles=["admin"]), admin, "model.deploy", NOW, None).allowed


def test_validity_bounds_inclusive_exclusive() -> None:
    r = rules(valid_from="2025-06-04T10:00:00+00:00", valid_until="2025-06-04T11:00:00Z")
    assert evaluate(r, alice(), "a", NOW, None).allowed
    assert evaluate(r, alice(), "a", NOW - timedelta(seconds=1), None).condition == "valid_from"
    assert evaluate(r, alice(), "a", NOW + timedelta(hours=1), None).condition == "valid_until"
    # naive date-times are UTC
    assert rules(valid_until="2025-06-04T11:00:00").valid_until == datetime(2025, 6, 4, 11, tzinfo=UTC)


def test_window_across_midnight_belongs_to_its_opening_day() -> None:
    w = rules(windows=["fri 22:00-02:00 UTC"]).windows[0]
    fri = datetime(2025, 6, 6, tzinfo=UTC)
    assert in_window(w, fri.replace(hour=23))
    assert in_window(w, fri + timedelta(days=1, hours=1, minutes=59))  # Saturday 01:59
    assert not in_window(w, fri + timedelta(days=1, hours=2))  # Saturday 02:00
    assert not in_window(w, fri.replace(hour=1))  # Friday 01:00 belongs to Thursday's night
    assert not in_window(w, fri.replace(hour=21, minute=59))
    every_night = rules(windows=["22:00-06:00"]).windows[0]
    assert every_night.days == [] and in_window(every_night, fri.replace(hour=3))


def test_window_in_another_time_zone() -> None:
    r = rules(windows=["mon-fri 09:00-18:00 Asia/Shanghai"])
    # 01:30 UTC Wednesday is 09:30 in Shanghai
    assert evaluate(r, alice(), "a", datetime(2025, 6, 4, 1, 30, tzinfo=UTC), None).allowed
    # 10:30 UTC is 18:30 in Shanghai: closed
    d = evaluate(r, alice(), "a", datetime(2025, 6, 4, 10, 30, tzinfo=UTC), None)
    assert d.condition == "window" and "Asia/Shanghai" in d.reason
    # Friday 23:00 UTC is Saturday 07:00 in Shanghai: not a weekday there
    assert not evaluate(r, alice(), "a", datetime(2025, 6, 6, 23, 0, tzinfo=UTC), None).allowed
    # Sunday 17:00 UTC is Monday 01:00 in Shanghai: the day is Monday, but before 09:00
    assert not evaluate(r, alice(), "a", datetime(2025, 6, 8, 17, 0, tzinfo=UTC), None).allowed
    assert evaluate(r, alice(), "a", datetime(2025, 6, 9, 1, 0, tzinfo=UTC), None).allowed


def test_window_across_dst_change() -> None:
    w = rules(windows=["sun 01:00-03:00 Europe/Berlin"]).windows[0]
    # 2025-03-30: Berlin jumps from 02:00 to 03:00; 00:30 UTC is 01:30 CET (open), 01:30 UTC is 03:30 CEST
    assert in_window(w, datetime(2025, 3, 30, 0, 30, tzinfo=UTC))
    assert not in_window(w, datetime(2025, 3, 30, 1, 30, tzinfo=UTC))


def test_parse_window_forms() -> None:
    assert parse_window("mon-fri 09:00-18:00 Asia/Shanghai") == {
        "days": ["mon", "tue", "wed", "thu", "fri"],
        "start": "09:00",
        "end": "18:00",
        "timezone": "Asia/Shanghai",
    }
    assert parse_window("9:00-17:30")["days"] == [] and parse_window("9:00-17:30")["start"] == "09:00"
    assert parse_window("sat,sun 00:00-24:00")["days"] == ["sat", "sun"]
    assert parse_window("fri-mon 00:00-24:00")["days"] == ["mon", "fri", "sat", "sun"]
    with pytest.raises(ValueError):
        parse_window("weekdays nine to five")


def test_hosts_accept_host_ids_and_are_normalised() -> None:
    r = rules(hosts=[f"obxhost1.{HOST_A}.c29tZWtleQ", HOST_A.upper()])
    assert r.hosts == [HOST_A]


def test_validation_reports_every_problem_at_once() -> None:
    with pytest.raises(InvalidInputError) as err:
        validate_rules(
            {
                "allowed_roles": ["developer", "superuser"],
                "valid_from": "2025-13-01",
                "valid_until": "tomorrow",
                "windows": [
                    {"days": ["mon", "funday"], "start": "25:00", "end": "18:00", "timezone": "Mars/Olympus"},
                    "mon 09:00-09:00",
                    "whenever",
                ],
                "hosts": ["not-a-fingerprint"],
                "colour": "blue",
            }
        )
    fields = [p.field for p in err.value.problems]
    assert fields.count("allowed_roles") == 1
    for f in (
        "colour",
        "hosts",
        "valid_from",
        "valid_until",
        "windows[0].days",
        "windows[0].start",
        "windows[0].timezone",
        "windows[1].end",
        "windows[2]",
    ):
        assert f in fields, (f, fields)


def test_from_after_until_is_refused() -> None:
    with pytest.raises(InvalidInputError) as err:
        validate_rules({"valid_from": "2025-07-01", "valid_until": "2025-06-01"})
    assert err.value.problems[0].field == "valid_until"


def test_stored_rules_round_trip() -> None:
    r = rules(valid_until="2025-06-30", windows=["mon-fri 09:00-18:00 Asia/Shanghai"], hosts=[HOST_A])
    again = validate_rules(r.as_json())
    assert again == r and PolicyRules.model_validate(r.as_json()) == r
    assert r.valid_until == datetime(2025, 7, 1, tzinfo=UTC)


def test_fingerprint_is_stable_and_pinnable() -> None:
    real = fingerprint.current()
    assert fingerprint.is_fingerprint(real) and fingerprint.compute().value == real
    with fingerprint.pinned(HOST_B):
        assert fingerprint.current() == HOST_B
    assert fingerprint.current() == real
