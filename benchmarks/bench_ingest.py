"""Ingest through the real platform: a drop of N files into the landing folder, taken batch by batch.

Reports the delay from each file's arrival (its write time) to its catalog
row reaching VALIDATED (p50/p95), and files per second for the batch, from
the first arrival to the last file ingested. The landing trigger's quiet
period (IL_INGEST_QUIET_SECONDS, 5 s here) is part of the delay by design.
For comparison, the same stage functions run in one process
(`imaging-lifecycle ingest`) on a second batch of N files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N = int(os.environ.get("BENCH_INGEST_N", "1000"))
ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / ".venv" / "bin" / "imaging-lifecycle")


def drop(landing: Path, n: int, tag: str) -> dict[str, float]:
    from pydicom.uid import generate_uid

    from imaging_lifecycle.synthetic import Patient, make_instance, to_bytes

    landing.mkdir(parents=True, exist_ok=True)
    written = {}
    study, series = generate_uid(), generate_uid()
    for i in range(n):
        ds = make_instance(Patient(f"{tag}{i % 50:03d}"), study, series, i + 1, size=128)
        path = landing / f"{tag}-{i:05d}.dcm"
        path.with_suffix(".part").write_bytes(to_bytes(ds))
        path.with_suffix(".part").rename(path)
        written[str(ds.SOPInstanceUID)] = time.time()
    return written


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> None:
    state = Path(tempfile.mkdtemp(prefix="il-bench-ingest-"))
    env = {**os.environ, "IL_STATE_DIR": str(state), "IL_PORT_OFFSET": "400"}
    os.environ.update({k: env[k] for k in ("IL_STATE_DIR", "IL_PORT_OFFSET")})
    subprocess.run([CLI, "platform", "up"], env=env, check=True, capture_output=True)
    try:
        from imaging_lifecycle.catalog import Catalog
        from imaging_lifecycle.settings import load_settings

        settings = load_settings()
        time.sleep(25)  # let the dag-processor register the DAG and the triggerer start watching
        arrivals = drop(settings.landing_dir / "bench", N, "A")
        t_first = min(arrivals.values())
        cat = Catalog(settings.catalog_url)
        by_key = {cat.uid_key("sop", uid): uid for uid in arrivals}
        deadline = time.time() + 900
        done: dict[str, float] = {}  # uid -> seconds from arrival to VALIDATED
        # Batch by batch (at most ingest.BATCH_FILES each), protect takes the first while the next is
        # ingested: an object may be past VALIDATED when first seen, then the poll time is its bound.
        while time.time() < deadline and len(done) < N:
            now = time.time()
            for o in cat.objects():
                uid = by_key.get(o.sop_key)
                if uid is not None and uid not in done and o.state not in ("RECEIVED", "QUARANTINED"):
                    seen = o.updated_at.timestamp() if o.state == "VALIDATED" else now
                    done[uid] = seen - arrivals[uid]
            time.sleep(0.5)
        t_last = max(arrivals[u] + d for u, d in done.items())
        lat = list(done.values())
        airflow = {
            "files": N, "ingested": len(done),
            "p50_s": round(pct(lat, 50), 1), "p95_s": round(pct(lat, 95), 1),
            "files_per_s": round(len(done) / (t_last - t_first), 1),
        }
        # The same stage functions in one process, no Airflow overhead, from a folder
        # the platform's trigger does not watch (so the DAG does not take these files); once the
        # platform has protected the first batch, so that the two do not share the cores.
        deadline = time.time() + 900
        while time.time() < deadline and len([o for o in cat.objects(state="BACKED_UP") if o.sop_key in by_key]) < N:
            time.sleep(2)
        other = state / "landing-in-process"
        drop(other, N, "B")
        t = time.perf_counter()
        subprocess.run([CLI, "ingest"], env={**env, "IL_LANDING_DIR": str(other)}, check=True, capture_output=True)
        inproc = round(N / (time.perf_counter() - t), 1)
        print(json.dumps({"through_airflow": airflow, "in_process_files_per_s": inproc,
                          "ratio_airflow_vs_in_process": round(airflow["files_per_s"] / inproc, 2)}, indent=1))
    finally:
        subprocess.run([CLI, "platform", "down"], env=env, capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
