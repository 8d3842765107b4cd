"""Ingest: from the landing folder into the catalog, durably and without losing anything.

One DAG run takes one batch:

1. :func:`claim_batch` moves every settled landing file into
   ``<state>/ingest/<batch id>/<catalog id>.dcm`` (an atomic rename on one file
   system). File names can carry identifiers, so from here on a file is only
   its catalog id; the batch manifest (id → source) stays on local disk, and
   XCom carries the batch id and chunk numbers only. Files arriving while a
   batch runs wait for the next one. Files of an earlier batch that crashed
   are claimed again, so nothing is stranded.
2. :func:`run_chunk` (the mapped task, one per chunk) passes each file to
   :func:`ingest_file`, which inspects it and either stores it (encrypted,
   read back and verified) and registers it, or quarantines it with a reason
   code. Only then is the staged file removed. Every step is idempotent per
   file, so a rerun after a crash at any point neither loses nor duplicates
   anything.
3. :func:`close_batch` runs the ingest validation gate over the batch's
   catalog rows; a failed gate marks the batch GATE_FAILED and stops it there.

Stage functions take the task's :class:`~imaging_lifecycle.services.Services`;
:func:`claim_batch` needs only the settings (it touches local folders alone).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from imaging_lifecycle import faults, landing
from imaging_lifecycle.inspection import inspect
from imaging_lifecycle.services import Services
from imaging_lifecycle.settings import Settings

CHUNK_SIZE = 100
MANIFEST = "manifest.json"
MAX_CHUNKS = 1000  # Airflow maps at most 1024 task instances


@dataclass(frozen=True)
class Claim:
    batch_id: str
    files: int
    chunks: list[int]

    def work(self) -> list[dict]:
        """One {batch_id, chunk} per mapped ingest task (XCom-safe: no names)."""
        return [{"batch_id": self.batch_id, "chunk": c} for c in self.chunks]


def batches_root(settings: Settings) -> Path:
    return settings.state_dir / "ingest"


def _source_of(path: Path, landing_dir: Path) -> str:
    """``cstore:<AE>`` for files our receiver wrote, ``landing`` for drops."""
    parts = path.relative_to(landing_dir).parts
    if len(parts) >= 3 and parts[0] == "cstore":
        return f"cstore:{parts[1]}"
    return "landing"


def _move(src: Path, dst: Path) -> None:
    """Atomic rename; across file systems, copy + fsync, then remove the source.

    Errors are re-raised without the paths: file names may carry identifiers.
    """
    try:
        try:
            os.rename(src, dst)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            tmp = dst.with_suffix(".part")
            shutil.copy2(src, tmp, follow_symlinks=False)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.rename(tmp, dst)
            os.unlink(src)
    except OSError as exc:
        raise OSError(exc.errno, f"could not stage a landing file ({type(exc).__name__})") from None


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read_manifest(batch_dir: Path) -> dict:
    try:
        return json.loads((batch_dir / MANIFEST).read_text())
    except (FileNotFoundError, ValueError):
        return {"chunk_size": CHUNK_SIZE, "files": {}}


def new_batch_id() -> str:
    """``<UTC second>-b<11 hex>``: sortable by time, and audit-safe by construction.

    The batch id is audited (``batch:<id>``), and the audit guard refuses any
    letter-and-digit run that reads as a DICOM date (8 digits starting 19 or
    20). A bare random hex suffix is all digits like that once in about 2,100
    batches, which failed that batch's registration. The leading letter joins
    the random part into a run that can never be all digits.
    """
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-b" + uuid.uuid4().hex[:11]


@contextmanager
def _claim_lock(root: Path):
    """One claim at a time, whoever runs it (a retried task, the CLI, a second scheduler)."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def claim_batch(settings: Settings, *, quiet_seconds: float, chunk_size: int = CHUNK_SIZE,
                now: float | None = None) -> Claim:
    """Move settled landing files (and leftovers of crashed batches) into a new batch folder.

    Each file gets its catalog id here and is staged as ``<catalog id>.dcm``:
    the id travels with the file in one rename, so a rerun reuses it and the
    catalog can never get the same file twice. The manifest (id -> source) is
    written and fsynced *before* anything moves. A claim takes at most
    ``MAX_CHUNKS * chunk_size`` files (Airflow's mapped-task limit); the rest
    changes the folder, so the trigger fires again for it.
    """
    root = batches_root(settings)
    with _claim_lock(root):
        batch_id = new_batch_id()
        batch_dir = root / batch_id
        batch_dir.mkdir(mode=0o700)
        limit = MAX_CHUNKS * chunk_size
        plan: list[tuple[Path, str, str]] = []  # (source path, catalog id, source)
        old_dirs = sorted(p for p in root.iterdir() if p.is_dir() and p != batch_dir)
        for old in old_dirs:  # leftovers of earlier batches whose run died
            sources = _read_manifest(old)["files"]
            for f in sorted(old.glob("*.dcm")):
                plan.append((f, f.stem, sources.get(f.stem, "landing")))
        for f in landing.settled_files(settings.landing_dir, quiet_seconds, now):
            plan.append((f, uuid.uuid4().hex, _source_of(f, settings.landing_dir)))
        plan = plan[:limit]
        _write_json(batch_dir / MANIFEST, {"chunk_size": chunk_size, "files": {oid: src for _, oid, src in plan}})
        for src, oid, _ in plan:
            _move(src, batch_dir / f"{oid}.dcm")
            os.chmod(batch_dir / f"{oid}.dcm", 0o600)  # a sender's file, now ours alone
        for old in old_dirs:
            if not any(old.glob("*.dcm")):
                (old / MANIFEST).unlink(missing_ok=True)
                try:
                    os.rmdir(old)  # fails, keeping it, if anything unexpected is left
                except OSError:
                    pass
        landing.remove_empty_dirs(settings.landing_dir)
        if not plan:
            (batch_dir / MANIFEST).unlink()
            os.rmdir(batch_dir)
    n = len(plan)
    return Claim(batch_id, n, list(range((n + chunk_size - 1) // chunk_size)))


def chunk_files(settings: Settings, batch_id: str, chunk: int) -> list[tuple[Path, str]]:
    """The (staged path, source) pairs of one chunk that are still to do."""
    batch_dir = batches_root(settings) / batch_id
    manifest = _read_manifest(batch_dir)
    size = manifest["chunk_size"]
    ids = sorted(manifest["files"])[chunk * size:(chunk + 1) * size]
    return [(batch_dir / f"{i}.dcm", manifest["files"][i]) for i in ids if (batch_dir / f"{i}.dcm").exists()]


def finish_batch(settings: Settings, batch_id: str) -> None:
    """Drop the batch folder once every staged file is gone (each was stored or quarantined)."""
    batch_dir = batches_root(settings) / batch_id
    if batch_dir.exists() and not any(batch_dir.glob("*.dcm")):
        (batch_dir / MANIFEST).unlink(missing_ok=True)
        try:
            os.rmdir(batch_dir)
        except OSError:
            pass


# -- one chunk: the mapped task --------------------------------------------------


def _store(svc: Services, oid: str, staged: Path, *, zone: str, scope_id: str, actor: str):
    """Encrypt ``staged`` into ``zone`` under a deterministic key, verified, recorded. Idempotent.

    A copy already recorded for this object and zone is reused. Versions left
    under the key by an earlier attempt that died before recording are purged
    first, so a rerun leaves exactly one version.
    """
    for copy in svc.catalog.copies(oid):
        if copy.zone == zone:
            return copy
    key = f"{'objects' if zone == 'archive' else zone}/{oid}"
    store = svc.encrypted.store
    leftovers = [(v.key, v.version_id) for v in store.versions(zone, key) if v.key == key]
    if leftovers:
        store.purge(zone, leftovers)
    # Not yet classified, so bound to the policy's most sensitive tier (fail closed);
    # protect re-encrypts the original with its real tier.
    sealed = svc.encrypted.put(staged, catalog_id=oid, zone=zone, tier=svc.policy.highest_tier,
                               scope_id=scope_id, key=key)
    faults.point("ingest.after_upload")
    return svc.encrypted.record(svc.catalog, oid, sealed, actor=actor)


def _remove_staged(staged: Path) -> None:
    faults.point("ingest.before_remove")
    staged.unlink(missing_ok=True)


def ingest_file(svc: Services, staged: Path, source: str, batch_id: str, *, actor: str) -> str:
    """Take one staged file into the catalog. Returns the outcome name (never a file name or UID)."""
    from imaging_lifecycle.catalog import states

    oid = staged.stem  # given at claim time, carried in the staged name
    insp = inspect(staged, staged.parent)
    if not insp.ok:
        reg = svc.catalog.register(actor=actor, source=source, object_id=oid, batch_id=batch_id,
                                   sha256=insp.sha256, size=insp.size, quarantine_reason=insp.reason)
        if insp.reason != "PATH_TRAVERSAL":  # never follow a link out of the folder
            _store(svc, oid, staged, zone="quarantine", scope_id=f"quarantine:{oid}", actor=actor)
        _remove_staged(staged)
        return f"quarantined:{insp.reason}"
    reg = svc.catalog.register(
        actor=actor, source=source, object_id=oid, batch_id=batch_id, sha256=insp.sha256, size=insp.size,
        sop_instance_uid=insp.sop_instance_uid, study_instance_uid=insp.study_instance_uid,
        series_instance_uid=insp.series_instance_uid, sop_class_uid=insp.sop_class_uid,
    )
    obj = reg.object
    if reg.outcome == "duplicate" and obj.id != oid:
        # Same instance, same bytes, stored by an earlier file: nothing to keep.
        _remove_staged(staged)
        return "duplicate"
    if reg.outcome == "conflict" or obj.state == states.QUARANTINED:
        _store(svc, obj.id, staged, zone="quarantine", scope_id=f"quarantine:{obj.id}", actor=actor)
        _remove_staged(staged)
        return "quarantined:DUPLICATE_CONFLICT"
    if obj.state == states.RECEIVED:
        copy = _store(svc, obj.id, staged, zone="archive", scope_id=f"study:{obj.study_key}", actor=actor)
        faults.point("ingest.after_store")
        svc.catalog.transition(obj.id, states.VALIDATED, actor=actor, zone="archive",
                               ciphertext_sha256=copy.ciphertext_sha256, key_id=copy.key_id)
    _remove_staged(staged)
    return "stored"


def run_chunk(svc: Services, batch_id: str, chunk: int, *, actor: str) -> dict:
    """The mapped ingest task: every file of one chunk. Returns counts by outcome (XCom-safe)."""
    counts: dict[str, int] = {}
    for staged, source in chunk_files(svc.settings, batch_id, chunk):
        outcome = ingest_file(svc, staged, source, batch_id, actor=actor)
        counts[outcome] = counts.get(outcome, 0) + 1
    return {"batch_id": batch_id, "chunk": chunk, "counts": counts}


def close_batch(svc: Services, results: list[dict], *, actor: str) -> dict:
    """Gate the batch; mark it INGESTED or GATE_FAILED. Raises GateFailed so nothing moves on."""
    from imaging_lifecycle.gates import GateFailed, enforce_recorded
    from imaging_lifecycle.gates.ingest import check, rows_for

    (batch_id,) = {r["batch_id"] for r in results}
    totals: dict[str, int] = {}
    for r in results:
        for k, v in r["counts"].items():
            totals[k] = totals.get(k, 0) + int(v)
    left = chunk_files_all(svc.settings, batch_id)
    if left:
        raise RuntimeError(f"batch {batch_id}: {left} staged file(s) not yet ingested; the retry picks them up")
    finish_batch(svc.settings, batch_id)
    summary = {"batch_id": batch_id, "stored": totals.get("stored", 0), "duplicates": totals.get("duplicate", 0),
               "quarantined": sum(v for k, v in totals.items() if k.startswith("quarantined:")),
               "reasons": {k.split(":", 1)[1]: v for k, v in totals.items() if k.startswith("quarantined:")}}
    if svc.catalog.get_batch(batch_id) is None:  # only duplicates: nothing registered, nothing to gate
        return {**summary, "gate": None}
    rows = rows_for(svc.catalog, batch_id)
    if not rows:  # everything was quarantined: nothing moves on, and nothing needs gating
        svc.catalog.set_batch_state(batch_id, "INGESTED", actor=actor, counts=_counts(summary))
        return {**summary, "gate": None}
    try:
        result = enforce_recorded(svc.catalog, check(rows), actor=actor)
    except GateFailed:
        svc.catalog.set_batch_state(batch_id, "GATE_FAILED", actor=actor, counts=_counts(summary), outcome="failure")
        raise
    svc.catalog.set_batch_state(batch_id, "INGESTED", actor=actor, counts=_counts(summary))
    return {**summary, "gate": result.summary()}


def _counts(summary: dict) -> dict:
    return {"stored": summary["stored"], "duplicates": summary["duplicates"], "quarantined": summary["quarantined"]}


def chunk_files_all(settings: Settings, batch_id: str) -> int:
    batch_dir = batches_root(settings) / batch_id
    return sum(1 for _ in batch_dir.glob("*.dcm")) if batch_dir.exists() else 0
