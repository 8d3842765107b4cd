"""Retention: deadlines, the cache grant, legal holds, stale local plaintext, Airflow's traces.

Every deadline is computed when something enters a zone and stored in the
catalog (``objects.retention_deadline`` for the primary copy, ``copies.deadline``
for a working copy), so the sweeper (:mod:`imaging_lifecycle.deletion`) only
compares indexed timestamps with ``now``.

Every term comes from the policy in force (``svc.policy``): the tier's own
retention for a zone, else the policy's zone default. A working copy is made
only in a zone the object's tier allows, and never lives longer than the
tier's cache term, itself never more than :data:`CACHE_HARD_MAX` (the
hospitals' 72-hour rule, enforced when the policy is loaded).

``now`` is a parameter everywhere: the DAG tasks pass their run's data
interval, so tests and backfills are exact. Only an interactive request with
no ``now`` (``retrieve`` from the command line) reads the wall clock.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imaging_lifecycle.policy import CACHE_HARD_MAX
from imaging_lifecycle.services import Services

#: Local folders (relative to the state dir) where plaintext may sit; the landing folder is added.
LOCAL_PLAINTEXT_DIRS = ("ingest", "tmp")
#: File names in those folders that are bookkeeping, not content.
_BOOKKEEPING_SUFFIXES = (".id", ".idtmp", ".json", ".tmp", ".lock", "-id")  # "-id": the landing identity
CACHE_ZONE = "cache"


class RetentionError(ValueError):
    """A retention request was refused (the message names ids and limits, never values)."""


class GrantRefused(RetentionError):
    """A cache grant cannot be made (not readable, a tier without a cache zone, or invalid hours)."""


def _tier_of(svc: Services, obj) -> int:  # noqa: ANN001
    """The object's tier; an unclassified object counts as the policy's most sensitive tier."""
    return obj.tier if obj.tier is not None else svc.policy.highest_tier


def deadline_for(svc: Services, tier: int, zone: str, entered_at: dt.datetime) -> dt.datetime:
    """When something of ``tier`` that entered ``zone`` at ``entered_at`` must be gone, by the policy."""
    if entered_at.utcoffset() is None:
        raise RetentionError("entered_at must be timezone-aware")
    try:
        term = svc.policy.retention_for(tier, zone)
    except KeyError as exc:
        raise RetentionError(str(exc.args[0])) from None
    return entered_at + term


def assign_missing_deadlines(svc: Services, *, now: dt.datetime, actor: str, limit: int = 1000) -> dict:
    """Give objects that reached a resting state without a deadline their deadline (DAG step).

    Quarantined objects are registered without one; they get ``created_at +
    quarantine term``. Stored objects missing one (should not happen, the
    protect stage sets it) get their primary zone's term from ``now``.
    """
    from imaging_lifecycle.catalog import states

    cat = svc.catalog
    n = 0
    for obj in cat.without_deadline([states.QUARANTINED, states.STORED, states.BACKED_UP], limit):
        if obj.state == states.QUARANTINED:
            when = deadline_for(svc, _tier_of(svc, obj), "quarantine", obj.created_at)
        else:
            when = deadline_for(svc, _tier_of(svc, obj), obj.zone or "archive", now)
        cat.set_retention_deadline(obj.id, when, actor=actor, detail={"zone": obj.zone or "quarantine"})
        n += 1
    return {"deadlines_set": n}


# -- the cache grant -------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """A handed-out working copy: ``id`` is what the operator keeps; the deadline stays in the catalog."""

    id: str
    object_id: str
    hours: int

    def public(self) -> dict:
        return {"grant_id": self.id, "object_id": self.object_id, "hours": self.hours}


def _check_hours(hours: int | None) -> int | None:
    if hours is None:
        return None
    if isinstance(hours, bool) or not isinstance(hours, int) or hours < 1:
        raise GrantRefused("hours must be a whole number of hours, at least 1")
    if dt.timedelta(hours=hours) > CACHE_HARD_MAX:
        raise GrantRefused(f"hours must be at most {CACHE_HARD_MAX // dt.timedelta(hours=1)} (the cache rule)")
    return hours


#: Object states whose primary copy may be handed out as a working copy.
READABLE_STATES = frozenset({"VALIDATED", "CLASSIFIED", "DEIDENTIFIED", "NEEDS_REVIEW", "PROTECTED",
                             "STORED", "BACKED_UP"})


def cache_terms(svc: Services, obj, hours: int | None) -> tuple[int, int]:  # noqa: ANN001
    """``(granted hours, tier limit in hours)`` for a working copy of ``obj``; refuses a tier without a cache.

    The grant is capped at the tier's cache term; asking for nothing gets the whole term.
    """
    tier = _tier_of(svc, obj)
    handling = svc.policy.tier(tier).handling
    if CACHE_ZONE not in handling.zones:
        raise GrantRefused(f"object {obj.id}: tier {tier} ({svc.policy.tier(tier).name}) allows no copy in the "
                           f"{CACHE_ZONE} zone (its zones are {', '.join(handling.zones)})")
    limit = svc.policy.retention_for(tier, CACHE_ZONE) // dt.timedelta(hours=1)
    if limit < 1:
        raise GrantRefused(f"object {obj.id}: tier {tier} keeps cache copies for less than an hour")
    asked = _check_hours(hours)
    return (limit if asked is None else min(asked, limit)), limit


def grant_copy(svc: Services, obj, src, size: int, *, hours: int | None, actor: str, now: dt.datetime,  # noqa: ANN001
               request_id: str | None = None, not_after: dt.datetime | None = None, verify: bool = True) -> Grant:
    """Encrypt plaintext ``src`` into the cache zone under a fresh KEK (scope ``grant:<id>``).

    The grant row (who asked, under which request, deadline) is committed
    before the upload, so a crash at any point leaves an expiring grant the
    sweeper erases.
    """
    granted, limit = cache_terms(svc, obj, hours)
    tier = _tier_of(svc, obj)
    deadline = now + dt.timedelta(hours=granted)
    if not_after is not None:  # never past the approval it was made under
        deadline = min(deadline, not_after)
    gid = uuid.uuid4().hex
    key = f"{CACHE_ZONE}/{gid}"
    scope = f"grant:{gid}"
    svc.catalog.add_grant(gid, obj.id, key=key, kek_scope=scope, deadline=deadline, actor=actor,
                          request_id=request_id, detail={"hours": granted, "asked": hours, "tier_limit": limit})
    sealed = svc.encrypted.put(src, catalog_id=obj.id, zone=CACHE_ZONE, tier=tier, scope_id=scope, key=key,
                               size=size, verify=verify)
    with svc.catalog.transaction() as s:
        copy = svc.encrypted.record(svc.catalog, obj.id, sealed, actor=actor, deadline=deadline, session=s)
        svc.catalog.attach_grant_copy(gid, copy.id, session=s)
    return Grant(gid, obj.id, granted)


def retrieve(svc: Services, catalog_id: str, *, request_id: str | None, actor: str, hours: int | None = None,
             now: dt.datetime | None = None) -> Grant:
    """Re-encrypt a working copy of ``catalog_id`` into the cache zone for ``actor``; returns the grant.

    Only under an APPROVED ``working_copy`` request of ``actor`` that names the
    object (``catalog.approved_request``, audited either way); the copy never
    outlives the approval. Refused before anything is decrypted when the
    object's tier allows no cache copy; ``hours`` is capped at the tier's cache
    term. The plaintext never touches disk: the primary copy is decrypted (and
    verified) as a stream straight into the new encryption.
    """
    svc.guard("working_copy", actor=actor)
    _check_hours(hours)
    now = now or dt.datetime.now(dt.timezone.utc)
    req = svc.catalog.approved_request(request_id, action="working_copy", actor=actor, object_id=catalog_id, now=now)
    obj = svc.catalog.get(catalog_id)
    if obj.state not in READABLE_STATES:
        raise GrantRefused(f"object {catalog_id} is {obj.state}: no working copy can be made")
    cache_terms(svc, obj, hours)  # refuse a tier without a cache before decrypting anything
    primary = svc.catalog.content_copies(obj, (obj.zone or "archive",))
    if not primary:
        raise GrantRefused(f"object {catalog_id} has no live copy in its primary zone")
    sealed = svc.catalog.sealed(primary[0], obj.sha256, obj.size)
    with svc.encrypted.open(sealed, catalog_id) as reader:
        return grant_copy(svc, obj, reader, obj.size, hours=hours, actor=actor, now=now, request_id=request_id,
                          not_after=req["expires_at"])


@dataclass(frozen=True)
class GrantStream:
    """A live grant's working copy on its way out: ``chunks`` decrypts and authenticates as it is read."""

    grant_id: str
    object_id: str
    size: int
    chunks: Iterator[bytes]


def open_grant(svc: Services, grant_id: str, *, actor: str, now: dt.datetime | None = None,
               chunk: int = 1 << 20) -> GrantStream:
    """The plaintext of a live grant's copy, for the person it was approved for only.

    Checked on every read: the grant exists, was made under an access request,
    belongs to ``actor``, is not erased, is before its deadline, and its copy is
    live. Every read and every refusal is audited (``grant.read``). The stream
    checks every GCM tag as it goes and the recorded SHA-256 at its end (a
    damaged copy breaks off with :class:`~imaging_lifecycle.crypto.IntegrityError`).
    """
    from imaging_lifecycle.catalog import NotApproved, UnknownObject

    svc.guard("working_copy", actor=actor)
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        g = svc.catalog.grant(grant_id)
    except (UnknownObject, ValueError):
        svc.catalog.audit.append(actor, "grant.read", outcome="minor_failure", detail={"reason": "NO_GRANT"})
        raise NotApproved("no such grant", "NO_GRANT") from None
    copy = next((c for c in svc.catalog.copies(g["object_id"]) if c.id == g["copy_id"]), None)
    reason = None
    if g["actor"] != actor or g["request_id"] is None:
        reason = "NOT_THE_REQUESTER"
    elif g["erased_at"] is not None or now >= g["deadline"] or copy is None:
        reason = "GRANT_NOT_LIVE"
    if reason:
        svc.catalog.audit.append(actor, "grant.read", object_ref=g["object_id"], outcome="failure",
                                 detail={"grant": grant_id, "live": reason != "GRANT_NOT_LIVE", "reason": reason})
        raise NotApproved(f"grant {grant_id}: {reason}", reason)
    obj = svc.catalog.get(g["object_id"])
    sealed = svc.catalog.sealed(copy, obj.sha256, obj.size)
    reader = svc.encrypted.open(sealed, obj.id)  # unwraps the grant's key now: refused here, not mid-stream
    svc.catalog.audit.append(actor, "grant.read", object_ref=obj.id,
                             detail={"grant": grant_id, "live": True, "request": g["request_id"]})

    def chunks() -> Iterator[bytes]:
        with reader:
            while block := reader.read(chunk):
                yield block

    return GrantStream(grant_id, obj.id, obj.size, chunks())


def read_grant(svc: Services, grant_id: str, out_path: Path, *, actor: str, now: dt.datetime | None = None) -> str:
    """:func:`open_grant` into a new 0600 file ``out_path``; returns the SHA-256 of what was written."""
    import hashlib

    stream = open_grant(svc, grant_id, actor=actor, now=now)
    digest = hashlib.sha256()
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        for block in stream.chunks:
            digest.update(block)
            fh.write(block)
    return digest.hexdigest()


# -- legal hold --------------------------------------------------------------------


def set_legal_hold(svc: Services, catalog_id: str, held: bool, *, actor: str, request_id: str | None = None) -> dict:
    """Place or release a legal hold (audited either way); a held object is never deleted.

    Anyone with the right to run this may place a hold (it only stops
    deletion); releasing one needs an approved ``release_hold`` request.
    """
    svc.guard("legal_hold" if held else "release_hold", actor=actor)
    if not held:
        svc.catalog.approved_request(request_id, action="release_hold", actor=actor, object_id=catalog_id)
    rec = svc.catalog.set_legal_hold(catalog_id, held, actor)
    return {"object_id": rec.id, "legal_hold": rec.legal_hold, "state": rec.state}


def delete_early(svc: Services, catalog_id: str, *, request_id: str | None, actor: str, now: dt.datetime) -> dict:
    """Bring an object's deadline forward to ``now`` under an approved ``early_delete`` request (the sweeper
    then deletes, verifies and certifies it as any other)."""
    svc.guard("early_delete", actor=actor)
    svc.catalog.approved_request(request_id, action="early_delete", actor=actor, object_id=catalog_id, now=now)
    rec = svc.catalog.set_retention_deadline(catalog_id, now, actor=actor,
                                             detail={"reason": "EARLY_DELETE", "request": request_id})
    return {"object_id": catalog_id, "deadline": now.isoformat(), "state": rec.state if rec else None}


# -- stale local plaintext ---------------------------------------------------------


def _local_files(settings) -> list[tuple[str, Path]]:
    roots = [("landing", settings.landing_dir)] + [(d, settings.state_dir / d) for d in LOCAL_PLAINTEXT_DIRS]
    out = []
    for label, root in roots:
        if not root.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                if not name.endswith(_BOOKKEEPING_SUFFIXES):
                    out.append((label, Path(dirpath) / name))
    return out


def stale_local_files(svc: Services, *, now: dt.datetime, actor: str) -> dict:
    """Hold local plaintext to the cache rule: delete what is stored elsewhere, alert on the rest.

    A file older than the policy's cache term (by mtime, against ``now``) is deleted if
    its SHA-256 is the content of a catalog object with a live stored copy;
    otherwise it is stuck, and each folder with stuck files raises one
    ``security.alert`` (counts only). Nothing is kept silently.
    """
    from imaging_lifecycle.crypto import sha256_file

    settings, cat = svc.settings, svc.catalog
    cutoff = (now - svc.policy.retention.cache).timestamp()
    stale: list[tuple[str, Path, str]] = []
    for label, path in _local_files(settings):
        try:
            if path.is_symlink() or not path.is_file():
                continue
            if path.stat().st_mtime > cutoff:
                continue
            stale.append((label, path, sha256_file(path)))
        except FileNotFoundError:  # removed by a concurrent ingest: not ours to count
            continue
    stored = cat.stored_sha256([d for _, _, d in stale]) if stale else set()
    deleted: dict[str, int] = {}
    stuck: dict[str, int] = {}
    for label, path, digest in stale:
        if digest in stored:
            path.unlink(missing_ok=True)
            deleted[label] = deleted.get(label, 0) + 1
        else:
            stuck[label] = stuck.get(label, 0) + 1
    for label, n in deleted.items():
        cat.audit.append(actor, "copy.delete", detail={"local": label, "files": n, "reason": "STALE_PLAINTEXT"})
    for label, n in stuck.items():
        cat.audit.append(actor, "security.alert", outcome="major_failure",
                         detail={"reason": "STALE_PLAINTEXT_NOT_STORED", "local": label, "files": n})
    return {"deleted": sum(deleted.values()), "alerts": sum(stuck.values()), "stuck_by_folder": stuck}


# -- Airflow's own traces ----------------------------------------------------------


def prune_airflow_runs(svc: Services, *, now: dt.datetime, max_age: dt.timedelta) -> dict:
    """Delete Airflow's finished DAG runs older than ``max_age``: their task instances and XCom go with them.

    Through Airflow's REST API (``svc.airflow_api``): a task never touches the
    metadata database. Counts only are returned.
    """
    if now.utcoffset() is None:
        raise RetentionError("now must be timezone-aware")
    runs = svc.airflow_api.finished_runs_before(now - max_age)
    deleted = sum(svc.airflow_api.delete_run(dag_id, run_id) for dag_id, run_id in runs)
    return {"runs_deleted": deleted, "older_than_days": max_age.days}


def prune_log_folder(log_dir: Path, *, now: dt.datetime, max_age: dt.timedelta) -> dict:
    """Delete task log files older than ``max_age`` under ``log_dir`` (and the folders left empty)."""
    cutoff = (now - max_age).timestamp()
    removed = 0
    if not Path(log_dir).is_dir():
        return {"log_files_removed": 0}
    for dirpath, _dirs, files in os.walk(log_dir, topdown=False):
        for name in files:
            p = Path(dirpath) / name
            try:
                if not p.is_symlink() and p.stat().st_mtime <= cutoff:
                    p.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        if Path(dirpath) != Path(log_dir):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
    return {"log_files_removed": removed}
