"""TLS for ``onebox serve``: check certificate, key and client CA up front, and turn them into
uvicorn's options.

uvicorn reports a bad certificate with an OpenSSL traceback after the app has started; checking
here first gives one clear error naming the option and the fix, and nothing starts.
"""

from __future__ import annotations

import ipaddress
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from onebox.errors import ErrorList, InvalidInputError, Problem


def _readable(path: Path | None, option: str, errs: ErrorList) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        errs.add(option, f"{p} does not exist or is not a file", "give the path of a PEM file")
        return None
    try:
        p.read_bytes()
    except OSError as exc:
        errs.add(option, f"{p} cannot be read ({exc.strerror})", "check the file's permissions")
        return None
    return p


def tls_options(
    cert: Path | None, key: Path | None, client_ca: Path | None = None, *, now: datetime | None = None
) -> tuple[dict[str, Any], list[str]]:
    """uvicorn keyword arguments for TLS (empty without a certificate) and warnings to print.

    Raises ``InvalidInputError`` naming ``--tls-cert``/``--tls-key``/``--tls-client-ca`` when a
    file is missing or unreadable, is not PEM, the key does not belong to the certificate, or a
    client CA is given without a certificate."""
    errs = ErrorList()
    if cert is None and key is None:
        if client_ca is not None:
            errs.add("--tls-client-ca", "needs --tls-cert and --tls-key", "mutual TLS is TLS first")
        errs.raise_if_any("invalid TLS options", InvalidInputError)
        return {}, []
    if cert is None or key is None:
        missing = "--tls-key" if key is None else "--tls-cert"
        errs.add(missing, "is required with " + ("--tls-cert" if key is None else "--tls-key"),
                 "give both the certificate and its private key")  # fmt: skip
    cert_p = _readable(cert, "--tls-cert", errs)
    key_p = _readable(key, "--tls-key", errs)
    ca_p = _readable(client_ca, "--tls-client-ca", errs)
    errs.raise_if_any("invalid TLS options", InvalidInputError)
    assert cert_p is not None and key_p is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert_p, key_p, password=_no_password)
    except ssl.SSLError as exc:
        raise InvalidInputError(
            "invalid TLS certificate or key", problems=[_ssl_problem(exc, cert_p, key_p)]
        ) from exc
    except OSError as exc:  # raised by the password callback for an encrypted key
        raise InvalidInputError(
            "invalid TLS key",
            problems=[Problem("--tls-key", f"{key_p} is encrypted", "give an unencrypted key (mode 0600)")],
        ) from exc
    if ca_p is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca_p))
        except ssl.SSLError as exc:
            raise InvalidInputError(
                "invalid client CA",
                problems=[Problem("--tls-client-ca", f"{ca_p} holds no PEM CA certificate ({exc.reason})")],
            ) from exc
    warnings = _expiry_warnings(cert_p, now or datetime.now(UTC))
    options: dict[str, Any] = {"ssl_certfile": str(cert_p), "ssl_keyfile": str(key_p)}
    if ca_p is not None:
        options.update(ssl_ca_certs=str(ca_p), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options, warnings


def _no_password() -> str:
    raise OSError("the key is encrypted")


def _ssl_problem(exc: ssl.SSLError, cert: Path, key: Path) -> Problem:
    reason = (exc.reason or str(exc)).upper()
    if "KEY_VALUES_MISMATCH" in reason or "X509_CHECK_PRIVATE_KEY" in reason:
        return Problem(
            "--tls-key",
            f"{key} is not the private key of {cert}",
            "give the key the certificate was made for",
        )
    if "PEM" in reason or "NO_START_LINE" in reason or "CERT" in reason:
        return Problem(
            "--tls-cert", f"{cert} holds no PEM certificate ({exc.reason})", "give a PEM certificate file"
        )
    return Problem("--tls-key", f"{key} holds no usable private key ({exc.reason})", "give a PEM private key")


def _expiry_warnings(cert: Path, now: datetime) -> list[str]:
    try:
        from cryptography import x509

        c = x509.load_pem_x509_certificate(cert.read_bytes())
    except Exception:  # load_cert_chain accepted it; a parse quirk here must not stop the server
        return []
    out = []
    if c.not_valid_after_utc < now:
        out.append(f"the TLS certificate expired on {c.not_valid_after_utc:%Y-%m-%d}; clients will refuse it")
    elif (c.not_valid_after_utc - now).days < 14:
        out.append(f"the TLS certificate expires on {c.not_valid_after_utc:%Y-%m-%d}; renew it")
    if c.not_valid_before_utc > now:
        out.append(f"the TLS certificate is valid only from {c.not_valid_before_utc:%Y-%m-%d}")
    return out


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
