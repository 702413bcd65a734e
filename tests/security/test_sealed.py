"""Sealed export from one onebox home ("host A") to another ("host B"), each with its own keys and
an injected machine fingerprint and clock: works on the target and only there and then; a wrong
host, an expired or edited or forged licence, an untrusted issuer and a tampered package are all
refused with nothing registered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from onebox.config import Settings
from onebox.errors import InvalidInputError, NotFoundError, PolicyDeniedError, TamperedError
from onebox.security import fingerprint
from onebox.security import licence as lic
from onebox.services import models, policies, sealed
from onebox.services.context import App, open_app
from onebox.store.tables import AuditRecord

FP_A = "a" * 32
FP_B = "b" * 32
NOW = datetime.now(UTC).replace(microsecond=0)  # loads check the real clock; imports take it injected
EXPIRES = (NOW + timedelta(days=30)).date().isoformat()  # usable through that whole UTC day
END = datetime.combine(NOW.date() + timedelta(days=31), datetime.min.time(), tzinfo=UTC)


@pytest.fixture
def host_a(tmp_path: Path, tiny_model_dir: Path) -> Iterator[App]:
    a = open_app(Settings(home=tmp_path / "host-a"))
    models.register(a, "tiny", str(tiny_model_dir))
    yield a
    a.close()


@pytest.fixture
def host_b(tmp_path: Path) -> Iterator[App]:
    b = open_app(Settings(home=tmp_path / "host-b"))
    yield b
    b.close()


@pytest.fixture
def exported(host_a: App, host_b: App, tmp_path: Path) -> dict:
    return sealed.export_sealed(
        host_a,
        "tiny:1",
        to_host=sealed.host_id(host_b, FP_B),
        expires=EXPIRES,
        dest_dir=tmp_path / "out",
        now=NOW,
        fingerprint=FP_A,
    )


def _issuer(app: App) -> str:
    return sealed.host_info(app)["issuer_key"]


def _import(b: App, exp: dict, **kw: object) -> dict:
    args = {"now": NOW, "fingerprint": FP_B, **kw}
    return sealed.import_sealed(b, Path(exp["package"]), **args)  # type: ignore[arg-type]


def _nothing_registered(b: App) -> None:
    assert [m for m in models.list_models(b) if m["name"] == "tiny"] == []


def test_import_on_the_target_host(host_a: App, host_b: App, exported: dict, tiny_model_dir: Path) -> None:
    assert Path(exported["package"]).name == "tiny-v1.obxpkg"
    assert Path(exported["licence"]).name == "tiny-v1.licence.json"
    assert exported["expires"] == END.isoformat()
    # the package hides the weights
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    assert weights[-4096:] not in Path(exported["package"]).read_bytes()
    sealed.trust(host_b, _issuer(host_a), name="vendor A")
    out = _import(host_b, exported)
    assert out["ref"] == "tiny:1" and out["created"] and out["expires"] == END.isoformat()
    # the imported version carries the licence as a use policy
    pol = policies.show_policy(host_b, "model", "tiny:1")["policy"]
    assert pol["rules"]["hosts"] == [FP_B] and pol["rules"]["valid_until"].startswith(END.date().isoformat())
    assert pol["created_by"] == f"licence:{out['licence_id']}"
    shown = models.show(host_b, "tiny:1")
    assert shown["config"]["sealed"]["source"] == "tiny:1" and shown["license"] == "mit"
    assert shown["checksum"] == models.show(host_a, "tiny:1")["checksum"]  # the same files

    # usable on this host until the date, nowhere and never else
    def check(now: datetime, host: str) -> dict:
        return policies.check(host_b, "model", "tiny:1", "model.load", now=now, fingerprint=host)

    assert check(END - timedelta(seconds=1), FP_B)["allowed"]
    assert check(END, FP_B)["condition"] == "valid_until"
    assert check(NOW, FP_A)["condition"] == "host"
    with fingerprint.pinned(FP_B):
        assert (models.checkout(host_b, "tiny:1") / "model.safetensors").read_bytes() == weights
    with fingerprint.pinned(FP_A), pytest.raises(PolicyDeniedError, match="host"):
        models.checkout(host_b, "tiny:1")
    # importing the same package again renews nothing new but keeps the licence policy
    again = _import(host_b, exported)
    assert not again["created"] and again["licence_renewed"]
    assert host_a.audit_log.verify().ok and host_b.audit_log.verify().ok
    with host_a.db.session() as s:
        assert s.scalar(select(AuditRecord).where(AuditRecord.action == "licence.issued")) is not None


def test_wrong_host_is_refused(host_a: App, host_b: App, exported: dict) -> None:
    sealed.trust(host_b, _issuer(host_a))
    with pytest.raises(PolicyDeniedError) as err:
        _import(host_b, exported, fingerprint=FP_A)  # B's home copied to machine A
    assert err.value.details["condition"] == "host" and FP_A in err.value.message
    _nothing_registered(host_b)
    # another home on the right machine: its host key differs
    sealed.trust(host_a, _issuer(host_a))
    with pytest.raises(PolicyDeniedError, match="another onebox home") as err:
        sealed.import_sealed(host_a, Path(exported["package"]), name="copy", now=NOW, fingerprint=FP_B)
    assert err.value.details["condition"] == "host"
    with host_b.db.session() as s:
        denied = s.scalars(select(AuditRecord).where(AuditRecord.action == "policy.denied")).all()
        assert [d.details["condition"] for d in denied] == ["host"]
    assert host_b.audit_log.verify().ok


def test_expired_licence_is_refused(host_a: App, host_b: App, exported: dict) -> None:
    sealed.trust(host_b, _issuer(host_a))
    with pytest.raises(PolicyDeniedError) as err:
        _import(host_b, exported, now=END)
    assert err.value.details["condition"] == "valid_until" and "renewed" in err.value.message
    _nothing_registered(host_b)


def test_untrusted_issuer_is_refused_unless_trusted_explicitly(
    host_a: App, host_b: App, exported: dict
) -> None:
    with pytest.raises(PolicyDeniedError) as err:
        _import(host_b, exported)
    assert err.value.details["condition"] == "issuer" and "onebox host trust" in err.value.message
    _nothing_registered(host_b)
    other = lic.issuer_id(lic.Ed25519PrivateKey.generate())
    with pytest.raises(PolicyDeniedError, match="does not trust"):
        _import(host_b, exported, trust_issuer=other)
    assert _import(host_b, exported, trust_issuer=_issuer(host_a))["created"]
    assert sealed.trusted(host_b) == []  # a one-off, not remembered


def test_flipped_byte_in_package_is_tampering(host_a: App, host_b: App, exported: dict) -> None:
    sealed.trust(host_b, _issuer(host_a))
    pkg = Path(exported["package"])
    data = bytearray(pkg.read_bytes())
    data[len(data) // 2] ^= 0x01
    pkg.write_bytes(bytes(data))
    with pytest.raises(TamperedError, match="does not match its licence"):
        _import(host_b, exported)
    _nothing_registered(host_b)


def test_every_chunk_is_authenticated(host_a: App, host_b: App, exported: dict, tmp_path: Path) -> None:
    """Beyond the licence's digest: a flipped, truncated or extended package fails on its own."""
    body = json.loads(Path(exported["licence"]).read_text())["licence"]
    key = lic.unwrap_key(body["key"], sealed.host_keys(host_b).exchange, sealed._wrap_context(body))
    pkg = Path(exported["package"])
    good = pkg.read_bytes()
    pid = body["package"]["package_id"]
    assert len(sealed._open_package(pkg, key, pid, tmp_path / "ok", lambda *_: None)) >= 2
    for n, (bad, match) in enumerate(
        [
            (good[:-1] + bytes([good[-1] ^ 1]), "fails authentication"),
            (good[:-20], "truncated"),
            (good + b"\0", "after its last chunk"),
            (good[:100] + bytes([good[100] ^ 1]) + good[101:], "altered|header"),
        ]
    ):
        pkg.write_bytes(bad)
        with pytest.raises(TamperedError, match=match):
            sealed._open_package(pkg, key, pid, tmp_path / f"bad{n}", lambda *_: None)


def test_edited_licence_is_refused(host_a: App, host_b: App, exported: dict) -> None:
    sealed.trust(host_b, _issuer(host_a))
    path = Path(exported["licence"])
    original = path.read_text()
    doc = json.loads(original)
    doc["licence"]["expires"] = "2099-01-01T00:00:00+00:00"
    path.write_text(json.dumps(doc))
    with pytest.raises(TamperedError, match="signature does not verify"):
        _import(host_b, exported)
    # a forger re-signs the edited licence with a key of their own: the issuer is then unknown
    forger = lic.Ed25519PrivateKey.generate()
    doc["licence"]["issuer"] = lic.issuer_id(forger)
    path.write_text(json.dumps(lic.sign(doc["licence"], forger)))
    with pytest.raises(PolicyDeniedError) as err:
        _import(host_b, exported)
    assert err.value.details["condition"] == "issuer"
    path.write_text("not json")
    with pytest.raises(TamperedError):
        _import(host_b, exported)
    _nothing_registered(host_b)
    path.write_text(original)
    assert _import(host_b, exported)["created"]


def test_export_validates_input_and_policy(host_a: App, host_b: App, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as err:
        sealed.export_sealed(
            host_a, "tiny:1", to_host="nope", expires="2020-01-01", dest_dir=tmp_path, now=NOW
        )
    assert {p.field for p in err.value.problems} == {"to_host", "expires"}
    target = sealed.host_id(host_b, FP_B)
    with pytest.raises(NotFoundError):
        sealed.export_sealed(host_a, "ghost:1", to_host=target, expires=EXPIRES, dest_dir=tmp_path, now=NOW)
    soon = (NOW + timedelta(days=10)).date().isoformat()
    policies.set_policy(host_a, "model", "tiny:1", {"hosts": [FP_A], "valid_until": soon})
    with pytest.raises(PolicyDeniedError, match="host"):
        sealed.export_sealed(
            host_a,
            "tiny:1",
            to_host=target,
            expires=soon,
            dest_dir=tmp_path,
            now=NOW,
            fingerprint=FP_B,
        )
    with pytest.raises(InvalidInputError, match="may only be used until"):
        sealed.export_sealed(
            host_a, "tiny:1", to_host=target, expires=EXPIRES, dest_dir=tmp_path, now=NOW, fingerprint=FP_A
        )
    assert list(tmp_path.glob("*.obxpkg")) == []


def test_trust_list(host_a: App, host_b: App) -> None:
    key = _issuer(host_a)
    sealed.trust(host_b, key, name="A")
    sealed.trust(host_b, key, name="A again")  # idempotent
    assert [(r["key"], r["name"]) for r in sealed.trusted(host_b)] == [(key, "A again")]
    with pytest.raises(InvalidInputError):
        sealed.trust(host_b, "ed25519:short")
    sealed.untrust(host_b, key)
    assert sealed.trusted(host_b) == []
    with pytest.raises(NotFoundError):
        sealed.untrust(host_b, key)
    info = sealed.host_info(host_b)
    assert info["host_id"].startswith(f"obxhost1.{fingerprint.current()}.")
    assert sealed.parse_host_id(info["host_id"])[0] == fingerprint.current()
    assert (host_b.settings.secrets_dir / sealed.HOST_KEY_FILE).stat().st_mode & 0o077 == 0
