"""End-to-end protect through the real platform, against a raw upload of the same bytes to both sites.

N CT slices of 512 x 512 16-bit (about 512 KB each) are dropped into the landing folder of a real
platform (scheduler, triggerer, LocalExecutor). Measured, all in the same run:

* **end to end**: first arrival to the last original BACKED_UP, as files/s and MB/s, and as a ratio
  to the **baseline**: the same bytes uploaded raw, single-threaded, with the minio SDK to the primary
  and the backup site (the pipeline's own two copies);
* **latency**: arrival to BACKED_UP per file, p50 and p95, for the whole drop (one study of N slices;
  with N = 300 that is the issue's 300-slice study);
* **Airflow overhead**: the run's wall time against the time at least one of its tasks was working
  (the union of the task instances' start-end intervals, from the REST API): the rest is scheduling
  gaps; and per task, the summed task time, which is where the work goes.

Writes ``bench/pipeline.json``; ``run_all.py`` puts it in the report.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

N = int(os.environ.get("BENCH_PIPELINE_N", "300"))
OFFSET = int(os.environ.get("BENCH_PIPELINE_PORT_OFFSET", "450"))
ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / ".venv" / "bin" / "imaging-lifecycle")
OUT = ROOT / "bench" / "pipeline.json"


def corpus(n: int) -> list[bytes]:
    from pydicom.uid import generate_uid

    from imaging_lifecycle.synthetic import Patient, make_instance, to_bytes

    study, series = generate_uid(), generate_uid()
    patient = Patient("B0001")
    return [to_bytes(make_instance(patient, study, series, i + 1, size=512)) for i in range(n)]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def raw_upload_seconds(settings, blobs: list[bytes]) -> float:
    """The baseline: each file's bytes PUT to the primary and to the backup site, one thread."""
    from imaging_lifecycle.storage import ObjectStore

    store = ObjectStore(settings)
    t = time.perf_counter()
    for i, b in enumerate(blobs):
        store.put("archive", f"bench/raw/{i}", io.BytesIO(b), len(b))
        store.put("backup", f"bench/raw/{i}", io.BytesIO(b), len(b))
    return time.perf_counter() - t


class Api:
    def __init__(self, state: Path, base: str):
        self.base = base
        password = json.loads((state / "secrets" / "airflow-passwords.json").read_text())["admin"]
        self.token = self._call("POST", "/auth/token", {"username": "admin", "password": password},
                                auth=False)["access_token"]

    def _call(self, method, path, body=None, auth=True):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def task_instances(self, dag_id: str) -> list[dict]:
        out = []
        for run in self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=200")["dag_runs"]:
            out += self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances"
                                     "?limit=1000")["task_instances"]
        return out


def _ts(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def main() -> dict:
    state = Path(tempfile.mkdtemp(prefix="il-bench-pipeline-"))
    env = {**os.environ, "IL_STATE_DIR": str(state), "IL_PORT_OFFSET": str(OFFSET), "IL_INGEST_QUIET_SECONDS": "2"}
    os.environ.update({k: env[k] for k in ("IL_STATE_DIR", "IL_PORT_OFFSET")})
    subprocess.run([CLI, "platform", "up"], env=env, check=True, capture_output=True)
    try:
        from imaging_lifecycle.services import Services
        from imaging_lifecycle.settings import load_settings

        settings = load_settings()
        svc = Services.open(settings)
        blobs = corpus(N)
        mb = sum(map(len, blobs)) / 1e6
        baseline = raw_upload_seconds(settings, blobs)
        time.sleep(20)  # the dag-processor registers the DAGs, the triggerer starts watching
        landing = settings.landing_dir / "bench"
        landing.mkdir(parents=True, exist_ok=True)
        arrivals: dict[str, float] = {}
        from pydicom import dcmread

        for i, b in enumerate(blobs):
            part = landing / f"s{i:05d}.part"
            part.write_bytes(b)
            part.rename(part.with_suffix(".dcm"))
            arrivals[str(dcmread(io.BytesIO(b), stop_before_pixels=True).SOPInstanceUID)] = time.time()
        t_first = min(arrivals.values())
        deadline = time.time() + 60 + 3 * N
        by_key = {svc.catalog.uid_key("sop", uid): uid for uid in arrivals}
        done: dict[str, float] = {}
        while time.time() < deadline and len(done) < N:
            for o in svc.catalog.objects(state="BACKED_UP"):
                if o.sop_key in by_key:
                    done[by_key[o.sop_key]] = o.updated_at.timestamp()
            time.sleep(1)
        t_last = max(done.values()) if done else time.time()
        wall = t_last - t_first
        api = Api(state, settings.airflow_url)
        per_task: dict[str, float] = {}
        intervals = []
        for dag_id in ("ingest", "protect"):
            for ti in api.task_instances(dag_id):
                if ti.get("start_date") and ti.get("end_date"):
                    a, b = _ts(ti["start_date"]), _ts(ti["end_date"])
                    if b >= t_first - 5:
                        intervals.append((max(a, t_first), min(b, t_last)))
                        key = f"{dag_id}.{ti['task_id']}"
                        per_task[key] = per_task.get(key, 0.0) + (b - a)
        busy = union_seconds([(a, b) for a, b in intervals if b > a])
        lat = [done[u] - arrivals[u] for u in done]
        out = {
            "files": N, "backed_up": len(done), "MB": round(mb, 1),
            "wall_s": round(wall, 1),
            "files_per_s": round(len(done) / wall, 2) if wall > 0 else None,
            "MB_per_s": round(mb / wall, 2) if wall > 0 else None,
            "baseline_raw_upload_both_sites_s": round(baseline, 1),
            "ratio_end_to_end_vs_raw_upload": round(baseline / wall, 3) if wall > 0 else None,
            "latency_p50_s": round(pct(lat, 50), 1) if lat else None,
            "latency_p95_s": round(pct(lat, 95), 1) if lat else None,
            "task_busy_s": round(busy, 1),
            "airflow_overhead_fraction": round(1 - busy / wall, 3) if wall > 0 else None,
            "task_seconds": {k: round(v, 1) for k, v in sorted(per_task.items(), key=lambda kv: -kv[1])},
        }
        OUT.parent.mkdir(exist_ok=True)
        OUT.write_text(json.dumps(out, indent=1))
        return out
    finally:
        subprocess.run([CLI, "platform", "down"], env=env, capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
