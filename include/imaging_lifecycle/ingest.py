"""Ingest: from the landing folder into the catalog, durably and without losing anything.

One DAG run takes one batch:

1. :func:`claim_batch` runs on the landing host only (the ``landing`` queue;
   see :class:`NotTheLandingHost`). It moves every settled landing file into
   ``<landing>/.claimed/<batch id>/<catalog id>.dcm`` (an atomic rename on one file
   system), then stages each one, encrypted and verified, in the ``staging``
   zone with a row in the catalog (:mod:`imaging_lifecycle.staging`), and only
   then removes the local copy. File names can carry identifiers, so from here
   on a file is only its catalog id; XCom carries the batch id and chunk numbers
   only. Files arriving while a batch runs wait for the next one. Files of an
   earlier batch whose run died, local or staged, are claimed again, so nothing
   is stranded.
2. :func:`run_chunk` (the mapped task, one per chunk, on any worker) passes
   the chunk's staged files to :func:`ingest_files`, which fetches them into the
   host's scratch folder, inspects them, registers them all in one commit and
   either stores each one (encrypted and verified) or quarantines it with a
   reason code. Only then are the staged copies dropped, together. Every step is
   idempotent per file, so a rerun after a crash at any point, on any host,
   neither loses nor duplicates anything.
3. :func:`close_batch` checks that nothing of the batch is still staged, runs
   the ingest validation gate over the batch's catalog rows (a failed gate marks
   the batch GATE_FAILED and stops it there) and destroys the batch's staging KEK.

Stage functions take the task's :class:`~imaging_lifecycle.services.Services`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from imaging_lifecycle import faults, landing
from imaging_lifecycle.classify import classify, sender_of
from imaging_lifecycle.inspection import inspect
from imaging_lifecycle.services import Services, even_chunks
from imaging_lifecycle.settings import Settings

#: Files per mapped ingest task (``IL_INGEST_CHUNK_SIZE`` overrides it, for tuning and tests).
CHUNK_SIZE = int(os.environ.get("IL_INGEST_CHUNK_SIZE") or 100)
MANIFEST = "manifest.json"
MAX_CHUNKS = 1000  # Airflow maps at most 1024 task instances
#: Files per batch at most (``IL_INGEST_BATCH_FILES``). The rest of a big drop waits in the folder for the
#: next run, which the trigger fires once the claim changed the folder: protect starts on the first
#: batch as soon as its gate passed, while the next is ingested, instead of after the whole drop.
BATCH_FILES = int(os.environ.get("IL_INGEST_BATCH_FILES") or 1000)


@dataclass(frozen=True)
class Claim:
    batch_id: str
    files: int
    chunks: list[int]

    def work(self) -> list[dict]:
        """One {batch_id, chunk} per mapped ingest task (XCom-safe: no names)."""
        return [{"batch_id": self.batch_id, "chunk": c} for c in self.chunks]


#: Inside the landing folder (a dot-folder, so never taken for arriving files): claiming is then an
#: atomic rename on one file system, the claimed files stay on the landing volume until staged, and
#: the claim lock is the landing folder's own, shared by every process that claims from it.
CLAIMED_DIR = ".claimed"
#: Files the claim could not read (permissions): kept here, beside their quarantine record, not deleted.
UNREADABLE_DIR = ".unreadable"


def batches_root(settings: Settings) -> Path:
    return settings.landing_dir / CLAIMED_DIR


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


class NotTheLandingHost(RuntimeError):
    """This host's landing folder is not the one whose files fired the run, or it has none.

    The claim is the one step that touches a landing folder, so it must run where
    that folder is (the Airflow queue ``landing``, consumed only by the landing
    host's worker). Run anywhere else, it would find an empty folder and end a
    run that leaves the real files waiting as a success; it fails instead, and
    Airflow retries it (on the right host, once the queue routes it there).
    """


def _check_landing_host(settings: Settings, expected: set[str] | None) -> str:
    here = landing.identity(settings.landing_dir)
    if here is None:
        raise NotTheLandingHost(
            "this host has no landing folder (no landing identity in IL_LANDING_DIR): the claim runs on the "
            "landing host's queue ('landing'), or 'imaging-lifecycle init' makes this one a landing host")
    if expected and here not in expected:
        raise NotTheLandingHost(
            f"this host's landing folder ({here[:9]}) is not the one whose files started this run "
            f"({', '.join(sorted(e[:9] for e in expected))}): route the claim to that host's 'landing' queue")
    return here


#: Uploads to the staging zone at once during a claim (S3 I/O releases the GIL).
STAGE_THREADS = 4


def _stage_one(svc: Services, path: Path, oid: str, *, landing_id: str, scope_id: str, fresh: bool):
    """Stage one claimed local file: (sealed copy, None) or (None, reason code) if it must not be read."""
    from imaging_lifecycle import staging

    try:
        st = os.lstat(path)
    except OSError:
        return None, "UNREADABLE"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        return None, "PATH_TRAVERSAL"  # never follow a link out of the folder
    try:
        return staging.put(svc, path, oid, landing_id=landing_id, scope_id=scope_id, fresh=fresh), None
    except PermissionError:
        return None, "UNREADABLE"


def claim_batch(svc: Services, *, quiet_seconds: float, landing_ids: set[str] | None = None,
                chunk_size: int = CHUNK_SIZE, now: float | None = None, actor: str = "system:ingest/claim") -> Claim:
    """Claim settled landing files (and leftovers of dead batches) as a new batch, staged in S3.

    ``landing_ids``: the landing folders whose files started this run (from the trigger's event);
    this host's must be among them (:class:`NotTheLandingHost`). Each file gets its catalog id
    here: the id travels with the file in one local rename, so a rerun reuses it and the catalog
    can never get the same file twice. The local manifest (id -> source) is written and fsynced
    *before* anything moves; each file is then staged (encrypted, verified), all rows recorded in
    one transaction, and only then the local copies removed. A claim takes at most
    :data:`BATCH_FILES` files, and ``MAX_CHUNKS * chunk_size`` (Airflow's mapped-task limit); the
    rest changes the folder, so the trigger fires again for it.
    """
    from imaging_lifecycle import staging
    from imaging_lifecycle.catalog import StagedFile

    settings = svc.settings
    here = _check_landing_host(settings, landing_ids)
    root = batches_root(settings)
    with _claim_lock(root):
        staging.reap_orphans(svc, here)
        batch_id = new_batch_id()
        batch_dir = root / batch_id
        batch_dir.mkdir(mode=0o700)
        limit = min(MAX_CHUNKS * chunk_size, BATCH_FILES)
        plan: list[tuple[Path, str, str]] = []  # (source path, catalog id, source)
        fresh: set[str] = set()  # catalog ids given now: nothing was ever staged under them
        old_dirs = sorted(p for p in root.iterdir() if p.is_dir() and p != batch_dir)
        for old in old_dirs:  # leftovers of earlier claims that died before staging everything
            sources = _read_manifest(old)["files"]
            for f in sorted(old.glob("*.dcm")):
                plan.append((f, f.stem, sources.get(f.stem, "landing")))
        for f in landing.settled_files(settings.landing_dir, quiet_seconds, now):
            oid = uuid.uuid4().hex
            fresh.add(oid)
            plan.append((f, oid, _source_of(f, settings.landing_dir)))
        plan = plan[:limit]
        _write_json(batch_dir / MANIFEST, {"chunk_size": chunk_size, "files": {oid: src for _, oid, src in plan}})
        for src, oid, _ in plan:
            _move(src, batch_dir / f"{oid}.dcm")
            if not (batch_dir / f"{oid}.dcm").is_symlink():  # a link is quarantined unread, never followed
                os.chmod(batch_dir / f"{oid}.dcm", 0o600)  # a sender's file, now ours alone
        scope_id = staging.scope_for(batch_id)
        files: list[StagedFile] = []
        if plan:
            svc.encrypted.kek_for(scope_id)  # one KEK for the batch, made before the uploads share it
            with ThreadPoolExecutor(STAGE_THREADS) as pool:
                staged = list(pool.map(lambda p: _stage_one(svc, batch_dir / f"{p[1]}.dcm", p[1], landing_id=here,
                                                            scope_id=scope_id, fresh=p[1] in fresh), plan))
            faults.point("ingest.claim_after_upload")
            for c, part in enumerate(even_chunks(list(zip(plan, staged, strict=True)), chunk_size)):
                for (_, oid, source), (sealed, problem) in part:
                    files.append(StagedFile(oid, batch_id, c, source, scope_id, sealed, problem, here))
        first_free = len({f.chunk for f in files})
        adopted = svc.catalog.adopt_staged(batch_id, first_chunk=first_free, chunk_size=chunk_size,
                                           limit=limit - len(files), exclude={oid for _, oid, _ in plan} - fresh)
        svc.catalog.record_staged(batch_id, files, actor=actor, adopted=adopted)
        faults.point("ingest.claim_after_record")
        unreadable = {f.object_id for f in files if f.problem == "UNREADABLE"}
        for _, oid, _ in plan:
            if oid in unreadable:  # nothing was staged: keep the file for whoever fixes its permissions
                keep = settings.landing_dir / UNREADABLE_DIR
                keep.mkdir(mode=0o700, exist_ok=True)
                _move(batch_dir / f"{oid}.dcm", keep / f"{oid}.dcm")
            else:
                (batch_dir / f"{oid}.dcm").unlink(missing_ok=True)
        for d in [*old_dirs, batch_dir]:
            if not any(d.glob("*.dcm")):
                (d / MANIFEST).unlink(missing_ok=True)
                try:
                    os.rmdir(d)  # fails, keeping it, if anything unexpected is left
                except OSError:
                    pass
        landing.remove_empty_dirs(settings.landing_dir)
    n = len(files) + adopted
    chunks = first_free + (adopted + chunk_size - 1) // chunk_size
    return Claim(batch_id, n, list(range(chunks)) if n else [])


# -- one chunk: the mapped task --------------------------------------------------


@dataclass(eq=False)
class _Put:
    """One file's copy on its way into the catalog: uploaded and not yet recorded, or recorded earlier."""

    oid: str
    zone: str
    key: str
    fresh: bool
    sealed: object = None  # our upload (a Sealed), recorded by _record
    copy: object = None  # the copy recorded for this object and zone, once known
    then: Callable | None = None  # run in the recording transaction (the object's VALIDATED)


def _upload(svc: Services, oid: str, staged: Path, *, zone: str, scope_id: str, fresh: bool = False,
            tier: int | None = None, then: Callable | None = None) -> _Put:
    """Encrypt ``staged`` into ``zone`` under a deterministic key, verified; :func:`_record` records it.

    A copy already recorded for this object and zone is reused (nothing is uploaded). ``fresh``: this
    very run registered the object (registration comes before any upload), so no earlier attempt can
    have left a copy or a version: the lookup is skipped.
    """
    key = f"{'objects' if zone == 'archive' else zone}/{oid}"
    put = _Put(oid, zone, key, fresh, then=then)
    if not fresh:
        put.copy = next((c for c in svc.catalog.copies(oid) if c.zone == zone), None)
        if put.copy is not None:
            return put
    # Bound to the tier the header gave (the archive), else to the policy's most sensitive tier (quarantine,
    # fail closed); protect re-encrypts only if the tier it settles on differs.
    tier = svc.policy.highest_tier if tier is None else tier
    put.sealed = svc.encrypted.put(staged, catalog_id=oid, zone=zone, tier=tier, scope_id=scope_id, key=key)
    return put


def _record(svc: Services, puts: list[_Put], *, actor: str) -> None:
    """Record a chunk's uploads in **one** commit, each with its ``then`` (its object's VALIDATED). Idempotent.

    Under the catalog's write lock, each upload is recorded only if no other run (or an earlier file of
    this chunk) recorded a copy of its object and zone meanwhile; else ours is purged and theirs kept.
    Versions an earlier attempt uploaded but never recorded are purged once ours is recorded, so a
    rerun leaves exactly one version. A ``then`` that did not run with a recording (the copy was
    recorded earlier, on its own) runs here too if the object still waits for it.
    """
    from imaging_lifecycle.catalog import states

    if not puts:
        return
    if any(p.sealed is not None for p in puts):
        faults.point("ingest.after_upload")
    ours: list[_Put] = []
    with svc.catalog.transaction() as conn:  # the catalog's write lock: one recorder at a time
        ids = sorted({p.oid for p in puts})
        recorded = {(c.object_id, c.zone): c for cs in svc.catalog.copies_of(ids, session=conn).values()
                    for c in reversed(cs)}  # the first recorded copy of each zone
        waiting = {o.id for o in svc.catalog.get_many(ids, session=conn).values() if o.state == states.RECEIVED}
        for p in puts:
            theirs = recorded.get((p.oid, p.zone))
            if theirs is None and p.sealed is not None:
                p.copy = recorded[(p.oid, p.zone)] = svc.encrypted.record(svc.catalog, p.oid, p.sealed,
                                                                          actor=actor, session=conn)
                ours.append(p)
            elif theirs is not None:
                p.copy = theirs
            if p.then is not None and p.copy is not None and p.oid in waiting:
                p.then(conn, p.copy)
                waiting.discard(p.oid)
    by_zone: dict[str, list] = {}
    for p in puts:
        if p.sealed is not None and p not in ours:
            # Another run stored this file first (two claims' runs on one staged file): keep theirs, drop ours.
            by_zone.setdefault(p.zone, []).append((p.key, p.sealed.version_id))
        elif p in ours and not p.fresh:
            # Versions an earlier attempt uploaded and never recorded, purged only now that ours is recorded:
            # purging before our upload could hit a concurrent run's version just before it records it.
            by_zone.setdefault(p.zone, []).extend(
                (v.key, v.version_id) for v in svc.encrypted.store.versions(p.zone, p.key)
                if v.key == p.key and v.version_id != p.copy.version_id)
    for zone, pairs in by_zone.items():
        if pairs:
            svc.encrypted.store.purge(zone, pairs)


def _done(svc: Services, files: list) -> None:
    from imaging_lifecycle import staging

    faults.point("ingest.before_remove")
    staging.drop(svc, files)


@dataclass
class _Fetched:
    """One staged file on its way in: its plaintext path here, its inspection, or the problem found."""

    staged: object  # a StagedFile
    path: Path | None = None
    insp: object = None  # an Inspection
    problem: str | None = None


def ingest_file(svc: Services, staged, batch_id: str, *, actor: str) -> str:  # noqa: ANN001
    """Take one staged file (a :class:`~imaging_lifecycle.catalog.StagedFile`) into the catalog; the outcome
    name (never a file name or UID). :func:`ingest_files` for one file."""
    return ingest_files(svc, [staged], batch_id, actor=actor)[0]


def ingest_files(svc: Services, files: list, batch_id: str, *, actor: str) -> list[str]:
    """Take staged files into the catalog, in four steps, each over all of them:

    1. fetch and inspect each one (several at once, no catalog write); the plaintext exists on this
       host only while this runs, in its 0700 scratch folder;
    2. register every file in **one** commit, before any upload (a rerun finds each by its id);
    3. store each one (the archive, or quarantine with its reason), several at once, then record every
       copy, each with its object's VALIDATED, in **one** commit;
    4. drop every staged row in one commit and their staged copies in one multi-delete.

    A crash anywhere leaves the staged rows, so the rerun's claim adopts them and this runs again:
    registration returns the same objects, a recorded copy is reused, nothing is stored twice.
    Returns each file's outcome name, in order.
    """
    from imaging_lifecycle import staging

    plaintexts: list[Path] = []  # every file fetched, removed in the end even if another one's fetch failed

    def fetched(staged) -> _Fetched:  # noqa: ANN001
        f = _Fetched(staged, problem=staged.problem)
        if not f.problem:
            try:
                f.path = staging.fetch(svc, staged)
            except staging.StagedCopyMissing:
                f.problem = "STAGED_COPY_MISSING"  # never expected; recorded and raised as an incident
        if f.path is not None:
            plaintexts.append(f.path)
            f.insp = inspect(f.path, f.path.parent)
        return f

    try:
        got = svc.map(fetched, files)
        with svc.catalog.transaction() as conn:  # 2. every file registered: one commit
            regs = [_register(svc, f, batch_id, actor=actor, session=conn) for f in got]
        uploads = svc.map(lambda job: _ingest_registered(svc, *job, actor=actor), list(zip(got, regs, strict=True)))
    finally:
        for path in plaintexts:
            path.unlink(missing_ok=True)
    _record(svc, [put for _, put in uploads if put is not None], actor=actor)  # 3. every copy: one commit
    faults.point("ingest.after_store")
    _done(svc, files)
    return [outcome for outcome, _ in uploads]


def _register(svc: Services, f: _Fetched, batch_id: str, *, actor: str, session):  # noqa: ANN001, ANN202
    oid, source = f.staged.object_id, f.staged.source
    if f.problem:  # found on the landing host (a link, an unreadable file) or here: nothing to store
        return svc.catalog.register(actor=actor, source=source, object_id=oid, batch_id=batch_id,
                                    sha256=None, size=0, quarantine_reason=f.problem, session=session)
    insp = f.insp
    if not insp.ok:
        return svc.catalog.register(actor=actor, source=source, object_id=oid, batch_id=batch_id,
                                    sha256=insp.sha256, size=insp.size, quarantine_reason=insp.reason,
                                    session=session)
    return svc.catalog.register(
        actor=actor, source=source, object_id=oid, batch_id=batch_id, sha256=insp.sha256, size=insp.size,
        sop_instance_uid=insp.sop_instance_uid, study_instance_uid=insp.study_instance_uid,
        series_instance_uid=insp.series_instance_uid, sop_class_uid=insp.sop_class_uid, session=session,
    )


def _ingest_registered(svc: Services, f: _Fetched, reg, *, actor: str) -> tuple[str, _Put | None]:  # noqa: ANN001
    """One registered file's outcome name, and its upload (to the archive, or quarantine), if any."""
    from imaging_lifecycle.catalog import states

    oid, path, insp = f.staged.object_id, f.path, f.insp
    if f.problem:
        return f"quarantined:{f.problem}", None
    if not insp.ok:
        put = _upload(svc, oid, path, zone="quarantine", scope_id=f"quarantine:{oid}", fresh=reg.created)
        return f"quarantined:{insp.reason}", put
    obj = reg.object
    if reg.outcome == "duplicate" and obj.id != oid:
        return "duplicate", None  # same instance, same bytes, stored by an earlier file: nothing to keep
    if reg.outcome == "conflict" or obj.state == states.QUARANTINED:
        put = _upload(svc, obj.id, path, zone="quarantine", scope_id=f"quarantine:{obj.id}",
                      fresh=reg.created and obj.id == oid)
        return "quarantined:DUPLICATE_CONFLICT", put
    if obj.state != states.RECEIVED:
        return "stored", None  # VALIDATED by the run that died after recording it
    # Classified from the header inspection just parsed (the file's one parse), under the policy in
    # force, failing closed. This is a proposal: the copy is bound to its tier, and protect's classify
    # step, after the ingest gate, takes it on (or, under another policy, classifies again).
    proposed = classify(insp.dataset, svc.policy, source=sender_of(f.staged.source))

    def validated(conn, copy) -> None:  # noqa: ANN001 (recorded and VALIDATED: one commit)
        # The staged row goes only after this commit (_done): a crash here leaves it for the rerun's
        # claim to adopt, so the object's batch is gated; dropped with the copy, it would stay OPEN.
        svc.catalog.transition(obj.id, states.VALIDATED, actor=actor, zone="archive", session=conn,
                               ciphertext_sha256=copy.ciphertext_sha256, key_id=copy.key_id, tier=proposed.tier,
                               rule_id=proposed.rule_id, policy_fingerprint=svc.policy.fingerprint)

    put = _upload(svc, obj.id, path, zone="archive", scope_id=f"study:{obj.study_key}",
                  fresh=reg.created and obj.id == oid, tier=proposed.tier, then=validated)
    return "stored", put


def run_chunk(svc: Services, batch_id: str, chunk: int, *, actor: str) -> dict:
    """The mapped ingest task: every file of one chunk. Returns counts by outcome (XCom-safe)."""
    counts: dict[str, int] = {}
    files = svc.catalog.staged(batch_id, chunk)
    for outcome in ingest_files(svc, files, batch_id, actor=actor):
        counts[outcome] = counts.get(outcome, 0) + 1
    scopes = {staged.scope_id for staged in files}
    return {"batch_id": batch_id, "chunk": chunk, "counts": counts, "scopes": sorted(scopes)}


def close_batch(svc: Services, results: list[dict], *, actor: str) -> dict:
    """Gate the batch; mark it INGESTED or GATE_FAILED. Raises GateFailed so nothing moves on."""
    from imaging_lifecycle import staging
    from imaging_lifecycle.gates import GateFailed, enforce_recorded
    from imaging_lifecycle.gates.ingest import check, rows_for

    (batch_id,) = {r["batch_id"] for r in results}
    totals: dict[str, int] = {}
    for r in results:
        for k, v in r["counts"].items():
            totals[k] = totals.get(k, 0) + int(v)
    left = svc.catalog.staged_count(batch_id)
    if left:
        raise RuntimeError(f"batch {batch_id}: {left} staged file(s) not yet ingested; the retry picks them up")
    staging.destroy_scopes(svc, [staging.scope_for(batch_id), *(s for r in results for s in r.get("scopes", ()))],
                           actor=actor)
    summary = {"batch_id": batch_id, "stored": totals.get("stored", 0), "duplicates": totals.get("duplicate", 0),
               "quarantined": sum(v for k, v in totals.items() if k.startswith("quarantined:")),
               "reasons": {k.split(":", 1)[1]: v for k, v in totals.items() if k.startswith("quarantined:")}}
    from imaging_lifecycle.catalog import UnknownObject

    try:
        svc.catalog.get_batch(batch_id)
    except UnknownObject:  # only duplicates: nothing registered, nothing to gate
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
