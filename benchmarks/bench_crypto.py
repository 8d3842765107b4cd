"""How much the envelope (framing, two SHA-256s, Python file-like plumbing) costs over raw AES-GCM.

Run: ``.venv/bin/python benchmarks/bench_crypto.py [--stream-mb 1024] [--rewraps 100000]``.
Prints a small table; nothing is written to disk except a temporary key store.

Two baselines: raw AES-GCM alone (what the cipher costs with AES-NI/VAES),
and raw AES-GCM plus the two SHA-256 passes every encryption must make (the
catalog records both hashes): the envelope can at best reach the second.
On this VM most of the remaining gap is glibc handing large freed buffers
back to the kernel and faulting them in again; running the workers with
``MALLOC_TRIM_THRESHOLD_=536870912 MALLOC_MMAP_THRESHOLD_=536870912`` closes
it (compare the two runs).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from imaging_lifecycle import crypto
from imaging_lifecycle.keystore import LocalKeyStore

MB = 1 << 20


class Generated(io.RawIOBase):
    """``size`` bytes made on the fly from one random block (no disk, no big buffer)."""

    def __init__(self, size: int, block: bytes) -> None:
        self.left, self.block, self.i = size, block, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = min(MB if n < 0 else n, self.left, MB)
        off = (self.i * 4093) % 4096
        self.i += 1
        self.left -= n
        return self.block[off:off + n]


class Discard:
    def write(self, b) -> int:  # noqa: ANN001
        return len(b)


def timed(fn, times: int = 1) -> float:  # noqa: ANN001
    """Seconds for ``times`` calls of ``fn``; results are dropped at once (no memory build-up)."""
    t0 = time.perf_counter()
    for _ in range(times):
        fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small-kb", type=int, default=512, help="size of each small object")
    ap.add_argument("--small-count", type=int, default=400, help="how many small objects")
    ap.add_argument("--stream-mb", type=int, default=1024, help="size of the large stream")
    ap.add_argument("--rewraps", type=int, default=100_000, help="DEKs to rewrap under a new KEK version")
    args = ap.parse_args(argv)

    rows: list[tuple[str, str, str]] = []
    aad = crypto.AssociatedData("obj-bench", "archive", 2, crypto.new_key_id())
    ad = aad.encode()
    block = os.urandom(MB + 4096)
    nonce = os.urandom(12)

    # small objects: a fresh DEK per object, as in production
    small = os.urandom(args.small_kb * 1024)
    total = args.small_count * len(small) / MB
    t_raw = timed(lambda: AESGCM(crypto.generate_key()).encrypt(nonce, small, ad), args.small_count)

    def raw_and_hashes() -> None:
        hashlib.sha256(small).digest()
        hashlib.sha256(AESGCM(crypto.generate_key()).encrypt(nonce, small, ad)).digest()

    t_floor = timed(raw_and_hashes, args.small_count)
    t_env = timed(lambda: crypto.encrypt_bytes(small, crypto.generate_key(), aad), args.small_count)
    key = crypto.generate_key()
    blob = crypto.encrypt_bytes(small, key, aad)
    t_dec = timed(lambda: crypto.decrypt_bytes(blob, key, aad), args.small_count)
    rows += [
        (f"raw AES-GCM, {args.small_kb} KB objects", f"{total / t_raw:8.0f} MB/s", "baseline: cipher only"),
        (f"raw AES-GCM + 2 x SHA-256, {args.small_kb} KB", f"{total / t_floor:8.0f} MB/s", "baseline: the floor"),
        (f"encrypt_bytes, {args.small_kb} KB objects", f"{total / t_env:8.0f} MB/s",
         f"{t_floor / t_env:5.0%} of floor"),
        (f"decrypt_bytes, {args.small_kb} KB objects", f"{total / t_dec:8.0f} MB/s", ""),
    ]

    # a large stream through the file-like API, 1 MiB chunks
    size = args.stream_mb * MB
    dek = crypto.generate_key()
    aead = AESGCM(dek)
    chunk = block[:MB]
    t_raw = timed(lambda: aead.encrypt(nonce, chunk, ad), args.stream_mb)

    def raw_stream_and_hashes() -> None:
        h1, h2 = hashlib.sha256(), hashlib.sha256()
        for i in range(args.stream_mb):
            off = (i * 4093) % 4096
            pt = block[off:off + MB]
            h1.update(pt)
            h2.update(aead.encrypt(nonce, pt, ad))

    t_floor = timed(raw_stream_and_hashes)

    def stream_encrypt() -> None:
        reader = crypto.EncryptingReader(Generated(size, block), dek, aad)
        while reader.read(8 * MB):
            pass

    t_enc = timed(stream_encrypt)
    t_copy = timed(lambda: crypto.encrypt_stream(Generated(size, block), Discard(), dek, aad))
    t_rt = timed(lambda: crypto.decrypt_stream(crypto.EncryptingReader(Generated(size, block), dek, aad), Discard(),
                                               dek, aad))
    rows += [
        (f"raw AES-GCM, 1 MiB chunks x {args.stream_mb}", f"{args.stream_mb / t_raw:8.0f} MB/s",
         "baseline: cipher only"),
        ("raw AES-GCM + 2 x SHA-256, stream", f"{args.stream_mb / t_floor:8.0f} MB/s", "baseline: the floor"),
        ("EncryptingReader.read(8 MiB), stream", f"{args.stream_mb / t_enc:8.0f} MB/s",
         f"{t_floor / t_enc:5.0%} of floor"),
        ("encrypt_stream (no copies), stream", f"{args.stream_mb / t_copy:8.0f} MB/s",
         f"{t_floor / t_copy:5.0%} of floor"),
        ("encrypt -> decrypt_stream round trip", f"{args.stream_mb / t_rt:8.0f} MB/s", ""),
    ]

    # key store: rotation rewraps and KEK creation
    with tempfile.TemporaryDirectory() as tmp:
        ks = LocalKeyStore(Path(tmp) / "ks.sealed", crypto.generate_key())
        ref1 = ks.create_kek("study:bench")
        wrapped = [ks.wrap(ref1, os.urandom(32)) for _ in range(args.rewraps)]
        ref2 = ks.rotate("study:bench")
        writes = ks.write_count
        it = iter(wrapped)
        t_rw = timed(lambda: ks.rewrap(next(it), ref1, ref2), len(wrapped))
        rows.append((f"rewrap {args.rewraps} DEKs", f"{args.rewraps / t_rw:8.0f} /s",
                     f"{t_rw:.1f} s, {ks.write_count - writes} file writes"))
        n = 2000

        def create_in_txn() -> None:
            with ks.transaction():
                for i in range(n):
                    ks.create_kek(f"study:txn-{i}")

        t_txn = timed(create_in_txn)
        names = iter(range(200))
        t_one = timed(lambda: ks.create_kek(f"study:one-{next(names)}"), 200)
        rows += [
            (f"create_kek x{n} in one transaction", f"{n / t_txn:8.0f} /s", "1 file write"),
            ("create_kek x200, one write each", f"{200 / t_one:8.0f} /s", "fsync per KEK"),
        ]

    width = max(len(r[0]) for r in rows)
    print(f"{'operation':<{width}}  {'throughput':>13}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>13}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
