"""GPT-2's byte-level alphabet, for the tiny byte tokenizers that tests build by hand."""

from __future__ import annotations


def bytes_to_unicode() -> list[str]:
    """GPT-2's byte-to-printable-character table, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]
