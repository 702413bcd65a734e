"""Resource names and references (``name``, ``name:3``, ``name@prod``), validated at the edge."""

from __future__ import annotations

import re
from dataclasses import dataclass

from onebox.errors import InvalidInputError, Problem

_FORBIDDEN = re.compile(r"[\s:@/\\]")


def validate_name(name: str, field: str = "name") -> str:
    """Names may be Chinese or English; they must not contain spaces or ``: @ / \\``."""
    problems = []
    if not name or not name.strip():
        problems.append(Problem(field, "must not be empty"))
    elif len(name) > 128:
        problems.append(Problem(field, f"is {len(name)} characters long; the limit is 128"))
    elif _FORBIDDEN.search(name):
        problems.append(
            Problem(field, f"{name!r} contains a space or one of : @ / \\", "use letters, digits, - _ .")
        )
    elif name[0] in "-.":
        problems.append(Problem(field, f"{name!r} must not start with '-' or '.'"))
    if problems:
        raise InvalidInputError(f"invalid {field}", problems=problems)
    return name


def name_key(name: str) -> str:
    """The form names are compared in: ``Foo``, ``foo`` and ``FOO`` are one name (Unicode-aware)."""
    return name.casefold()


def validate_text(value: str | None, field: str, limit: int) -> str | None:
    """Free-text fields have column limits; say so rather than fail inside the database."""
    if value is not None and len(value) > limit:
        raise InvalidInputError(
            f"invalid {field}",
            problems=[Problem(field, f"is {len(value)} characters long; the limit is {limit}")],
        )
    return value


@dataclass(frozen=True)
class Ref:
    """A reference to a version: by number, by alias, or the latest when neither is given."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def parse_ref(text: str, field: str = "reference") -> Ref:
    text = text.strip()
    if "@" in text:
        name, alias = text.split("@", 1)
        validate_name(name, field)
        validate_name(alias, f"{field} alias")
        return Ref(name, alias=alias)
    if ":" in text:
        name, ver = text.split(":", 1)
        validate_name(name, field)
        digits = ver[1:] if ver[:1] in ("v", "V") else ver
        if not digits.isdigit() or int(digits) < 1:
            raise InvalidInputError(
                f"invalid {field}",
                problems=[
                    Problem(field, f"version {ver!r} is not a positive number", "write name:3 or name@alias")
                ],
            )
        return Ref(name, version=int(digits))
    return Ref(validate_name(text, field))
