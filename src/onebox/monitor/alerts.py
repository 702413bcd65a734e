"""The alert engine: after each monitoring pass, evaluate the rules on the pass's samples and the
derived signals, fire and resolve alerts in the events table, and queue their notifications.

Per candidate (a rule and one resource): the condition must hold for the rule's ``for`` before
the alert fires (the pending start lives in memory: a restart starts the wait again, it never
fires early), and the clear condition, or the resource's absence, for ``clear_for`` before it
resolves. Which alerts are open is read from the store each pass, so several nodes' monitors
sharing one store agree on them: the one that sees a firing alert's resource keeps it, and an
alert whose resource is gone is resolved by the node that fired it (or by anyone once that node
is lost).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict

from onebox.monitor import alert_store
from onebox.monitor.alert_store import OpenAlert
from onebox.monitor.rules import Rule, RuleSet
from onebox.monitor.samples import COMPONENT, NODE, Sample, Snapshot
from onebox.monitor.signals import SignalDeriver
from onebox.monitor.webhooks import Notifier
from onebox.store.db import Database

log = logging.getLogger(__name__)


class AlertEngine:
    """Evaluates one node's rules pass after pass."""

    def __init__(
        self,
        db: Database,
        node_id: str,
        rules: RuleSet,
        *,
        notifier: Notifier | None = None,
        deriver: SignalDeriver | None = None,
    ) -> None:
        self.db = db
        self.node = node_id
        self.rules = rules
        self.notifier = notifier
        self.deriver = deriver or SignalDeriver(db, node_id)
        self._pending: dict[str, float] = {}
        self._clearing: dict[str, float] = {}

    @classmethod
    def build(
        cls,
        db: Database,
        node_id: str,
        rules: RuleSet,
        *,
        max_attempts: int = 5,
        timeout_s: float = 5.0,
    ) -> AlertEngine:
        """The engine for loaded rules, with a notifier when they name webhooks."""
        notifier = None
        if rules.webhooks:
            notifier = Notifier(db, rules.webhooks, max_attempts=max_attempts, timeout_s=timeout_s)
            notifier.resume()  # what a previous run could not deliver yet
        return cls(db, node_id, rules, notifier=notifier)

    def signals(self, snapshot: Snapshot) -> list[Sample]:
        """What the rules see: the pass's samples with every node's liveness from the store, and
        the derived signals."""
        derived = self.deriver.derive(snapshot)
        return [s for s in snapshot.samples if s.metric != "node_up"] + derived

    def evaluate(self, snapshot: Snapshot) -> list[dict]:
        """One evaluation at the snapshot's time; returns the alerts that fired or resolved."""
        now = snapshot.ts
        by_metric: dict[str, list[Sample]] = defaultdict(list)
        for s in self.signals(snapshot):
            by_metric[s.metric].append(s)
        open_, dupes = alert_store.open_alerts(self.db)
        changes: list[dict] = []
        for dup in dupes:
            self._resolve(dup, now, None, "a duplicate: another node fired it at the same time", changes)
        seen: set[str] = set()
        enabled = {r.name: r for r in self.rules.enabled}
        for rule in enabled.values():
            for smp in by_metric.get(rule.metric, ()):
                if not rule.matches(smp) or not math.isfinite(smp.value):
                    continue
                fp = alert_store.fingerprint(rule.name, smp, self.node)
                seen.add(fp)
                alert = open_.get(fp)
                if alert is None:
                    self._maybe_fire(rule, smp, fp, now, changes)
                elif rule.holds(smp.value):
                    self._clearing.pop(fp, None)
                else:
                    why = f"{rule.metric} is back to {smp.value:g}"
                    self._maybe_resolve(alert, rule, now, smp.value, why, changes)
        for fp, alert in open_.items():
            if fp in seen:
                continue
            rule = enabled.get(alert.rule)
            mine = alert.observer == self.node or alert.observer in self.deriver.lost_nodes
            if not mine:
                continue
            if rule is None:
                self._resolve(alert, now, None, "its rule is no longer enabled", changes)
            else:
                why = f"{alert.resource} no longer reports {rule.metric}"
                self._maybe_resolve(alert, rule, now, None, why, changes)
        for fp in set(self._pending) - seen:
            del self._pending[fp]
        for fp in set(self._clearing) - set(open_):
            del self._clearing[fp]
        return changes

    def _maybe_fire(self, rule: Rule, smp: Sample, fp: str, now: float, changes: list[dict]) -> None:
        if not rule.fires(smp.value):
            self._pending.pop(fp, None)
            return
        since = self._pending.setdefault(fp, now)
        if now - since < rule.for_s:
            return
        del self._pending[fp]
        self._clearing.pop(fp, None)
        node = smp.resource if smp.level == NODE else self.node
        detail = self.deriver.details.get((smp.metric, smp.resource), "")
        message = rule.render(
            resource=smp.resource,
            name=smp.name or smp.resource,
            node=node,
            project=smp.project,
            value=smp.value,
            detail=detail,
        )
        data = {
            "metric": rule.metric,
            "op": rule.op,
            "threshold": rule.threshold,
            "clear": rule.clear,
            "for_s": rule.for_s,
            "value": smp.value,
            "pending_since": since,
            "detail": detail,
            "component": smp.resource if smp.level == COMPONENT else None,
        }
        if self.notifier is not None:
            stub = {"state": alert_store.FIRING, "severity": rule.severity}
            data["deliveries"] = self.notifier.pending_records(stub)
        view = alert_store.fire(
            self.db, rule=rule.name, severity=rule.severity, message=message, sample=smp, node=node,
            observer=self.node, data=data, now=now,
        )  # fmt: skip
        log.warning("alert %s fired: %s", rule.name, message)
        changes.append(view)
        if self.notifier is not None:
            self.notifier.submit(view)

    def _maybe_resolve(
        self, alert: OpenAlert, rule: Rule, now: float, value: float | None, why: str, changes: list[dict]
    ) -> None:
        since = self._clearing.setdefault(alert.fingerprint, now)
        if now - since >= rule.clear_for_s:
            self._resolve(alert, now, value, why, changes)

    def _resolve(
        self, alert: OpenAlert, now: float, value: float | None, why: str, changes: list[dict]
    ) -> None:
        self._clearing.pop(alert.fingerprint, None)
        view = alert_store.resolve(self.db, alert.id, now=now, value=value, why=why)
        if view is None:
            return
        log.info("alert %s resolved: %s", alert.rule, why)
        changes.append(view)
        if self.notifier is not None:
            records = self.notifier.pending_records(view)
            if records:
                alert_store.set_deliveries(self.db, alert.id, records)
                view["deliveries"] = {**view.get("deliveries", {}), **records}
            self.notifier.submit(view)

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()
