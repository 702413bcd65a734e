"""Signed licences for sealed model packages, and the package key wrapped to one host.

A licence is a JSON document ``{"licence": {...}, "signature": "..."}``: the body is signed with
the issuing onebox's Ed25519 key over its *canonical* JSON (sorted keys, no spaces, UTF-8), so
any edit — a later expiry, another host, another package digest — breaks the signature. The body
names the issuer's public key; the importer decides whether it trusts that key.

The package key travels inside the licence, wrapped to the target host's X25519 public key
(ECIES: an ephemeral X25519 key, HKDF-SHA256 over the shared secret, AES-256-GCM), with the
licence id, package digest and host key as associated data: only that host's private key opens
it, and only for this licence and package.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from onebox.errors import InvalidInputError, Problem, TamperedError

FORMAT = "onebox-licence/1"
ISSUER_PREFIX = "ed25519:"
WRAP_ALG = "X25519-HKDF-SHA256-A256GCM"
_HKDF_INFO = b"onebox sealed package key/1"


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not a string")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical(obj: Any) -> bytes:
    """The one byte string a JSON value signs as (floats are not used in licences)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def issuer_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """How an issuer's public key is written: ``ed25519:<base64url>``."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return ISSUER_PREFIX + b64e(raw_public(pub))


def parse_issuer(text: str) -> Ed25519PublicKey:
    text = text.strip()
    try:
        if not text.startswith(ISSUER_PREFIX):
            raise ValueError("missing prefix")
        raw = b64d(text[len(ISSUER_PREFIX) :])
        if len(raw) != 32:
            raise ValueError("wrong length")
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error):
        raise InvalidInputError(
            f"{text[:60]!r} is not an issuer key",
            problems=[
                Problem(
                    "issuer",
                    "expected ed25519:<43 base64url characters>",
                    "copy it from `onebox host fingerprint` on the issuing machine",
                )
            ],
        ) from None


def sign(body: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    return {"licence": body, "signature": b64e(key.sign(canonical(body)))}


def verify(doc: Any) -> dict[str, Any]:
    """The licence body if its signature verifies under the issuer key it names; TamperedError
    otherwise. Whether that issuer is trusted is the caller's decision."""
    if not isinstance(doc, dict) or not isinstance(doc.get("licence"), dict) or "signature" not in doc:
        raise TamperedError("the licence is not a signed onebox licence (no licence body or signature)")
    body = doc["licence"]
    if body.get("format") != FORMAT:
        raise TamperedError(f"the licence format is {body.get('format')!r}, expected {FORMAT!r}")
    try:
        issuer = parse_issuer(str(body.get("issuer", "")))
        issuer.verify(b64d(doc["signature"]), canonical(body))
    except (InvalidInputError, InvalidSignature, ValueError, binascii.Error):
        raise TamperedError(
            "the licence's signature does not verify: it was edited after signing or forged; "
            "ask the issuer for the original licence file"
        ) from None
    return body


def wrap_key(package_key: bytes, host_public: bytes, context: bytes) -> dict[str, str]:
    """Encrypt ``package_key`` so only the holder of ``host_public``'s private key can read it."""
    eph = X25519PrivateKey.generate()
    eph_pub = raw_public(eph.public_key())
    shared = eph.exchange(X25519PublicKey.from_public_bytes(host_public))
    kek = _kek(shared, eph_pub, host_public)
    nonce = os.urandom(12)
    wrapped = AESGCM(kek).encrypt(nonce, package_key, context)
    return {"alg": WRAP_ALG, "ephemeral": b64e(eph_pub), "nonce": b64e(nonce), "wrapped": b64e(wrapped)}


def unwrap_key(wrapped: dict[str, Any], host_private: X25519PrivateKey, context: bytes) -> bytes:
    try:
        if wrapped.get("alg") != WRAP_ALG:
            raise ValueError("algorithm")
        eph_pub = b64d(wrapped["ephemeral"])
        shared = host_private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        kek = _kek(shared, eph_pub, raw_public(host_private.public_key()))
        return AESGCM(kek).decrypt(b64d(wrapped["nonce"]), b64d(wrapped["wrapped"]), context)
    except (InvalidTag, KeyError, ValueError, TypeError, AttributeError, binascii.Error):
        raise TamperedError(
            "the package key in the licence cannot be opened with this host's key: the licence was "
            "issued for another onebox home or altered"
        ) from None


def _kek(shared: bytes, eph_pub: bytes, host_pub: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + host_pub, info=_HKDF_INFO).derive(shared)
