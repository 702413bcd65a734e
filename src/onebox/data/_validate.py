"""Helpers for the option dataclasses: type checks and building from plain data."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from onebox.errors import ErrorList


def is_int(value: Any) -> bool:
    """True for a real int (bool is not an int here: ``min_chars=True`` is a mistake)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for a finite int or float (not bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def from_dict(cls: Any, data: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``data``, reporting every unknown key at once."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        errors = ErrorList()
        for key in unknown:
            errors.add(f"{prefix}{key}", "unknown option", f"known options: {', '.join(sorted(names))}")
        errors.raise_if_any(f"unknown options for {cls.__name__}")
    return cls(**data)
