"""Sealed export: a model version encrypted for one host, usable there until a date.

``export_sealed`` writes two files:

- ``<name>-v<N>.obxpkg``: the version's files encrypted with AES-256-GCM under a fresh random
  package key. Layout: magic, a small public JSON header, the encrypted file list, then every
  file as a chunked stream of :mod:`onebox.security.streams` (1 MiB chunks bound to the header,
  the file's index, the chunk index and a last-chunk flag), so a flipped, swapped, dropped or
  appended chunk fails to open.
- ``<name>-v<N>.licence.json``: what the package is (its SHA-256, the model's metadata), for whom
  (the target's machine fingerprint and X25519 host key), until when, and the package key wrapped
  to that host key — signed with the exporting box's Ed25519 key (:mod:`onebox.security.licence`).

Each onebox home holds, in ``secrets_dir`` (0600), an X25519 *host key* (to receive packages) and
an Ed25519 *signing key* (to issue licences); ``onebox host fingerprint`` prints the host id
(``obxhost1.<machine fingerprint>.<host public key>``) and the issuer key to give to others.

``import_sealed`` checks, before anything is stored: the signature, that the issuer is trusted,
that this is the target host (machine fingerprint and host key), the expiry, and the package
digest; then decrypts with every chunk authenticated, checks each file's SHA-256 and the model's
manifest digest, and registers the version together with a use policy (``hosts=[this machine]``,
``valid_until=expires``) in one transaction — so after import the ordinary policy machinery keeps
enforcing the licence on every deploy, load, train and download.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from onebox.errors import (
    InvalidInputError,
    NotFoundError,
    OneboxError,
    PolicyDeniedError,
    Problem,
    TamperedError,
)
from onebox.fsutil import atomic_write_json, atomic_write_text
from onebox.progress import ProgressFn, null_progress
from onebox.security import fingerprint as machine
from onebox.security import licence as lic
from onebox.security.policy import HOST_ID_PREFIX, PolicyRules, parse_instant
from onebox.security.secrets import load_or_create
from onebox.security.streams import TAG_BYTES, aead, nonce, open_chunks, seal_chunks
from onebox.services import encryption, models, policies
from onebox.services.context import App
from onebox.services.projects import get_project
from onebox.store.blobs import Manifest, ManifestEntry

MAGIC = b"OBXPKG\x00\x02"
PACKAGE_FORMAT = "onebox-sealed/2"
CHUNK = 1 << 20
HOST_KEY_FILE = "host-x25519.key"
SIGNING_KEY_FILE = "licence-ed25519.key"
TRUST_FILE = "trusted-issuers.json"
IMPORT_ACTION = "model.import_sealed"


# -- this box's keys and trusted issuers ---------------------------------------------------------


@dataclass(frozen=True)
class HostKeys:
    exchange: X25519PrivateKey
    """Receives package keys wrapped to this home."""
    signing: Ed25519PrivateKey
    """Signs the licences this home issues."""


def host_keys(app: App) -> HostKeys:
    d = app.settings.secrets_dir
    return HostKeys(
        X25519PrivateKey.from_private_bytes(load_or_create(d / HOST_KEY_FILE)),
        Ed25519PrivateKey.from_private_bytes(load_or_create(d / SIGNING_KEY_FILE)),
    )


def host_id(app: App, fingerprint: str | None = None) -> str:
    """What an exporter needs to seal a package for this home on this machine."""
    pub = lic.raw_public(host_keys(app).exchange.public_key())
    return f"{HOST_ID_PREFIX}{fingerprint or machine.current()}.{lic.b64e(pub)}"


def parse_host_id(text: str, field: str = "to_host") -> tuple[str, bytes]:
    """(machine fingerprint, X25519 public key) from a host id; InvalidInputError otherwise."""
    parts = text.strip().split(".")
    try:
        if len(parts) != 3 or f"{parts[0]}." != HOST_ID_PREFIX or not machine.is_fingerprint(parts[1]):
            raise ValueError
        key = lic.b64d(parts[2])
        if len(key) != 32:
            raise ValueError
    except ValueError:
        raise InvalidInputError(
            "invalid host id",
            problems=[
                Problem(
                    field,
                    f"{text[:80]!r} is not a host id ({HOST_ID_PREFIX}<fingerprint>.<key>)",
                    "run `onebox host fingerprint` on the target machine and copy its host id",
                )
            ],
        ) from None
    return parts[1], key


def host_info(app: App, fingerprint: str | None = None) -> dict[str, Any]:
    details = machine.details()
    keys = host_keys(app)
    return {
        "host_id": host_id(app, fingerprint),
        "machine_fingerprint": fingerprint or details.value,
        "fingerprint_sources": list(details.sources) if fingerprint is None else ["injected"],
        "issuer_key": lic.issuer_id(keys.signing),
    }


def _trust_path(app: App) -> Path:
    return app.settings.secrets_dir / TRUST_FILE


def trusted(app: App) -> list[dict[str, Any]]:
    path = _trust_path(app)
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TamperedError(f"{path} is not valid JSON; restore it or remove it and trust again") from exc
    return [r for r in rows if isinstance(r, dict) and "key" in r]


def _write_trusted(app: App, rows: list[dict[str, Any]]) -> None:
    path = _trust_path(app)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_json(path, rows, indent=2)  # mkstemp underneath: the file is 0600


def trust(app: App, key: str, name: str = "") -> dict[str, Any]:
    """Accept licences signed by ``key`` (``ed25519:...``) from now on; audited."""
    app.actor().require("admin", "trust licence issuers")
    lic.parse_issuer(key)
    key = key.strip()
    rows = [r for r in trusted(app) if r["key"] != key]
    row = {"key": key, "name": name, "added_at": datetime.now(UTC).isoformat(timespec="seconds")}
    _write_trusted(app, [*rows, row])
    app.audit("host.trust", resource_type="issuer", resource_id=key[:64], name=name)
    return row


def untrust(app: App, key: str) -> dict[str, Any]:
    app.actor().require("admin", "distrust licence issuers")
    rows = trusted(app)
    kept = [r for r in rows if r["key"] != key.strip()]
    if len(kept) == len(rows):
        raise NotFoundError(f"{key[:60]!r} is not a trusted issuer; see `onebox host trusted`")
    _write_trusted(app, kept)
    app.audit("host.untrust", resource_type="issuer", resource_id=key.strip()[:64])
    return {"key": key.strip(), "removed": True}


# -- the package format ---------------------------------------------------------------------------


_LISTING_PREFIX = bytes(8)
"""Nonce prefix of the file list; file ``i`` uses ``i + 1`` (8 bytes), so no two chunks of a
package share a nonce under its one key."""


def _file_prefix(index: int) -> bytes:
    return (index + 1).to_bytes(8, "big")


def _file_bound(header: bytes, index: int) -> bytes:
    """What each chunk of file ``index`` is bound to: the package's header (its id) and the index."""
    return MAGIC + header + struct.pack(">I", index)


def _sealed_size(size: int) -> int:
    return size + max(1, -(-size // CHUNK)) * TAG_BYTES


class _FileSpan:
    """The sealed bytes of one file inside the package stream; short means truncated."""

    def __init__(self, fh: BinaryIO, size: int, what: str) -> None:
        self.fh, self.left, self.what = fh, size, what

    def read(self, n: int) -> bytes:
        n = min(n, self.left)
        data = self.fh.read(n)
        if len(data) != n:
            raise TamperedError(f"the package is truncated ({self.what} is incomplete)")
        self.left -= n
        return data


def _write_package(
    read: Callable[[str], Iterable[bytes]],
    manifest: Manifest,
    out: Path,
    key: bytes,
    package_id: str,
    progress: ProgressFn,
) -> tuple[str, int]:
    """Encrypt the manifest's files, streamed as verified plaintext by ``read(digest)``, into
    ``out``; returns (sha256, size) of the package. No plaintext copy is written anywhere."""
    aes = aead(key)
    header = lic.canonical(
        {"format": PACKAGE_FORMAT, "package_id": package_id, "cipher": "AES-256-GCM", "chunk_size": CHUNK}
    )
    listing = lic.canonical(
        {"files": [{"path": f.path, "size": f.size, "sha256": f.digest} for f in manifest.files]}
    )
    sealed_listing = aes.encrypt(nonce(_LISTING_PREFIX, 0), listing, MAGIC + header)
    h = hashlib.sha256()
    done, size = 0, 0
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:

            def emit(data: bytes) -> None:
                nonlocal size
                h.update(data)
                fh.write(data)
                size += len(data)

            emit(MAGIC + struct.pack(">I", len(header)) + header)
            emit(struct.pack(">I", len(sealed_listing)) + sealed_listing)
            for i, entry in enumerate(manifest.files):
                plain = read(entry.digest)
                for sealed_chunk in seal_chunks(aes, _file_prefix(i), _file_bound(header, i), plain, CHUNK):
                    emit(sealed_chunk)
                    done += max(0, len(sealed_chunk) - TAG_BYTES)
                    progress("seal", done, manifest.total_size)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return h.hexdigest(), size


def _read_exact(fh: BinaryIO, n: int, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise TamperedError(f"the package is truncated ({what} is incomplete)")
    return data


def _safe_path(path: Any) -> str:
    p = PurePosixPath(str(path))
    if not str(path) or p.is_absolute() or any(part in ("", ".", "..") for part in p.parts):
        raise TamperedError(f"the package names an unsafe file path {str(path)[:80]!r}")
    return p.as_posix()


def _open_package(
    package: Path, key: bytes, package_id: str, dest: Path, progress: ProgressFn
) -> list[ManifestEntry]:
    """Decrypt into ``dest``, every chunk and file checked; returns the files in package order."""
    aes = aead(key)
    with package.open("rb") as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            raise TamperedError(f"{package.name} is not a sealed onebox package (bad magic bytes)")
        (n,) = struct.unpack(">I", _read_exact(fh, 4, "header"))
        header_bytes = _read_exact(fh, n, "header")
        try:
            header = json.loads(header_bytes)
            chunk_size = int(header["chunk_size"])
            ok = header["format"] == PACKAGE_FORMAT and header["package_id"] == package_id
        except (ValueError, KeyError, TypeError):
            ok, chunk_size = False, 0
        if not ok or chunk_size != CHUNK:
            raise TamperedError("the package header does not match its licence")
        (n,) = struct.unpack(">I", _read_exact(fh, 4, "file list"))
        try:
            listing = json.loads(
                aes.decrypt(nonce(_LISTING_PREFIX, 0), _read_exact(fh, n, "file list"), MAGIC + header_bytes)
            )
            files = [(_safe_path(f["path"]), int(f["size"]), str(f["sha256"])) for f in listing["files"]]
        except InvalidTag:
            raise TamperedError("the package's file list fails authentication: it was altered") from None
        total = sum(size for _, size, _ in files)
        done = 0
        for i, (rel, size, digest) in enumerate(files):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()

            def failure(j: int, why: str, rel: str = rel) -> TamperedError:
                return TamperedError(f"chunk {j} of {rel} in the package fails authentication: {why}")

            span = _FileSpan(fh, _sealed_size(size), f"file {rel}")
            with target.open("wb") as out:
                for plain in open_chunks(
                    aes, _file_prefix(i), _file_bound(header_bytes, i), span, CHUNK, failure
                ):
                    h.update(plain)
                    out.write(plain)
                    done += len(plain)
                    progress("unseal", done, total)
            if h.hexdigest() != digest:
                raise TamperedError(f"{rel} in the package does not match its recorded SHA-256")
        if fh.read(1):
            raise TamperedError("the package has bytes after its last chunk: it was altered")
    return [ManifestEntry(rel, digest, size) for rel, size, digest in files]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _wrap_context(body: dict[str, Any]) -> bytes:
    """What the wrapped key is bound to: this licence, this package, this host key."""
    return lic.canonical(
        [
            body["licence_id"],
            body["package"]["package_id"],
            body["package"]["sha256"],
            body["host"]["public_key"],
        ]
    )


# -- export ----------------------------------------------------------------------------------------


def export_sealed(
    app: App,
    ref: str,
    *,
    to_host: str,
    expires: str | datetime,
    dest_dir: Path,
    now: datetime | None = None,
    fingerprint: str | None = None,
    progress: ProgressFn = null_progress,
) -> dict[str, Any]:
    """Seal version ``ref`` for the host ``to_host`` (its host id) until ``expires``."""
    problems: list[Problem] = []
    target_fp, target_key = "", b""
    try:
        target_fp, target_key = parse_host_id(to_host)
    except InvalidInputError as exc:
        problems += exc.problems
    when = now or datetime.now(UTC)
    until: datetime | None = None
    try:
        until = parse_instant(expires, end_of_day=True)
        if until <= when:
            problems.append(Problem("expires", f"{until.isoformat()} is already past", "give a future date"))
    except ValueError as exc:
        problems.append(Problem("expires", str(exc), "write 2026-12-31 or 2026-12-31T18:00:00+08:00"))
    dest_dir = Path(dest_dir).expanduser()
    if dest_dir.exists() and not dest_dir.is_dir():
        problems.append(Problem("to", f"{dest_dir} is not a folder"))
    if problems:
        raise InvalidInputError("cannot seal the export", problems=problems)
    assert until is not None
    with app.db.session() as s:
        mv = models.resolve(s, get_project(s, app.settings.project).id, ref)
        model = mv.model
        label = f"{model.name}:{mv.version}"
        if mv.format == "lora":
            raise InvalidInputError(
                f"{label} is a LoRA adapter; a sealed package must be usable on its own",
                problems=[
                    Problem("ref", "adapters need their base", "export a merged version (train --merge)")
                ],
            )
        if mv.manifest_digest is None:
            raise NotFoundError(f"{label} has no stored files")
        meta = {
            "name": model.name,
            "version": mv.version,
            "kind": model.kind,
            "description": model.description,
            "format": mv.format,
            "architecture": mv.architecture,
            "parameters": mv.parameters,
            "license": mv.license,
            "size_bytes": mv.size_bytes,
            "manifest_digest": mv.manifest_digest,
        }
        own = policies.rules_for(s, "model_version", mv.id)
        version_id = mv.id
    policies.enforce(
        app, "model_version", version_id, "model.export", audit_always=True, now=when, fingerprint=fingerprint
    )
    if own is not None and own.valid_until is not None and until > own.valid_until:
        raise InvalidInputError(
            f"{label} may only be used until {own.valid_until.isoformat()}",
            problems=[
                Problem(
                    "expires", "is later than the version's own use policy allows", "give an earlier date"
                )
            ],
        )
    manifest = app.blobs.read_manifest(mv.manifest_digest)
    dest_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{model.name}-v{mv.version}"
    pkg_path, lic_path = dest_dir / f"{stem}.obxpkg", dest_dir / f"{stem}.licence.json"
    package_key = os.urandom(32)  # AES-256
    package_id = secrets.token_hex(16)
    digest, size = _write_package(
        app.blobs.read_chunks, manifest, pkg_path, package_key, package_id, progress
    )
    keys = host_keys(app)
    body: dict[str, Any] = {
        "format": lic.FORMAT,
        "licence_id": f"lic_{secrets.token_hex(8)}",
        "issued_at": when.astimezone(UTC).isoformat(timespec="seconds"),
        "issuer": lic.issuer_id(keys.signing),
        "expires": until.astimezone(UTC).isoformat(timespec="seconds"),
        "host": {"machine": target_fp, "public_key": lic.b64e(target_key)},
        "model": meta,
        "package": {"file": pkg_path.name, "package_id": package_id, "sha256": digest, "size": size},
    }
    body["key"] = lic.wrap_key(package_key, target_key, _wrap_context(body))
    doc = lic.sign(body, keys.signing)
    atomic_write_text(lic_path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    app.audit(
        "licence.issued",
        resource_type="model_version",
        resource_id=version_id,
        resource=label,
        licence_id=body["licence_id"],
        host=target_fp,
        expires=body["expires"],
        package_sha256=digest,
    )
    return {
        "ref": label,
        "package": str(pkg_path),
        "licence": str(lic_path),
        "licence_id": body["licence_id"],
        "to_host": to_host.strip(),
        "expires": body["expires"],
        "issuer": body["issuer"],
        "size_bytes": size,
    }


# -- import ----------------------------------------------------------------------------------------


def _deny(app: App, condition: str, message: str, **details: Any) -> PolicyDeniedError:
    app.audit(
        "policy.denied",
        outcome="denied",
        attempted=IMPORT_ACTION,
        condition=condition,
        reason=message,
        **details,
    )
    return PolicyDeniedError(message, condition=condition, action=IMPORT_ACTION, **details)


def default_licence_path(package: Path) -> Path:
    return package.with_name(package.name.removesuffix(".obxpkg") + ".licence.json")


def import_sealed(
    app: App,
    package: Path,
    licence: Path | None = None,
    *,
    name: str | None = None,
    trust_issuer: str | None = None,
    now: datetime | None = None,
    fingerprint: str | None = None,
    progress: ProgressFn = null_progress,
) -> dict[str, Any]:
    """Verify a sealed package and its licence for this host and register it with a use policy
    that keeps the licence's terms; nothing is stored unless every check passes."""
    app.actor().require("write", "import models")
    package = Path(package).expanduser()
    licence = Path(licence).expanduser() if licence else default_licence_path(package)
    problems = [
        Problem(field, f"{path} does not exist", fix)
        for field, path, fix in (
            ("package", package, "give the .obxpkg file"),
            ("licence", licence, "give the .licence.json file that came with the package (--licence)"),
        )
        if not path.is_file()
    ]
    if problems:
        raise InvalidInputError("cannot import the sealed package", problems=problems)
    when = now or datetime.now(UTC)
    here = fingerprint or machine.current()
    try:
        doc = json.loads(licence.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    try:
        body = lic.verify(doc)
        issuer, lid = body["issuer"], str(body["licence_id"])
        meta, pkg, host = dict(body["model"]), dict(body["package"]), dict(body["host"])
        expires = parse_instant(str(body["expires"]))
    except TamperedError as exc:
        app.audit(IMPORT_ACTION, outcome="failed", reason=exc.message, licence=str(licence))
        raise
    except (KeyError, TypeError, ValueError):
        app.audit(IMPORT_ACTION, outcome="failed", reason="malformed licence", licence=str(licence))
        raise TamperedError("the licence is signed but incomplete; it was not issued by onebox") from None
    ctx = {"licence_id": lid, "issuer": issuer}
    trusted_keys = {r["key"] for r in trusted(app)} | ({trust_issuer.strip()} if trust_issuer else set())
    if issuer not in trusted_keys:
        raise _deny(
            app,
            "issuer",
            f"licence {lid} was issued by {issuer}, which this onebox does not trust; if you know it, "
            f"run `onebox host trust {issuer}` or import with --trust-issuer {issuer}",
            **ctx,
        )
    own_key = lic.b64e(lic.raw_public(host_keys(app).exchange.public_key()))
    if host.get("machine") != here:
        raise _deny(
            app,
            "host",
            f"licence {lid} is for machine {host.get('machine')}, this is {here}; "
            "ask the issuer for a package sealed to this host id (`onebox host fingerprint`)",
            **ctx,
        )
    if host.get("public_key") != own_key:
        raise _deny(
            app,
            "host",
            f"licence {lid} is for another onebox home on this machine (its host key differs); "
            f"import it into the home whose `onebox host fingerprint` was given to the issuer",
            **ctx,
        )
    if when >= expires:
        raise _deny(
            app,
            "valid_until",
            f"licence {lid} expired at {expires.isoformat()}; ask the issuer for a renewed licence",
            **ctx,
        )
    try:
        if _sha256_file(package) != pkg.get("sha256"):
            raise TamperedError(
                f"{package.name} does not match its licence (SHA-256 differs): the package was altered "
                "or belongs to another licence"
            )
        package_key = lic.unwrap_key(body.get("key") or {}, host_keys(app).exchange, _wrap_context(body))
        # Decrypted files wait where plaintext may: private memory when encryption at rest is on.
        staging = Path(tempfile.mkdtemp(dir=encryption.scratch_dir(app), prefix="sealed-"))
        try:
            tree = staging / "model"
            entries = _open_package(package, package_key, str(pkg["package_id"]), tree, progress)
            manifest_digest = hashlib.sha256(Manifest(tuple(entries)).to_json()).hexdigest()
            if manifest_digest != meta.get("manifest_digest"):
                raise TamperedError("the package's files are not the model version its licence names")
            rules = PolicyRules(hosts=[here], valid_until=expires)

            def attach_policy(s: Any, mv: Any) -> None:
                policies.put_rules(s, mv.project_id, "model_version", mv.id, rules, f"licence:{lid}")

            reg = models.register(
                app,
                name or str(meta["name"]),
                str(tree),
                kind=meta.get("kind"),
                license=meta.get("license"),
                description=str(meta.get("description") or ""),
                new_version=True,
                config={
                    "sealed": {
                        "licence_id": lid,
                        "issuer": issuer,
                        "expires": expires.isoformat(),
                        "source": f"{meta['name']}:{meta['version']}",
                    }
                },
                progress=progress,
                on_created=attach_policy,
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OneboxError as exc:
        app.audit(IMPORT_ACTION, outcome="failed", reason=exc.message, **ctx)
        raise
    label = f"{reg.model.name}:{reg.version.version}"
    renewed = False
    if not reg.created:  # identical content is already here: renew its licence policy, if it has one
        with app.db.session() as s:
            existing = policies.policy_row(s, "model_version", reg.version.id)
            if existing is not None and existing.created_by.startswith("licence:"):
                policies.put_rules(
                    s, existing.project_id, "model_version", reg.version.id, rules, f"licence:{lid}"
                )
                renewed = True
    app.audit(
        IMPORT_ACTION,
        resource_type="model_version",
        resource_id=reg.version.id,
        resource=label,
        created=reg.created,
        renewed=renewed,
        expires=expires.isoformat(),
        **ctx,
    )
    return {
        "ref": label,
        "created": reg.created,
        "licence_renewed": renewed,
        "licence_id": lid,
        "issuer": issuer,
        "expires": expires.isoformat(),
        "host": here,
        "source": f"{meta['name']}:{meta['version']}",
    }
