"""TLS on ``onebox serve``: up-front checks with clear errors, the plain-HTTP warning, and real
HTTPS (and mutual TLS) against a running ``onebox serve`` with certificates made in the test."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from onebox.cli.main import main
from onebox.cli.state import get_app, settings
from onebox.errors import InvalidInputError
from onebox.security.tls import is_loopback, tls_options


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path, password: bytes | None = None) -> Path:
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    return path


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    *,
    ca: bool = False,
    days: int = 30,
) -> x509.Certificate:
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return b.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate it signed for 127.0.0.1, and a client certificate."""
    ca_key = _key()
    ca = _cert("onebox test CA", ca_key, ca=True)
    server_key, client_key = _key(), _key()
    return {
        "ca": _write_cert(ca, tmp_path / "ca.pem"),
        "cert": _write_cert(_cert("127.0.0.1", server_key, (ca, ca_key)), tmp_path / "server.pem"),
        "key": _write_key(server_key, tmp_path / "server.key"),
        "client_cert": _write_cert(_cert("client", client_key, (ca, ca_key)), tmp_path / "client.pem"),
        "client_key": _write_key(client_key, tmp_path / "client.key"),
        "other_key": _write_key(_key(), tmp_path / "other.key"),
        "locked_key": _write_key(server_key, tmp_path / "locked.key", password=b"secret"),
    }


def _fields(exc: pytest.ExceptionInfo[InvalidInputError]) -> dict[str, str]:
    return {p.field: p.reason for p in exc.value.problems}


def test_tls_options_checks_everything_up_front(pki: dict[str, Path], tmp_path: Path) -> None:
    assert tls_options(None, None) == ({}, [])
    opts, warnings = tls_options(pki["cert"], pki["key"])
    assert opts == {"ssl_certfile": str(pki["cert"]), "ssl_keyfile": str(pki["key"])} and warnings == []
    opts, _ = tls_options(pki["cert"], pki["key"], pki["ca"])
    assert opts["ssl_ca_certs"] == str(pki["ca"]) and opts["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    with pytest.raises(InvalidInputError) as ei:
        tls_options(pki["cert"], None)
    assert "--tls-key" in _fields(ei)
    with pytest.raises(InvalidInputError) as ei:
        tls_options(tmp_path / "nope.pem", tmp_path / "nope.key")
    assert set(_fields(ei)) == {"--tls-cert", "--tls-key"} and "does not exist" in _fields(ei)["--tls-cert"]
    with pytest.raises(InvalidInputError) as ei:
        tls_options(pki["cert"], pki["other_key"])
    assert "is not the private key of" in _fields(ei)["--tls-key"]
    with pytest.raises(InvalidInputError) as ei:
        tls_options(pki["cert"], pki["locked_key"])
    assert "encrypted" in _fields(ei)["--tls-key"]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(InvalidInputError) as ei:
        tls_options(garbage, pki["key"])
    assert "--tls-cert" in _fields(ei)
    with pytest.raises(InvalidInputError) as ei:
        tls_options(pki["cert"], pki["key"], garbage)
    assert "--tls-client-ca" in _fields(ei)
    with pytest.raises(InvalidInputError) as ei:
        tls_options(None, None, pki["ca"])
    assert "--tls-client-ca" in _fields(ei)
    _, warnings = tls_options(pki["cert"], pki["key"], now=datetime.now(UTC) + timedelta(days=60))
    assert warnings and "expired" in warnings[0]


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.1.2.3")


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("ONEBOX_HOME", str(tmp_path / "home"))
    settings.cache_clear()
    get_app.cache_clear()
    yield tmp_path / "home"
    settings.cache_clear()
    get_app.cache_clear()


def _serve_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, dict[str, Any]]:
    import uvicorn

    import onebox.api.app

    ran: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(kw))
    monkeypatch.setattr(onebox.api.app, "create_app", lambda s: object())
    monkeypatch.setattr(sys, "argv", ["onebox", "serve", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capsys.readouterr()
    return int(exit_.value.code or 0), " ".join((out.out + out.err).split()), ran  # rich wraps lines


def test_serve_warns_on_plain_http_off_loopback_and_refuses_bad_tls(
    cli_home: Path, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, ran = _serve_in_process(monkeypatch, capsys, "--host", "0.0.0.0")
    assert code == 0 and "warning" in out and "unencrypted" in out and "--tls-cert" in out
    assert "ssl_certfile" not in ran
    code, out, ran = _serve_in_process(monkeypatch, capsys)
    assert code == 0 and "warning" not in out  # loopback only: no warning
    code, out, ran = _serve_in_process(
        monkeypatch, capsys, "--host", "0.0.0.0", "--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"])
    )
    assert code == 0 and "warning" not in out and "https://0.0.0.0" in out
    assert ran["ssl_certfile"] == str(pki["cert"])
    code, out, ran = _serve_in_process(
        monkeypatch, capsys, "--tls-cert", str(pki["cert"]), "--tls-key", str(pki["other_key"])
    )
    assert code == 4 and "is not the private key of" in out and ran == {}  # nothing started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(home: Path, *args: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = _free_port()
    log = home.parent / f"serve-{port}.log"
    env = {**os.environ, "ONEBOX_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "onebox", "serve", "--port", str(port), *args],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return proc, port, log


def _wait_https(port: int, proc: subprocess.Popen[bytes], log: Path, **kw: Any) -> httpx.Response:
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"https://127.0.0.1:{port}/health", timeout=2, **kw)
        except httpx.ConnectError:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.mark.slow
def test_serve_https_and_mutual_tls(tmp_path: Path, pki: dict[str, Path]) -> None:
    home = tmp_path / "home"
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    proc, port, log = _start(home, "--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]))
    try:
        r = _wait_https(port, proc, log, verify=ctx)
        assert r.status_code == 200 and r.json()["status"]
        assert r.url.scheme == "https"
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets no answer
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=3)
        with pytest.raises(httpx.ConnectError):  # an unknown CA is refused by the client
            httpx.get(f"https://127.0.0.1:{port}/health", timeout=3, verify=ssl.create_default_context())
    finally:
        _stop(proc)

    args = ["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]), "--tls-client-ca", str(pki["ca"])]
    proc, port, log = _start(home, *args)
    try:
        mctx = ssl.create_default_context(cafile=str(pki["ca"]))
        mctx.load_cert_chain(pki["client_cert"], pki["client_key"])
        r = _wait_https(port, proc, log, verify=mctx)
        assert r.status_code == 200
        with pytest.raises(httpx.HTTPError):  # no client certificate: the handshake fails
            httpx.get(f"https://127.0.0.1:{port}/health", timeout=3, verify=ctx)
    finally:
        _stop(proc)
