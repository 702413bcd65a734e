"""Redact personal data (emails, phone numbers, Chinese ID numbers, bank cards) from text.

Patterns are tuned for Chinese and English business text. Numbers that merely look like
PII must pass a check before they are replaced: ID numbers need a plausible birth date and a
valid ISO 7064 MOD 11-2 check digit, card numbers a valid Luhn sum. Prices, years and model
numbers (``X200``) are left alone, and so are 400/800 service hotlines, which belong to companies,
not people. Order matters: an 18-digit ID or a 16-digit card also
contains runs that look like phone numbers, so IDs and cards are replaced first.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

PLACEHOLDERS: dict[str, str] = {
    "email": "[EMAIL]",
    "id_number": "[ID_NUMBER]",
    "bank_card": "[BANK_CARD]",
    "phone": "[PHONE]",
}
"""Kind of PII -> the placeholder that replaces it (kinds are the keys of the returned Counter)."""

# ASCII letters and digits around a match mean it is part of a longer token (X200, ABC13800138000).
_NB = r"(?<![0-9A-Za-z])"
_NA = r"(?![0-9A-Za-z])"

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]*@"
    r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*"
    r"\.[A-Za-z]{2,24}(?![A-Za-z0-9\-])"
)
_ID_NUMBER = re.compile(
    _NB + r"[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx]" + _NA
)
# Contiguous 13-19 digits, or the printed groupings 4-4-4-4(-3) and 4-6-5 with one separator kind.
_BANK_CARD = re.compile(
    r"(?<![0-9A-Za-z+\-])(?:\d{13,19}"
    r"|\d{4}(?P<s>[ \-])\d{4}(?P=s)\d{4}(?P=s)\d{4}(?:(?P=s)\d{3})?"
    r"|\d{4}(?P<t>[ \-])\d{6}(?P=t)\d{5})" + _NA
)
_PHONE_INTL = re.compile(r"(?<![0-9A-Za-z+])\+\d{1,3}(?:[ \-]?\(?\d{1,5}\)?){1,5}(?!\d)")
_PHONE_CN = re.compile(
    _NB
    + r"1[3-9]\d(?:\d{8}|[ \-]\d{4}[ \-]\d{4})"
    + _NA
    + r"|[(（]0\d{2,3}[)）][ \-]?\d{7,8}(?:-\d{1,5})?"
    + _NA
    + r"|"
    + _NB
    + r"0\d{2,3}[ \-]\d{7,8}(?:-\d{1,5})?"
    + _NA
)
_QUICK = re.compile(r"[0-9@]")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def id_check_digit(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character for the first 17 digits of a Chinese resident ID."""
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def is_valid_id_number(value: str) -> bool:
    """True if ``value`` is 17 digits plus a correct check character (X may be lower case)."""
    return len(value) == 18 and value[:17].isdigit() and id_check_digit(value[:17]) == value[17].upper()


def luhn_ok(digits: str) -> bool:
    """True if the digit string passes the Luhn checksum used by payment cards."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _sub(
    pattern: re.Pattern[str], kind: str, valid: Callable[[str], str | None] | None, counts: Counter[str]
) -> Callable[[str], str]:
    """A substitution that replaces matches ``valid`` accepts (it returns the text to keep after
    the placeholder) and counts them."""
    placeholder = PLACEHOLDERS[kind]

    def replace(match: re.Match[str]) -> str:
        if valid is None:
            counts[kind] += 1
            return placeholder
        kept = valid(match.group(0))
        if kept is None:
            return match.group(0)
        counts[kind] += 1
        return placeholder + kept

    return lambda text: pattern.sub(replace, text)


def _valid_id(s: str) -> str | None:
    return "" if is_valid_id_number(s) else None


def _valid_card(s: str) -> str | None:
    digits = re.sub(r"[ \-]", "", s)
    return "" if 13 <= len(digits) <= 19 and luhn_ok(digits) else None


def _valid_intl(s: str) -> str | None:
    """Accept 8-15 digits (E.164); greedy grouping may swallow a following number, so trim it off."""
    parts = re.findall(r"[ \-]?\(?\d+\)?", s[1:])
    for end in range(len(parts), 0, -1):
        count = sum(sum(c.isdigit() for c in p) for p in parts[:end])
        if 8 <= count <= 15:
            return "".join(parts[end:])
    return None


def redact(text: str, allow: Sequence[str] = ()) -> tuple[str, Counter[str]]:
    """Replace PII in ``text`` with placeholders; return the new text and counts by kind.

    Strings in ``allow`` (a company's own support address or hotline, say) are kept as they are.
    """
    counts: Counter[str] = Counter()
    if not _QUICK.search(text):
        return text, counts
    kept = [a for a in allow if a and a in text]
    if kept:
        # NUL never survives cleaning, so these markers cannot collide with real content.
        for i, a in enumerate(kept):
            text = text.replace(a, f"\x00{i}\x00")
        text, counts = redact(text)
        for i, a in enumerate(kept):
            text = text.replace(f"\x00{i}\x00", a)
        return text, counts
    if "@" in text:
        text = _EMAIL.sub(lambda m: _count(counts, "email"), text)
    text = _sub(_ID_NUMBER, "id_number", _valid_id, counts)(text)
    text = _sub(_BANK_CARD, "bank_card", _valid_card, counts)(text)
    text = _sub(_PHONE_INTL, "phone", _valid_intl, counts)(text)
    text = _sub(_PHONE_CN, "phone", None, counts)(text)
    return text, counts


def _count(counts: Counter[str], kind: str) -> str:
    counts[kind] += 1
    return PLACEHOLDERS[kind]
