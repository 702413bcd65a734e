"""Alert rules: a metric compared with a threshold, held for a while before it fires, and a
(lower) clear level held for a while before it resolves, read from YAML.

The rules onebox ships are in ``rules.yaml`` next to this module; the operator's file (setting
``alert_rules_file``) adds rules, replaces shipped ones by name, or switches them off with
``enabled: false``, and may name webhooks. Everything is validated before monitoring starts, and
every problem is reported at once, naming the field (``rules[3].for``) and how to fix it, so a
typo never silently disables an alert.

A rule holds per resource: each sample of ``metric`` (at ``level``, on resources matching the
``resource`` glob) is one candidate alert. Hysteresis: an alert fires when ``value op threshold``
has held for ``for``, and resolves when ``value op clear`` has stopped holding for ``clear_for``
(a resource that stops reporting counts as cleared), so a value hovering at the threshold does
not flap.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from onebox.errors import ConfigError, ErrorList
from onebox.monitor.catalog import METRICS
from onebox.monitor.samples import LEVELS, Sample
from onebox.monitor.signals import SIGNALS

SEVERITIES = ("info", "warning", "error", "critical")
"""Least to most severe."""

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}

RULE_KEYS = (
    "name", "description", "metric", "level", "resource", "op", "threshold", "clear", "for",
    "clear_for", "severity", "message", "enabled",
)  # fmt: skip
WEBHOOK_KEYS = ("url", "min_severity", "send_resolved")
TOP_KEYS = ("rules", "webhooks")
NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
"""Rule names end up in event kinds (``alert.resolved.<name>``, at most 64 characters)."""
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
MAX_DURATION_S = 30 * 86400
TEMPLATE_FIELDS = {
    "rule": "disk_full",
    "resource": "fs:/",
    "name": "x",
    "node": "box",
    "project": "default",
    "metric": "fs_usage_ratio",
    "value": 0.5,
    "threshold": 0.9,
    "op": ">",
    "for": "2m",
    "detail": "",
}
"""What a message template may use (with these stand-ins when it is checked)."""

DEFAULT_RULES = "rules.yaml"


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else 0


def parse_duration(value: Any) -> float | None:
    """Seconds from ``90``, ``90s``, ``2m``, ``1.5h``, ``1d``; None when it is not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) and value >= 0 else None
    if not isinstance(value, str):
        return None
    m = _DURATION.match(value.strip().lower())
    if m is None:
        return None
    return float(m.group(1)) * _UNITS[m.group(2)]


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Rule:
    name: str
    metric: str
    op: str
    threshold: float
    severity: str = "warning"
    level: str | None = None
    resource: str | None = None
    """A glob over sample resources (``fs:/data*``, ``gpu*``); None: every resource."""
    for_s: float = 0.0
    """How long the condition must hold before the alert fires."""
    clear: float | None = None
    """The level the value must get back past to resolve (default: the threshold)."""
    clear_for_s: float = 0.0
    """How long the clear condition must hold (or the resource be gone) before it resolves."""
    message: str = ""
    description: str = ""
    enabled: bool = True

    def fires(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)

    def holds(self, value: float) -> bool:
        """Whether a firing alert is still on (past the clear level, the hysteresis band)."""
        return OPS[self.op](value, self.threshold if self.clear is None else self.clear)

    def matches(self, sample: Sample) -> bool:
        if sample.metric != self.metric or (self.level is not None and sample.level != self.level):
            return False
        return self.resource is None or fnmatch.fnmatchcase(sample.resource, self.resource)

    def render(self, **fields: Any) -> str:
        values = {**TEMPLATE_FIELDS, "rule": self.name, "metric": self.metric, "op": self.op}
        values |= {"threshold": self.threshold, "for": format_duration(self.for_s), **fields}
        template = self.message or "{rule}: {metric} of {resource} is {value:g} ({op} {threshold:g})"
        try:
            return template.format(**values)
        except (KeyError, ValueError, TypeError, IndexError):  # a value of an unexpected type
            return f"{self.name}: {self.metric} of {values['resource']} is {values['value']!r}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "metric": self.metric,
            "level": self.level,
            "resource": self.resource,
            "op": self.op,
            "threshold": self.threshold,
            "clear": self.clear,
            "for": format_duration(self.for_s),
            "clear_for": format_duration(self.clear_for_s),
            "severity": self.severity,
            "message": self.message,
            "description": self.description,
            "enabled": self.enabled,
        }


@dataclass(frozen=True)
class Webhook:
    url: str
    min_severity: str = "warning"
    send_resolved: bool = True

    @property
    def label(self) -> str:
        """How delivery records name it: the origin only (a path or query may carry a token)."""
        parts = urlsplit(self.url)
        host = parts.hostname or "?"
        return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    webhooks: tuple[Webhook, ...] = ()
    sources: tuple[str, ...] = field(default=())

    @property
    def enabled(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.enabled)

    def get(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)


def _suggest(key: str, options: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(options)}"


def _number(raw: dict[str, Any], key: str, where: str, errors: ErrorList) -> float | None:
    v = raw.get(key)
    if v is None:
        return None
    if isinstance(v, str):  # YAML 1.1 reads 1e9 (no dot) as text
        with contextlib.suppress(ValueError):
            v = float(v)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        errors.add(f"{where}.{key}", f"{v!r} is not a number", "write a plain number such as 0.9 or 85")
        return None
    return float(v)


def _duration(raw: dict[str, Any], key: str, where: str, errors: ErrorList) -> float:
    if key not in raw:
        return 0.0
    s = parse_duration(raw[key])
    if s is None or s > MAX_DURATION_S:
        errors.add(
            f"{where}.{key}",
            f"{raw[key]!r} is not a duration of at most 30 days",
            "write seconds or a number with s, m, h or d, e.g. 90s, 2m, 1h",
        )
        return 0.0
    return s


def _text(raw: dict[str, Any], key: str, where: str, errors: ErrorList, limit: int = 500) -> str:
    v = raw.get(key, "")
    if v is None:
        return ""
    if not isinstance(v, str) or len(v) > limit:
        errors.add(f"{where}.{key}", f"must be text of at most {limit} characters")
        return ""
    return v


def known_metrics() -> dict[str, tuple[str, ...]]:
    """Metric -> levels, for the collectors' metrics and the signals derived for alerts."""
    return {m: spec.levels for m, spec in {**METRICS, **SIGNALS}.items()}


def parse_rule(raw: Any, where: str, errors: ErrorList, base: Rule | None = None) -> Rule | None:
    """One rule from its mapping; ``base`` is the shipped rule of that name (keys not given keep
    its values). Problems go to ``errors``; None when the rule is unusable."""
    if not isinstance(raw, dict):
        errors.add(where, "must be a mapping of rule fields", "write `- name: ...` then the fields")
        return None
    for key in raw:
        if key not in RULE_KEYS:
            errors.add(f"{where}.{key}", "is not a rule field", _suggest(str(key), RULE_KEYS))
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        errors.add(
            f"{where}.name",
            f"{name!r} is not a rule name",
            "use 1-48 of a-z, 0-9 and _, starting with a letter",
        )
        name = ""
    given = {k: v for k, v in raw.items() if k in RULE_KEYS}
    if base is not None:  # an override: the shipped rule's values fill what is not given
        merged = base.as_dict() | {"threshold": base.threshold}
        merged["for"], merged["clear_for"] = base.for_s, base.clear_for_s
        if "threshold" in given and "clear" not in given:
            merged["clear"] = None  # the old clear level belonged to the old threshold
        given = {k: v for k, v in merged.items() if v is not None} | given
    enabled = given.get("enabled", True)
    if not isinstance(enabled, bool):
        errors.add(f"{where}.enabled", f"{enabled!r} is not true or false")
        enabled = True
    if base is not None and set(raw) <= {"name", "enabled"}:
        return Rule(**{**_rule_fields(base), "enabled": enabled})
    n_before = len(errors.problems)
    metrics = known_metrics()
    metric = given.get("metric")
    if metric not in metrics:
        fix = _suggest(str(metric), sorted(metrics)) if metric else "name a metric from `onebox metrics list`"
        errors.add(f"{where}.metric", f"{metric!r} is not a metric", fix)
    level = given.get("level")
    if level is not None:
        if level not in LEVELS:
            errors.add(f"{where}.level", f"{level!r} is not a level", f"use one of {', '.join(LEVELS)}")
        elif metric in metrics and level not in metrics[metric]:
            errors.add(
                f"{where}.level",
                f"{metric} is not collected at level {level!r}",
                f"use one of {', '.join(metrics[metric])} or leave level out",
            )
    resource = given.get("resource")
    if resource is not None and (not isinstance(resource, str) or not resource or len(resource) > 255):
        errors.add(f"{where}.resource", "must be a resource name or glob (e.g. fs:/data*, gpu*)")
    op = given.get("op", ">")
    if op not in OPS:
        errors.add(f"{where}.op", f"{op!r} is not a comparison", f"use one of {' '.join(OPS)}")
    threshold = _number(given, "threshold", where, errors)
    if threshold is None and "threshold" not in given:
        errors.add(f"{where}.threshold", "is required", "the value the metric is compared with, e.g. 0.9")
    clear = _number(given, "clear", where, errors)
    if clear is not None and threshold is not None and op in OPS:
        if op in ("==", "!="):
            errors.add(f"{where}.clear", f"has no meaning with op {op}", "leave clear out")
        elif op in (">", ">=") and clear > threshold:
            fix = "with op > the alert clears when the value falls to clear: pick clear <= threshold"
            errors.add(f"{where}.clear", f"{clear:g} is above the threshold {threshold:g}", fix)
        elif op in ("<", "<=") and clear < threshold:
            fix = "with op < the alert clears when the value rises to clear: pick clear >= threshold"
            errors.add(f"{where}.clear", f"{clear:g} is below the threshold {threshold:g}", fix)
    for_s = _duration(given, "for", where, errors)
    clear_for_s = _duration(given, "clear_for", where, errors)
    severity = given.get("severity", "warning")
    if severity not in SEVERITIES:
        errors.add(
            f"{where}.severity", f"{severity!r} is not a severity", f"use one of {', '.join(SEVERITIES)}"
        )
    message = _text(given, "message", where, errors)
    description = _text(given, "description", where, errors)
    if message:
        try:
            message.format(**TEMPLATE_FIELDS)
        except KeyError as exc:
            errors.add(
                f"{where}.message",
                f"uses {{{exc.args[0]}}}, which is not a field",
                f"use some of {', '.join('{' + k + '}' for k in TEMPLATE_FIELDS)}",
            )
        except (ValueError, IndexError) as exc:
            errors.add(
                f"{where}.message", f"is not a valid template: {exc}", "e.g. '{resource} is {value:.0%} full'"
            )
    if len(errors.problems) > n_before or not name or threshold is None:
        return None
    return Rule(
        name=name,
        metric=str(metric),
        op=str(op),
        threshold=threshold,
        severity=str(severity),
        level=level,
        resource=resource,
        for_s=for_s,
        clear=clear,
        clear_for_s=clear_for_s,
        message=message,
        description=description,
        enabled=enabled,
    )


def _rule_fields(rule: Rule) -> dict[str, Any]:
    return {f: getattr(rule, f) for f in rule.__dataclass_fields__}


def parse_webhook(raw: Any, where: str, errors: ErrorList) -> Webhook | None:
    """A webhook from the operator's configuration (never from a request: no endpoint takes URLs)."""
    if isinstance(raw, str):
        raw = {"url": raw}
    if not isinstance(raw, dict):
        errors.add(
            where, "must be a URL or a mapping with url", "e.g. - url: https://hooks.example.com/onebox"
        )
        return None
    for key in raw:
        if key not in WEBHOOK_KEYS:
            errors.add(f"{where}.{key}", "is not a webhook field", _suggest(str(key), WEBHOOK_KEYS))
    url = raw.get("url")
    ok = isinstance(url, str) and len(url) <= 2000
    parts = urlsplit(url) if ok else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        errors.add(f"{where}.url", f"{url!r} is not an http(s) URL", "e.g. https://hooks.example.com/onebox")
        ok = False
    severity = raw.get("min_severity", "warning")
    if severity not in SEVERITIES:
        errors.add(
            f"{where}.min_severity", f"{severity!r} is not a severity", f"use one of {', '.join(SEVERITIES)}"
        )
        ok = False
    resolved = raw.get("send_resolved", True)
    if not isinstance(resolved, bool):
        errors.add(f"{where}.send_resolved", f"{resolved!r} is not true or false")
        ok = False
    return Webhook(str(url), str(severity), resolved) if ok else None


def _read_yaml(text: str, source: str, errors: ErrorList) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        errors.add(source, f"is not valid YAML: {getattr(exc, 'problem', None) or exc}", line=line)
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        errors.add(source, "must be a mapping with `rules:` (and optionally `webhooks:`)")
        return {}
    for key in data:
        if key not in TOP_KEYS:
            errors.add(f"{source}: {key}", "is not a section", _suggest(str(key), TOP_KEYS))
    return data


def _list(data: dict[str, Any], key: str, source: str, errors: ErrorList) -> list[Any]:
    v = data.get(key) or []
    if not isinstance(v, list):
        errors.add(f"{source}: {key}", "must be a list", f"write `{key}:` then one `- ...` entry per item")
        return []
    return v


def default_rules() -> tuple[Rule, ...]:
    """The rules onebox ships (a broken shipped file is a bug: it raises)."""
    errors = ErrorList()
    text = resources.files("onebox.monitor").joinpath(DEFAULT_RULES).read_text(encoding="utf-8")
    data = _read_yaml(text, DEFAULT_RULES, errors)
    rules = [
        parse_rule(r, f"rules[{i}]", errors)
        for i, r in enumerate(_list(data, "rules", DEFAULT_RULES, errors))
    ]
    errors.raise_if_any(f"the shipped {DEFAULT_RULES} is invalid")
    return tuple(r for r in rules if r is not None)


def load_rules(path: Path | None = None, webhooks: list[str] | tuple[str, ...] = ()) -> RuleSet:
    """The shipped rules merged with the operator's file ``path`` (same name: replaced), plus
    webhooks from the file and from ``webhooks`` (the ``alert_webhooks`` setting). Raises
    :class:`ConfigError` listing every problem."""
    shipped = {r.name: r for r in default_rules()}
    merged = dict(shipped)
    errors = ErrorList()
    hooks: list[Webhook] = []
    for i, url in enumerate(webhooks):
        hook = parse_webhook(url, f"ONEBOX_ALERT_WEBHOOKS[{i}]", errors)
        if hook is not None:
            hooks.append(hook)
    sources = [DEFAULT_RULES]
    if path is not None:
        src = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            errors.add(
                "ONEBOX_ALERT_RULES_FILE", f"cannot read {src}: {exc}", "point it at a readable YAML file"
            )
            text = ""
        data = _read_yaml(text, src, errors)
        seen: set[str] = set()
        for i, raw in enumerate(_list(data, "rules", src, errors)):
            where = f"{src}: rules[{i}]"
            name = raw.get("name") if isinstance(raw, dict) else None
            if isinstance(name, str) and name in seen:
                errors.add(f"{where}.name", f"{name!r} is defined twice in this file", "keep one of them")
                continue
            rule = parse_rule(raw, where, errors, shipped.get(name) if isinstance(name, str) else None)
            if rule is not None:
                seen.add(rule.name)
                merged[rule.name] = rule
        for i, raw in enumerate(_list(data, "webhooks", src, errors)):
            hook = parse_webhook(raw, f"{src}: webhooks[{i}]", errors)
            if hook is not None:
                hooks.append(hook)
        sources.append(src)
    errors.raise_if_any("invalid alert rules", ConfigError)
    return RuleSet(tuple(merged.values()), tuple(hooks), tuple(sources))
