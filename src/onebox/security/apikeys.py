"""API key format: ``obx_<prefix>_<secret>``.

The prefix (12 hex chars) is stored in clear to find the key and show it in lists; the whole key
is stored only as a SHA-256 hash (keys are 256-bit random, so a fast hash is enough: there is
nothing to brute-force). Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

KEY_RE = re.compile(r"^obx_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


def new_key() -> tuple[str, str, str]:
    """A fresh key: (full key shown once, prefix, hash to store)."""
    prefix = secrets.token_hex(6)
    key = f"obx_{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, hash_key(key)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_prefix(key: str) -> str | None:
    """The prefix of a well-formed key, None for anything else."""
    m = KEY_RE.match(key)
    return m.group(1) if m else None


def matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key), stored_hash)


def new_token() -> tuple[str, str]:
    """A console session token: (cookie value, hash to store)."""
    token = secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
