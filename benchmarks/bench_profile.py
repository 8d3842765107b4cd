"""Where a file's time goes: the pipeline's stages in one process, counted per file and sampled by py-spy.

The stage functions the DAG tasks call (``ingest.claim_batch``, ``run_chunk``, ``close_batch``;
``protect.pending_chunks``, ``classify_objects``, ``classified_gate``, ``deidentify_objects``,
``store_objects``, ``closing_gate``, ``backup_objects``), in the DAGs' order and chunking, for N CT
slices of 512 KB, against the real embedded S3 sites and a SQLite catalog. What Airflow adds (task
start-up, scheduling gaps) is ``bench_pipeline``'s part; this is the work itself.

Per stage, per file: wall seconds, S3 requests by method, catalog commits, DICOM parses, encryption
and decryption passes, and py-spy's samples by kind of work (crypto, S3 I/O, catalog, DICOM,
GX, the rest), taken with one I/O thread (``IL_IO_THREADS=1``) so that every sample belongs to the
work and no thread waits on another. The baseline, in the same run: the same bytes PUT raw to both
sites, one thread.

Sizes (``BENCH_PROFILE_SIZES``, default 300 then 1,000; ``make bench-large`` adds 10,000) run one
after the other into the same catalog, so the last meets a catalog that already holds the others:
``ratio_cost_per_file_last_vs_first`` near 1.0 means no step grows with the catalog's size.

``python benchmarks/bench_profile.py`` runs itself under py-spy when py-spy is installed (else it
counts only). Writes ``bench/profile.json``.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Sizes run one after the other into the same catalog: the cost per file must stay flat as it fills.
SIZES = [int(x) for x in os.environ.get("BENCH_PROFILE_SIZES", "300,1000").split(",")]
HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "bench" / "profile.json"
ACTOR = "system:bench/profile"

#: The stage a py-spy stack belongs to: the first of these function names found, leaf to root.
STAGE_OF_FUNCTION = {
    "_stage_one": "ingest.claim", "claim_batch": "ingest.claim", "run_chunk": "ingest.chunk",
    "close_batch": "ingest.gate", "pending_chunks": "protect.pending", "classify_objects": "protect.classify",
    "classified_gate": "protect.classified_gate", "deidentify_objects": "protect.deidentify",
    "store_objects": "protect.store", "closing_gate": "protect.closing_gate", "backup_objects": "protect.backup",
}

#: The kind of work of a frame, by the file it runs in (first match, leaf to root).
KIND_OF_FILE = [
    ("crypto", ("imaging_lifecycle/crypto.py", "/cryptography/", "hashlib")),
    ("S3 I/O", ("/minio/", "/urllib3/", "http/client.py", "/ssl.py", "/socket.py", "/certifi/")),
    ("catalog", ("/sqlalchemy/", "/sqlite3/", "imaging_lifecycle/catalog/", "/psycopg2/")),
    ("GX gate", ("/great_expectations/", "/pandas/", "/numpy/", "/pydantic/", "/marshmallow/")),
    ("DICOM", ("/pydicom/", "imaging_lifecycle/dicomfile.py", "imaging_lifecycle/deid/")),
]


def kind_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for kind, needles in KIND_OF_FILE:
            if any(n in frame for n in needles):
                return kind
    return "other"


def stage_of(frames: list[str]) -> str | None:
    for frame in reversed(frames):
        name = frame.split(" (", 1)[0]
        if name in STAGE_OF_FUNCTION:
            return STAGE_OF_FUNCTION[name]
    return None


def read_samples(path: Path) -> dict[str, collections.Counter]:
    """py-spy's raw (collapsed) stacks -> samples per stage per kind. Idle worker threads are left out."""
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        stage = stage_of(frames)
        if stage is None:
            continue
        leaf = frames[-1]
        waiting = any(w in leaf for w in ("threading.py", "queue.py", "concurrent/futures"))
        out[stage]["waiting on threads" if waiting else kind_of(frames)] += int(count)
    return out


class Counters:
    """Counts what the stages do, per stage: S3 requests by method, commits, parses, crypto passes."""

    def __init__(self):
        self.stage = "setup"
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def add(self, what: str, n: int = 1) -> None:
        self.counts[self.stage][what] += n

    def install(self) -> None:
        import minio.api
        import pydicom.filereader
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        from imaging_lifecycle import crypto

        url_open = minio.api.Minio._url_open

        def counted_url_open(client, method, *a, **kw):  # noqa: ANN001, ANN202
            self.add(f"S3 {method}")
            return url_open(client, method, *a, **kw)

        minio.api.Minio._url_open = counted_url_open
        read_partial = pydicom.filereader.read_partial

        def counted_read_partial(*a, **kw):  # noqa: ANN202
            self.add("DICOM parses")
            return read_partial(*a, **kw)

        pydicom.filereader.read_partial = counted_read_partial
        event.listen(Engine, "commit", lambda conn: self.add("catalog commits"))
        for cls, what in ((crypto.EncryptingReader, "encryptions"), (crypto.DecryptingReader, "decryptions")):
            init = cls.__init__

            def counted_init(reader, *a, _init=init, _what=what, **kw):  # noqa: ANN001, ANN202
                self.add(_what)
                _init(reader, *a, **kw)

            cls.__init__ = counted_init


def run_batch(svc, settings, counters: Counters, blobs: list[bytes], tag: str) -> dict[str, float]:
    """One drop of ``blobs`` through every stage, as the DAGs chunk it; wall seconds per stage."""
    from imaging_lifecycle import ingest, protect

    for i, b in enumerate(blobs):
        (settings.landing_dir / f"{tag}-{i:06d}.dcm").write_bytes(b)
    wall: dict[str, float] = {}

    def stage(name: str, fn):  # noqa: ANN001, ANN202
        counters.stage = name
        t = time.perf_counter()
        result = fn()
        wall[name] = wall.get(name, 0.0) + time.perf_counter() - t
        return result

    while True:  # batch after batch, as the ingest DAG's runs take them (at most ingest.BATCH_FILES each)
        claim = stage("ingest.claim", lambda: ingest.claim_batch(svc, quiet_seconds=0, actor=ACTOR))
        if not claim.files:
            break
        results = [stage("ingest.chunk", lambda c=c, b=claim.batch_id: ingest.run_chunk(svc, b, c, actor=ACTOR))
                   for c in claim.chunks]
        stage("ingest.gate", lambda r=results: ingest.close_batch(svc, r, actor=ACTOR))
    chunks = stage("protect.pending", lambda: protect.pending_chunks(svc))
    for name, fn in (("protect.classify", protect.classify_objects), ("protect.deidentify", protect.deidentify_objects),
                     ("protect.store", protect.store_objects)):
        if name == "protect.deidentify":
            stage("protect.classified_gate", lambda: protect.classified_gate(svc, chunks, actor=ACTOR))
        for ids in chunks:
            stage(name, lambda ids=ids, fn=fn: fn(svc, ids, actor=ACTOR))
    stage("protect.closing_gate", lambda: protect.closing_gate(svc, chunks, actor=ACTOR))
    stage("protect.backup", lambda: protect.backup_objects(svc, [i for c in chunks for i in c], actor=ACTOR))
    return wall


def run_stages(sizes: list[int]) -> dict:
    """The measured runs (inside py-spy when there is one)."""
    sys.path.insert(0, str(HERE))
    from bench_pipeline import corpus, raw_upload_seconds

    from _platform import object_stores

    with object_stores(offset=int(os.environ.get("BENCH_PROFILE_PORT_OFFSET", "350"))) as settings:
        from imaging_lifecycle import landing
        from imaging_lifecycle.services import Services

        counters = Counters()
        counters.install()
        landing.ensure_identity(settings.landing_dir)
        svc = Services.open(settings)
        out: dict = {"sizes": sizes, "runs": {}}
        for n in sizes:
            blobs = corpus(n)
            baseline = raw_upload_seconds(settings, blobs)
            counters.counts.clear()
            wall = run_batch(svc, settings, counters, blobs, f"n{n}")
            total = sum(wall.values())
            out["runs"][str(n)] = {
                "files": n, "catalog_objects_before": len(svc.catalog.objects()) - n,
                "MB": round(sum(map(len, blobs)) / 1e6, 1), "work_s": round(total, 1),
                "files_per_s": round(n / total, 2), "ms_per_file": round(1000 * total / n, 1),
                "baseline_raw_upload_both_sites_s": round(baseline, 1),
                "ratio_work_vs_raw_upload": round(baseline / total, 3),
                "wall_ms_per_file": {k: round(1000 * v / n, 1) for k, v in wall.items()},
                "per_file": {k: {what: round(c / n, 2) for what, c in sorted(v.items())}
                             for k, v in counters.counts.items()},
            }
        first, last = out["runs"][str(sizes[0])], out["runs"][str(sizes[-1])]
        out["backed_up"] = len(svc.catalog.objects(state="BACKED_UP"))
        out["files_per_s"] = last["files_per_s"]
        out["ratio_work_vs_raw_upload"] = last["ratio_work_vs_raw_upload"]
        out["ratio_cost_per_file_last_vs_first"] = round(last["ms_per_file"] / first["ms_per_file"], 3)
        out["s3_requests_per_file"] = round(sum(c for st in last["per_file"].values() for k, c in st.items()
                                                if k.startswith("S3 ")), 1)
        commits = sum(st.get("catalog commits", 0) for st in last["per_file"].values())
        out["catalog_commits_per_file"] = round(commits, 1)
        return out


def table(out: dict) -> list[str]:
    """The breakdown as text: per stage, ms per file, what it did per file, and where its samples went."""
    kinds = ["S3 I/O", "crypto", "catalog", "DICOM", "GX gate", "other", "waiting on threads"]
    last = out["runs"][str(out["sizes"][-1])]
    lines = [f"{last['files']} files into a catalog of {last['catalog_objects_before']}: "
             f"{last['ms_per_file']} ms/file, {out['s3_requests_per_file']} S3 requests and "
             f"{out['catalog_commits_per_file']} catalog commits per file (a raw upload to both sites: 2 requests)", "",
             f"{'stage':24} {'ms/file':>8}  per file", "-" * 100]
    samples = out.get("samples") or {}
    for st, ms in last["wall_ms_per_file"].items():
        did = ", ".join(f"{v:g} {k}" for k, v in last["per_file"].get(st, {}).items())
        lines.append(f"{st:24} {ms:8.1f}  {did}")
        s = samples.get(st)
        if s:
            tot = sum(s.values())
            lines.append(f"{'':24} {'':8}  samples: " + ", ".join(
                f"{k} {100 * s.get(k, 0) / tot:.0f}%" for k in kinds if s.get(k)))
    if samples:
        every = collections.Counter()
        for s in samples.values():
            every.update(s)
        tot = sum(every.values())
        lines += ["-" * 100, "all stages, samples: " + ", ".join(
            f"{k} {100 * every.get(k, 0) / tot:.0f}%" for k in kinds if every.get(k))]
    lines += ["", "cost per file by size (same catalog, filled as it goes): " + ", ".join(
        f"{n} files {out['runs'][str(n)]['ms_per_file']} ms" for n in out["sizes"])
        + f"; last/first {out['ratio_cost_per_file_last_vs_first']}"]
    return lines


def main() -> dict:
    if os.environ.get("BENCH_PROFILE_INNER"):
        OUT.with_suffix(".inner.json").write_text(json.dumps(run_stages(SIZES)))
        return {}
    env = {**os.environ, "BENCH_PROFILE_INNER": "1", "IL_IO_THREADS": "1", "GX_ANALYTICS_ENABLED": "False"}
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    raw = Path(tempfile.mkdtemp(prefix="il-bench-profile-")) / "stacks.txt"
    cmd = [sys.executable, __file__]
    if spy:
        cmd = [spy, "record", "--idle", "--threads", "-r", "50", "--format", "raw", "-o", str(raw), "--", *cmd]
    inner = OUT.with_suffix(".inner.json")
    inner.unlink(missing_ok=True)
    # py-spy's own exit status is not the run's (at the end of a 45-minute run it once exited 1 after the
    # run had written its figures): the figures file decides, and py-spy's and the run's errors show.
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL if spy else None)
    if not inner.exists():
        raise SystemExit(f"the profiled run wrote no figures (exit {done.returncode})")
    out = json.loads(inner.read_text())
    inner.unlink()
    if spy and raw.exists():
        out["samples"] = {k: dict(v) for k, v in read_samples(raw).items()}
    shutil.rmtree(raw.parent, ignore_errors=True)
    out["profiler"] = "py-spy 50 Hz, all threads, idle included" if spy else "none (py-spy not installed)"
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))
    print("\n".join(table(out)))
    return out


if __name__ == "__main__":
    result = main()
    if result:
        print(json.dumps({k: v for k, v in result.items() if k not in ("samples", "runs")}, indent=1))
