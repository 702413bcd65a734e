"""Envelope encryption throughput next to a plain copy, measured side by side (medians).

    .venv/bin/python benchmarks/encryption.py [--mib 256] [--repeat 5]

Rows, all in memory so the disk does not hide the cipher's cost:
  plain copy      bytearray(...) of the buffer in 1 MiB chunks (what moving the data costs at all)
  plain codec     PlainCodec decode of a stream (the default, unencrypted read path)
  encode          EnvelopeCodec encode (AES-256-GCM, 1 MiB chunks; one key record written)
  decode          EnvelopeCodec decode (authenticate + decrypt every chunk)
  store read      BlobStore.read_bytes of an encrypted blob on a local folder (adds sha256 + disk)
  store read pl.  the same for a plaintext blob
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import tempfile
from pathlib import Path

from bench_artifacts import timed  # the same median-of-runs timer as the artifact benchmark

from onebox.security.envelope import EnvelopeCodec, KeyStore
from onebox.security.keys import Keyring, LocalMasterKey
from onebox.store.backends import LocalBackend
from onebox.store.blobs import BlobStore
from onebox.store.codec import PlainCodec

MIB = 1024 * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    data = os.urandom(args.mib * MIB)
    digest = hashlib.sha256(data).hexdigest()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        codec = EnvelopeCodec(Keyring(LocalMasterKey(os.urandom(32))), KeyStore(LocalBackend(root / "keys")))
        chunks = [data[i : i + MIB] for i in range(0, len(data), MIB)]
        sealed = b"".join(codec.encode(digest, chunks))

        def drain(it: object) -> None:
            for _ in it:  # type: ignore[attr-defined]
                pass

        rows: list[tuple[str, float]] = [
            ("plain copy", timed(lambda: [bytearray(c) for c in chunks], args.repeat)),
            (
                "plain codec",
                timed(lambda: drain(PlainCodec().decode(digest, io.BytesIO(data))), args.repeat),
            ),
            ("encode", timed(lambda: drain(codec.encode(digest, chunks)), args.repeat)),
            ("decode", timed(lambda: drain(codec.decode(digest, io.BytesIO(sealed))), args.repeat)),
        ]
        enc_store = BlobStore(LocalBackend(root / "enc"), root / "co", codec)
        plain_store = BlobStore(LocalBackend(root / "plain"), root / "co2")
        enc_store.put_bytes(data)
        plain_store.put_bytes(data)
        rows.append(("store read (encrypted)", timed(lambda: enc_store.read_bytes(digest), args.repeat)))
        rows.append(("store read (plaintext)", timed(lambda: plain_store.read_bytes(digest), args.repeat)))
    print(f"{args.mib} MiB, median of {args.repeat} runs, 1 MiB chunks")
    print(f"{'operation':<26}{'seconds':>10}{'MB/s':>10}")
    for name, secs in rows:
        print(f"{name:<26}{secs:>10.3f}{args.mib * MIB / secs / 1e6:>10.0f}")


if __name__ == "__main__":
    main()
