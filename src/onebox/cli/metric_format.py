"""How the CLI shows metric values: units from the metric's name, and sparklines of series."""

from __future__ import annotations

from collections.abc import Sequence

from onebox.cli.output import human_size

BLOCKS = "▁▂▃▄▅▆▇█"


def fmt(metric: str, value: float | None) -> str:
    """``value`` in the unit its name carries (bytes, ratio, seconds, rates, hertz...)."""
    if value is None:
        return "-"
    if metric.endswith("_bytes_per_second"):
        return f"{human_size(int(value))}/s"
    if metric.endswith("_bytes"):
        return human_size(int(value))
    if metric.endswith("_ratio"):
        return f"{value * 100:.1f}%"
    if metric.endswith("_hertz"):
        return f"{value / 1e6:.0f} MHz"
    if metric.endswith("_celsius"):
        return f"{value:.0f} °C"
    if metric.endswith("_watts"):
        return f"{value:.0f} W"
    if metric.endswith("_seconds") and not metric.endswith("_timestamp_seconds"):
        return seconds(value)
    if metric.endswith("_per_second"):
        return f"{value:,.1f}/s"
    if metric.endswith("_cores"):
        return f"{value:.2f}"
    if metric in ("job_learning_rate",):
        return f"{value:.2e}"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"


def seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.1f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def sparkline(values: Sequence[float], width: int = 24) -> str:
    """The last ``width`` values as block characters scaled between their min and max."""
    vals = list(values)[-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    if hi == lo:
        return BLOCKS[0] * len(vals)
    return "".join(BLOCKS[round((v - lo) / (hi - lo) * (len(BLOCKS) - 1))] for v in vals)
