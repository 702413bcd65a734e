"""Per-second rates from monotonically growing counters, between two collection passes."""

from __future__ import annotations

from collections.abc import Hashable


class RateTracker:
    """Remembers each counter's last value; ``rate`` is None on the first sight of a counter and
    after a reset (a counter that went down: a restarted process or a re-plugged device)."""

    def __init__(self) -> None:
        self._last: dict[Hashable, tuple[float, float]] = {}
        self._seen: set[Hashable] = set()

    def rate(self, key: Hashable, value: float, now: float) -> float | None:
        prev = self._swap(key, value, now)
        if prev is None:
            return None
        t0, v0 = prev
        if now <= t0 or value < v0:
            return None
        return (value - v0) / (now - t0)

    def delta(self, key: Hashable, value: float, now: float) -> float | None:
        """The increase since the last call (None as for ``rate``)."""
        prev = self._swap(key, value, now)
        if prev is None or value < prev[1]:
            return None
        return value - prev[1]

    def _swap(self, key: Hashable, value: float, now: float) -> tuple[float, float] | None:
        prev = self._last.get(key)
        self._last[key] = (now, value)
        self._seen.add(key)
        return prev

    def sweep(self) -> None:
        """Forget counters not seen since the last sweep (finished jobs, gone disks)."""
        for key in [k for k in self._last if k not in self._seen]:
            del self._last[key]
        self._seen = set()
