"""Use policies: who may use a model or dataset version, when, and on which machines.

Pure evaluation: no clock, no database, no machine probing here; the caller passes the principal,
the instant and the machine fingerprint, so every rule is testable with an injected clock and
host. An empty list (or an unset date) means *unrestricted* for that condition.

Semantics worth knowing:
- ``valid_from`` is inclusive and ``valid_until`` exclusive; a bare date (``2025-06-30``) is a UTC
  day, and ``valid_until`` with a bare date includes that whole day.
- A window ``fri 22:00-02:00`` opens on Friday at 22:00 local time and closes on Saturday at 02:00:
  a window that crosses midnight belongs to the day it opens on. ``00:00-24:00`` is the whole day.
- Roles are compared with the principal's project role (a site admin counts as ``admin``).
- ``principal=None`` evaluates only *when* and *where*: a process continuing an action whose
  identity was checked when it started (a deployment's worker loading its model, a queued
  training job reading its data). The identity is checked at the user-facing entry points.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field

from onebox.errors import ErrorList, InvalidInputError
from onebox.security import fingerprint as fp
from onebox.security.principal import ROLES, Principal

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CONDITIONS = ("project", "user", "role", "valid_from", "valid_until", "window", "host")
"""Evaluation order: the first that fails is the one a denial names."""
HOST_ID_PREFIX = "obxhost1."
_HHMM = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


class Window(BaseModel):
    """A weekly time-of-day window in a named time zone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    days: list[str] = Field(default_factory=list)
    """mon..sun; empty means every day."""
    start: str = "00:00"
    end: str = "24:00"
    timezone: str = "UTC"

    def __str__(self) -> str:
        days = ",".join(self.days) if self.days else "daily"
        return f"{days} {self.start}-{self.end} {self.timezone}"


class PolicyRules(BaseModel):
    """The rules of one use policy, as stored in ``use_policies.rules`` (JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_projects: list[str] = Field(default_factory=list)
    allowed_users: list[str] = Field(default_factory=list)
    allowed_roles: list[str] = Field(default_factory=list)
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    windows: list[Window] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)
    """Machine fingerprints (see :mod:`onebox.security.fingerprint`)."""

    def is_unrestricted(self) -> bool:
        return self == PolicyRules()

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    condition: str | None = None
    """The first failing condition (one of ``CONDITIONS``); None when allowed."""
    reason: str = ""
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "condition": self.condition, "reason": self.reason, "fix": self.fix}


# -- parsing and validation ----------------------------------------------------------------------


def parse_instant(text: str | datetime | date, *, end_of_day: bool = False) -> datetime:
    """An ISO date or date-time; a bare date is a UTC day (its end when ``end_of_day``), a naive
    date-time is UTC. Raises ValueError with a readable message."""
    if isinstance(text, datetime):
        value = text
    elif isinstance(text, date):
        value = datetime.combine(text, time(), tzinfo=UTC) + (
            timedelta(days=1) if end_of_day else timedelta()
        )
    else:
        s = str(text).strip()
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", s):
            return parse_instant(date.fromisoformat(s), end_of_day=end_of_day)
        try:
            value = datetime.fromisoformat(s.replace("Z", "+00:00") if s.endswith("Z") else s)
        except ValueError:
            raise ValueError(
                f"{s!r} is not a date (2025-06-30) or date-time (2025-06-30T18:00+08:00)"
            ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _minutes(hhmm: str) -> int:
    m = _HHMM.match(hhmm)
    if m is None or (m.group(1) == "24" and m.group(2) != "00"):
        raise ValueError(f"{hhmm!r} is not a time HH:MM (00:00 to 24:00)")
    return int(m.group(1)) * 60 + int(m.group(2))


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone") from None


def _expand_days(spec: str) -> list[str]:
    """``mon-fri``, ``sat,sun``, ``mon,wed-fri``, ``daily``/``*`` (every day)."""
    spec = spec.strip().lower()
    if spec in ("", "daily", "*", "all"):
        return []
    out: list[str] = []
    for part in spec.split(","):
        a, sep, b = part.strip().partition("-")
        if a not in DAYS or (sep and b not in DAYS):
            raise ValueError(f"{part.strip()!r} is not a day or day range (mon..sun, e.g. mon-fri)")
        i, j = DAYS.index(a), DAYS.index(b) if sep else DAYS.index(a)
        span = range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)]  # fri-mon wraps
        out.extend(DAYS[k] for k in span if DAYS[k] not in out)
    return [d for d in DAYS if d in out]


def parse_window(text: str) -> dict[str, Any]:
    """``"mon-fri 09:00-18:00 Asia/Shanghai"`` -> window dict (days optional, zone default UTC).
    Raises ValueError; :func:`validate_rules` then checks the pieces."""
    parts = text.split()
    times = [i for i, p in enumerate(parts) if re.fullmatch(r"\d{1,2}:\d{2}-\d{1,2}:\d{2}", p)]
    if len(times) != 1 or times[0] > 1 or len(parts) > times[0] + 2:
        raise ValueError(f"{text!r} is not a window like 'mon-fri 09:00-18:00 Asia/Shanghai'")
    i = times[0]
    start, end = parts[i].split("-")
    return {
        "days": _expand_days(parts[0]) if i == 1 else [],
        "start": start.zfill(5),
        "end": end.zfill(5),
        "timezone": parts[i + 1] if len(parts) > i + 1 else "UTC",
    }


def normalise_host(text: str) -> str:
    """A machine fingerprint from itself or from a host id (``obxhost1.<fingerprint>.<key>``)."""
    value = (
        text.strip().lower() if not text.strip().startswith(HOST_ID_PREFIX) else text.strip().split(".")[1]
    )
    if not fp.is_fingerprint(value):
        raise ValueError(f"{text!r} is not a machine fingerprint ({fp.LENGTH} hex digits) or host id")
    return value


def validate_rules(raw: dict[str, Any] | PolicyRules) -> PolicyRules:
    """Check every field and report all problems at once (InvalidInputError); returns normalised
    rules (dates in UTC, day lists expanded, hosts as fingerprints, duplicates dropped)."""
    data = raw.as_json() if isinstance(raw, PolicyRules) else dict(raw or {})
    errors = ErrorList()
    unknown = [k for k in data if k not in PolicyRules.model_fields]
    for k in unknown:
        errors.add(k, "is not a policy field", f"use {', '.join(PolicyRules.model_fields)}")
    out: dict[str, Any] = {}

    def str_list(key: str) -> list[str]:
        value = data.get(key) or []
        if isinstance(value, str) or not isinstance(value, list):
            errors.add(key, "must be a list of strings")
            return []
        good = []
        for item in value:
            if not isinstance(item, str) or not item.strip():
                errors.add(key, f"{item!r} is not a non-empty string")
            elif item.strip() not in good:
                good.append(item.strip())
        return good

    out["allowed_projects"] = str_list("allowed_projects")
    out["allowed_users"] = str_list("allowed_users")
    roles = str_list("allowed_roles")
    for r in roles:
        if r not in ROLES:
            errors.add("allowed_roles", f"{r!r} is not a role", f"use some of {', '.join(ROLES)}")
    out["allowed_roles"] = [r for r in roles if r in ROLES]
    hosts = []
    for h in str_list("hosts"):
        try:
            n = normalise_host(h)
        except ValueError as exc:
            errors.add("hosts", str(exc), "copy it from `onebox host fingerprint` on that machine")
            continue
        if n not in hosts:
            hosts.append(n)
    out["hosts"] = hosts
    for key in ("valid_from", "valid_until"):
        value = data.get(key)
        out[key] = None
        if value is None or value == "":
            continue
        try:
            out[key] = parse_instant(value, end_of_day=key == "valid_until")
        except (ValueError, TypeError) as exc:
            errors.add(key, str(exc), "write 2025-06-30 or 2025-06-30T18:00:00+08:00")
    if out["valid_from"] and out["valid_until"] and out["valid_from"] >= out["valid_until"]:
        errors.add(
            "valid_until",
            f"{out['valid_until'].isoformat()} is not after valid_from {out['valid_from'].isoformat()}",
            "the policy would never allow anything; check the dates",
        )
    windows = data.get("windows") or []
    out["windows"] = []
    if not isinstance(windows, list):
        errors.add("windows", "must be a list of windows")
        windows = []
    for n, w in enumerate(windows):
        where = f"windows[{n}]"
        if isinstance(w, str):
            try:
                w = parse_window(w)
            except ValueError as exc:
                errors.add(where, str(exc))
                continue
        if not isinstance(w, dict):
            errors.add(where, "must be an object with days, start, end, timezone")
            continue
        for k in w:
            if k not in Window.model_fields:
                errors.add(f"{where}.{k}", "is not a window field", "use days, start, end, timezone")
        days = w.get("days") or []
        try:
            days = _expand_days(",".join(days) if isinstance(days, list) else str(days))
        except ValueError as exc:
            errors.add(f"{where}.days", str(exc))
        start, end = str(w.get("start", "00:00")), str(w.get("end", "24:00"))
        bounds = []
        for k, v in (("start", start), ("end", end)):
            try:
                bounds.append(_minutes(v))
            except ValueError as exc:
                errors.add(f"{where}.{k}", str(exc), "write 09:00")
        if len(bounds) == 2 and bounds[0] == bounds[1]:
            errors.add(
                f"{where}.end", "equals start: the window is empty", "use 00:00-24:00 for the whole day"
            )
        elif len(bounds) == 2 and bounds[0] == 24 * 60:
            errors.add(f"{where}.start", "24:00 cannot start a window", "use 00:00")
        tz = str(w.get("timezone") or "UTC")
        try:
            _zone(tz)
        except ValueError as exc:
            errors.add(f"{where}.timezone", str(exc), "e.g. Asia/Shanghai, Europe/Berlin or UTC")
        out["windows"].append({"days": days, "start": start, "end": end, "timezone": tz})
    errors.raise_if_any("invalid use policy", InvalidInputError)
    return PolicyRules.model_validate(out)


# -- evaluation ----------------------------------------------------------------------------------


def in_window(w: Window, now: datetime) -> bool:
    """Whether ``now`` falls in ``w``; a window crossing midnight belongs to its opening day."""
    local = now.astimezone(_zone(w.timezone))
    t = local.hour * 60 + local.minute
    start, end = _minutes(w.start), _minutes(w.end)
    days = set(w.days or DAYS)
    today, yesterday = DAYS[local.weekday()], DAYS[(local.weekday() - 1) % 7]
    if start < end:
        return today in days and start <= t < end
    return (today in days and t >= start) or (yesterday in days and t < end)


def _who(rules: PolicyRules, p: Principal) -> Decision | None:
    if rules.allowed_projects and not ({p.project, p.project_id} & set(rules.allowed_projects)):
        return Decision(
            False,
            "project",
            f"project {p.project!r} is not among the allowed projects ({', '.join(rules.allowed_projects)})",
            "act in an allowed project, or ask an operator to add this one to the policy",
        )
    if rules.allowed_users and not ({p.username, p.user_id} & set(rules.allowed_users)):
        return Decision(
            False,
            "user",
            f"user {p.username!r} is not among the allowed users ({', '.join(rules.allowed_users)})",
            "ask an operator to add the user to the policy (`onebox policies set ... --allow-user`)",
        )
    role = "admin" if p.is_admin else p.role
    if rules.allowed_roles and role not in rules.allowed_roles:
        return Decision(
            False,
            "role",
            f"role {role!r} is not among the allowed roles ({', '.join(rules.allowed_roles)})",
            "act as a user with an allowed role, or ask an operator to change the policy",
        )
    return None


def evaluate(
    rules: PolicyRules, principal: Principal | None, action: str, now: datetime, fingerprint: str | None
) -> Decision:
    """Decide whether ``principal`` may do ``action`` at ``now`` on the machine ``fingerprint``.

    ``fingerprint`` may be None only when the rules name no hosts (callers compute it lazily).
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if principal is not None and (denied := _who(rules, principal)) is not None:
        return denied
    stamp = now.astimezone(UTC).isoformat(timespec="seconds")
    if rules.valid_from is not None and now < rules.valid_from:
        return Decision(
            False,
            "valid_from",
            f"the policy allows {action} from {rules.valid_from.isoformat()}; it is now {stamp}",
            "wait until then, or ask an operator to move valid_from",
        )
    if rules.valid_until is not None and now >= rules.valid_until:
        return Decision(
            False,
            "valid_until",
            f"the policy allowed {action} until {rules.valid_until.isoformat()}; it is now {stamp}",
            "ask the owner for a renewed policy or licence",
        )
    if rules.windows and not any(in_window(w, now) for w in rules.windows):
        return Decision(
            False,
            "window",
            f"{stamp} is outside the allowed time windows ({'; '.join(str(w) for w in rules.windows)})",
            "try again inside a window, or ask an operator to widen them",
        )
    if rules.hosts and fingerprint not in rules.hosts:
        return Decision(
            False,
            "host",
            f"this machine ({fingerprint}) is not among the allowed hosts ({', '.join(rules.hosts)})",
            "use it on an allowed machine (`onebox host fingerprint` shows a machine's fingerprint)",
        )
    return Decision(True)
