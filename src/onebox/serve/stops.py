"""Stop strings over streamed text.

A stop string may arrive split over several deltas ("<|" then "end|>"), so text that could still
be the start of one is held back until the next delta settles it; once a stop string is seen,
the text before it is the last output and the stop string itself is never shown.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Feed text deltas; get back what is safe to show, and whether a stop string ended it."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self.matched: str | None = None
        """The stop string that ended the output, once one did."""

    def feed(self, delta: str) -> tuple[str, bool]:
        """Return ``(text to emit, stopped)``; after a stop, everything fed is dropped."""
        if self.matched is not None:
            return "", True
        if not self.stops:
            return delta, False
        buf = self._held + delta
        first: tuple[int, str] | None = None
        for stop in self.stops:
            i = buf.find(stop)
            if i >= 0 and (first is None or i < first[0]):
                first = (i, stop)
        if first is not None:
            self.matched = first[1]
            self._held = ""
            return buf[: first[0]], True
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """The output ended without a stop: release the held text (it was not a stop after all)."""
        if self.matched is not None:
            return ""
        out, self._held = self._held, ""
        return out

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest end of ``buf`` that is a proper start of some stop string."""
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:k]):
                    best = k
                    break
        return best
