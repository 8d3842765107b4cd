"""Encrypt-and-store throughput as a ratio to a raw upload of the same bytes to the same store.

Goal (issue 5): >= 0.8 for 512 KB CT slices. Both sides run in the same
process, interleaved in rounds, so machine noise hits both alike.
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _platform import object_stores  # noqa: E402

SLICE = 512 * 1024
N = int(os.environ.get("BENCH_STORE_N", "150"))
ROUNDS = 3


def main() -> dict:
    with object_stores() as settings:
        from imaging_lifecycle.encrypted_store import EncryptedStore
        from imaging_lifecycle.keystore import LocalKeyStore
        from imaging_lifecycle.storage import ObjectStore

        store = ObjectStore(settings)
        encrypted = EncryptedStore(store, LocalKeyStore(settings.state_dir / "bench-keys.bin", os.urandom(32)))
        slices = [os.urandom(SLICE) for _ in range(N)]
        raw_t, enc_t, ver_t = [], [], []
        for _ in range(ROUNDS):
            t = time.perf_counter()
            for s in slices:
                store.put("archive", f"bench/raw/{uuid.uuid4().hex}", io.BytesIO(s), len(s))
            raw_t.append(time.perf_counter() - t)
            for verify, sink in ((False, enc_t), (True, ver_t)):
                t = time.perf_counter()
                for s in slices:
                    cid = uuid.uuid4().hex
                    encrypted.put(io.BytesIO(s), catalog_id=cid, zone="archive", tier=3, scope_id="study:bench",
                              key=f"bench/enc/{cid}", size=len(s), verify=verify)
                sink.append(time.perf_counter() - t)
        mb = N * SLICE / 1e6
        raw, enc, ver = (statistics.median(x) for x in (raw_t, enc_t, ver_t))
        out = {
            "slices": N, "slice_kb": SLICE // 1024,
            "raw_upload_MBps": round(mb / raw, 1),
            "encrypt_and_store_MBps": round(mb / enc, 1),
            "encrypt_store_readback_verify_MBps": round(mb / ver, 1),
            "ratio_encrypt_store_vs_raw": round(raw / enc, 2),
            "ratio_with_readback_verify_vs_raw": round(raw / ver, 2),
        }
        return out


if __name__ == "__main__":
    for k, v in main().items():
        print(f"{k:40} {v}")
