"""Backup to the second site, restore verification, and an operator's restore.

Replication copies the archive *ciphertext* byte for byte to the object-locked
``backup`` zone on the second S3 site. Nothing is decrypted or re-encrypted:
the backup copy shares the archive copy's data key row (same ``key_id``), so
shredding that one key (or the study's KEK) makes the backup unreadable too,
and key rotation never has to touch the backup. The associated data inside
the ciphertext keeps the zone it was encrypted for (the data key's
``aad_zone``), which is why reading a replica needs :class:`ReplicaSealed`.

A backup is only worth what a restore from it proves, so
:func:`verify_sample` decrypts a deterministic daily slice of the backups
(every object once per cycle, anything never verified at once) and fails
loudly, naming catalog ids only, on the first sign of damage.

Every step function here takes ids, limits and dates and returns a dict of
counts and catalog ids, safe for XCom and logs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from imaging_lifecycle import faults
from imaging_lifecycle.catalog import Catalog, CopyRecord, ObjectRecord, states
from imaging_lifecycle.crypto import AssociatedData, IntegrityError, KeyUnavailable
from imaging_lifecycle.encrypted_store import EncryptedStore, Sealed
from imaging_lifecycle.services import Services, io_map
from imaging_lifecycle.storage import PART_SIZE, ObjectStore, StorageError

__all__ = [
    "BACKUP_ZONE", "SOURCE_ZONE", "FLAG", "LOCK_MODES", "LOCK_MODE_ENV", "ReplicaSealed", "BackupFailed",
    "BackupMismatch", "lock_mode", "sealed_for", "replicate", "sample_day", "is_due",
    "verify_sample", "verify_all", "restore_object",
    "backup_step", "verify_step",
]

BACKUP_ZONE = "backup"
SOURCE_ZONE = "archive"
#: The flag an object gets when its backup does not restore.
FLAG = "BACKUP_MISMATCH"
LOCK_MODE_ENV = "IL_BACKUP_LOCK_MODE"
#: S3 object-lock modes. GOVERNANCE: an account with the bypass permission can
#: still delete (so a mistaken lock can be undone); COMPLIANCE: nobody can,
#: not even root, until the date passes.
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
#: Lock length when neither the caller nor the object gives a date (an object
#: STORED by the protect stage always has its retention deadline).
DEFAULT_LOCK_DAYS = 30
#: A lock date in the past is refused by S3; a replica is locked at least this long.
MIN_LOCK = dt.timedelta(days=1)

#: Why a restore check failed -> reason code (audit detail). All of them flag the object.
FAILURE_REASONS: dict[type, str] = {
    IntegrityError: "INTEGRITY",
    FileNotFoundError: "MISSING",
    KeyUnavailable: "KEY_UNAVAILABLE",
}


def _reason(exc: BaseException) -> str:
    return next((r for t, r in FAILURE_REASONS.items() if isinstance(exc, t)), type(exc).__name__)


class BackupFailed(RuntimeError):
    """Some objects could not be replicated; the message lists their catalog ids only."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


class BackupMismatch(RuntimeError):
    """Restore verification found backups that do not restore; lists catalog ids only."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class ReplicaSealed(Sealed):
    """A :class:`Sealed` whose associated data names the zone it was *encrypted* for.

    A byte-identical replica lives in another zone than the one bound into its
    ciphertext; :class:`~imaging_lifecycle.encrypted_store.EncryptedStore` reads from ``zone``
    and authenticates against :meth:`aad`, so both are right.
    """

    aad_zone: str = SOURCE_ZONE

    def aad(self, catalog_id: str) -> AssociatedData:
        return AssociatedData(catalog_id, self.aad_zone, self.tier, self.dek_id)


def lock_mode() -> str:
    """The backup lock mode from ``IL_BACKUP_LOCK_MODE`` (default GOVERNANCE); a bad value is an error."""
    mode = (os.environ.get(LOCK_MODE_ENV) or "GOVERNANCE").strip().upper()
    if mode not in LOCK_MODES:
        raise ValueError(f"{LOCK_MODE_ENV} must be one of {', '.join(LOCK_MODES)}")
    return mode


def sealed_for(catalog: Catalog, copy: CopyRecord, obj: ObjectRecord) -> ReplicaSealed:
    """How to read ``copy`` back (any zone); raises KeyUnavailable if its data key is destroyed."""
    key = catalog.data_key(copy.key_id) if copy.key_id else None
    if key is None or key["wrapped"] is None:
        raise KeyUnavailable(f"the data key of copy {copy.id} is destroyed or unknown")
    return ReplicaSealed(
        copy.zone, copy.bucket, copy.key, copy.version_id, key["id"], key["kek_ref"], bytes(key["wrapped"]),
        key["aad_tier"], obj.sha256, copy.ciphertext_sha256, obj.size or 0, 0, aad_zone=key["aad_zone"],
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _source_copy(catalog: Catalog, obj: ObjectRecord) -> CopyRecord | None:
    """The archive copy the object's state refers to (its key id), else the newest archive copy."""
    found = catalog.content_copies(obj, (SOURCE_ZONE,))
    return found[0] if found else None


def _sha256_of(store: ObjectStore, zone: str, key: str, version_id: str | None) -> str:
    h = hashlib.sha256()
    with store.open(zone, key, version_id) as resp:
        for chunk in resp.stream(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class _Hashing:
    """A reader that hashes what passes through (what we sent, to compare with the archive record)."""

    def __init__(self, resp):
        self._resp, self.h = resp, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        b = self._resp.read(n) if n is not None and n >= 0 else self._resp.read()
        self.h.update(b)
        return b


def _retain_until(obj: ObjectRecord, now: dt.datetime, retain_until_for, retention_days) -> dt.datetime:
    if retain_until_for is not None:
        until = retain_until_for(obj)
    elif retention_days is not None:
        until = now + dt.timedelta(days=retention_days)
    else:
        until = obj.retention_deadline or now + dt.timedelta(days=DEFAULT_LOCK_DAYS)
    return max(until, now + MIN_LOCK)


def replicate(
    catalog: Catalog,
    store: ObjectStore,
    object_ids: Iterable[str] | None = None,
    *,
    actor: str,
    batch_id: str | None = None,
    limit: int | None = None,
    retain_until_for: Callable[[ObjectRecord], dt.datetime] | None = None,
    retention_days: int | None = None,
    encrypted: EncryptedStore | None = None,
    now: dt.datetime | None = None,
    mode: str | None = None,
) -> dict:
    """Copy each STORED object's archive ciphertext to the backup zone, verify it, move it to BACKED_UP.

    Objects: ``object_ids``, or the STORED objects of ``batch_id`` (or of
    all batches), at most ``limit``. Objects in any other state are skipped.
    The lock date is ``retain_until_for(obj)``, else now + ``retention_days``,
    else the object's retention deadline (never less than a day). The copy
    is verified by the SHA-256 of what the backup site returns and, with
    ``encrypted``, by a full decrypt too.

    Idempotent and resumable: a backup copy already recorded is re-checked
    and reused; a version uploaded by a run that died before recording it is
    adopted if its bytes are right, purged otherwise (locked debris is
    counted in ``leftovers_locked`` and raised as a security alert). Raises
    :class:`BackupFailed` (catalog ids only) after the whole batch if any
    object could not be backed up.
    """
    now = now or _now()
    mode = mode or lock_mode()
    if mode not in LOCK_MODES:
        raise ValueError(f"mode must be one of {', '.join(LOCK_MODES)}")
    if object_ids is None:
        ids = [o.id for o in catalog.objects(batch_id=batch_id, state=states.STORED, limit=limit)]
    else:
        ids = list(object_ids)[:limit] if limit is not None else list(object_ids)
    counts = {"backed_up": 0, "reused": 0, "adopted": 0, "uploaded": 0, "skipped": 0, "leftovers_purged": 0,
              "leftovers_locked": 0}
    failed: dict[str, str] = {}

    def one(oid: str) -> tuple[str, str, dict, _Proven | None]:
        """(oid, "skipped" | "ok:<how>" | a failure reason, this object's leftover counts, the upload proven
        on the way and not yet recorded)."""
        mine = {"leftovers_purged": 0, "leftovers_locked": 0}
        obj = catalog.get(oid)
        if obj.state != states.STORED:
            return oid, "skipped", mine, None
        src = _source_copy(catalog, obj)
        if src is None or src.ciphertext_sha256 is None:
            return oid, "NO_ARCHIVE_COPY", mine, None
        check = None
        if encrypted is not None:
            def check(data: bytes, src=src, obj=obj) -> None:  # noqa: ANN001
                encrypted.verify_blob(sealed_for(catalog, src, obj), oid, data)

        try:
            how, copy, proven = _replicate_one(catalog, store, obj, src, actor=actor, mode=mode, counts=mine,
                                               until=_retain_until(obj, now, retain_until_for, retention_days),
                                               check=check)
        except StorageError:
            return oid, "STORAGE_ERROR", mine, None
        if proven is not None:
            return oid, f"ok:{how}", mine, proven  # checked in full before the upload: recorded with the others below
        if copy is None:
            catalog.audit.append(actor, "copy.verify", object_ref=oid, outcome="failure",
                                 detail={"zone": BACKUP_ZONE, "check": "ciphertext", "reason": how})
            return oid, how, mine, None
        if encrypted is not None:
            try:
                encrypted.verify(sealed_for(catalog, copy, obj), oid)
            except tuple(FAILURE_REASONS) as exc:
                reason = _reason(exc)
                catalog.record_copy_check(copy.id, ok=False, actor=actor, detail={"check": "decrypt", "reason": reason})
                return oid, reason, mine, None
        with catalog.transaction() as conn:
            _backed_up(catalog, oid, copy, how, actor=actor, session=conn)
        return oid, f"ok:{how}", mine, None

    # Several objects at once: each copy is S3 round trips on two sites, which release the GIL.
    done = io_map(one, ids)
    # The copies proven on upload, each recorded with its object's BACKED_UP: one commit for all of them.
    # A crash before it leaves each upload unrecorded: the rerun adopts it (its bytes are checked again).
    proven = [p for _oid, _outcome, _mine, p in done if p is not None]
    if proven:
        with catalog.transaction() as conn:
            recorded = [_record(catalog, store, p, actor=actor, session=conn) for p in proven]
            catalog.transition_many(states.BACKED_UP, [(p.obj.id, {}, {"copy": c.id, "how": p.how})
                                                       for p, c in zip(proven, recorded, strict=True)],
                                    actor=actor, session=conn)
    for oid, outcome, mine, _p in done:
        for k, v in mine.items():
            counts[k] += v
        if outcome == "skipped":
            counts["skipped"] += 1
        elif outcome.startswith("ok:"):
            counts[outcome[3:]] += 1
            counts["backed_up"] += 1
        else:
            failed[oid] = outcome
    result = {**counts, "failed": len(failed), "failed_ids": sorted(failed), "lock_mode": mode}
    if failed:
        raise BackupFailed(f"backup failed for {len(failed)} object(s): {', '.join(sorted(failed))}", result)
    return result


@dataclass(frozen=True)
class _Proven:
    """A backup version whose bytes the site proved on upload and ``check`` decrypted in full: not recorded yet."""

    obj: ObjectRecord
    src: CopyRecord
    version_id: str
    how: str


def _record(catalog: Catalog, store: ObjectStore, p: _Proven, *, actor: str, session) -> CopyRecord:  # noqa: ANN001
    """Record a proven backup copy and its ciphertext check."""
    copy = catalog.add_copy(p.obj.id, zone=BACKUP_ZONE, bucket=store.bucket(BACKUP_ZONE), key=p.src.key, actor=actor,
                            version_id=p.version_id, ciphertext_sha256=p.src.ciphertext_sha256, key_id=p.src.key_id,
                            session=session)
    catalog.audit.append(actor, "copy.verify", object_ref=p.obj.id, session=session,
                         detail={"copy": copy.id, "zone": BACKUP_ZONE, "check": "ciphertext", "how": p.how})
    return copy


def _backed_up(catalog: Catalog, oid: str, copy: CopyRecord, how: str, *, actor: str, session) -> None:  # noqa: ANN001
    catalog.transition(oid, states.BACKED_UP, actor=actor, detail={"copy": copy.id, "how": how}, session=session)


def _replicate_one(catalog: Catalog, store: ObjectStore, obj: ObjectRecord, src: CopyRecord, *, actor: str,
                   mode: str, until: dt.datetime, counts: dict,
                   check: Callable[[bytes], None] | None = None) -> tuple[str, CopyRecord | None, _Proven | None]:
    """``(how, copy, proven)``: how is reused/adopted/uploaded, or a failure reason code with neither.
    ``proven``: uploaded with its hash (the site refuses other bytes) after ``check`` (a full decrypt) ran
    over exactly those bytes; the caller records it. Else ``copy`` is recorded here, and still to be
    decrypted by the caller."""
    want = src.ciphertext_sha256
    every = catalog.copies(obj.id, include_deleted=True)
    recorded = {c.version_id for c in every if c.zone == BACKUP_ZONE}
    for c in every:
        if c.zone == BACKUP_ZONE and c.deleted_at is None and c.ciphertext_sha256 == want:
            try:
                if _sha256_of(store, BACKUP_ZONE, c.key, c.version_id) == want:
                    return "reused", c, None
            except FileNotFoundError:
                pass
    key = src.key
    adopt, debris = None, []
    for v in store.versions(BACKUP_ZONE, key):
        if v.key != key or v.is_delete_marker or v.version_id in recorded:
            continue
        if adopt is None and _sha256_of(store, BACKUP_ZONE, key, v.version_id) == want:
            adopt = v.version_id
        else:
            debris.append((key, v.version_id))
    if debris:
        failures = store.purge(BACKUP_ZONE, debris)
        counts["leftovers_purged"] += len(debris) - len(failures)
        if failures:
            counts["leftovers_locked"] += len(failures)
            catalog.audit.append(actor, "security.alert", object_ref=obj.id, outcome="minor_failure",
                                 detail={"reason": "UNRECORDED_LOCKED_VERSION", "zone": BACKUP_ZONE,
                                         "versions": len(failures)})
    how, decrypted = "adopted", False
    if adopt is None:
        how = "uploaded"
        # A slice's plaintext size is in the catalog, and its ciphertext is within a few percent of it: no
        # HEAD for the length unless the object is near the single-part limit.
        small = obj.size is not None and obj.size < PART_SIZE // 2
        length = None if small else store.size(SOURCE_ZONE, src.key, src.version_id)
        if (small or length < PART_SIZE) and store.proves_checksums(BACKUP_ZONE):
            # Small (a slice): the archive's bytes in memory, checked against the catalog's hash and
            # decrypted with the catalog's key, then uploaded with that hash: the backup site refuses
            # any other bytes, so its copy is proven without reading it back.
            data = store.get(SOURCE_ZONE, src.key, src.version_id)
            if hashlib.sha256(data).hexdigest() != want or len(data) >= PART_SIZE:
                return "SOURCE_MISMATCH", None, None
            if check is not None:
                try:
                    check(data)
                except tuple(FAILURE_REASONS) as exc:
                    return _reason(exc), None, None
                decrypted = True
            try:
                put = store.put(BACKUP_ZONE, key, data, retain_until=until, lock_mode=mode, sha256=want)
            except StorageError as exc:
                if exc.code != "BadDigest":
                    raise
                return "CIPHERTEXT_MISMATCH", None, None  # refused: nothing was stored
            adopt = put.version_id
            faults.point("backup.uploaded")
        else:
            with store.open(SOURCE_ZONE, src.key, src.version_id) as resp:
                reader = _Hashing(resp)
                put = store.put(BACKUP_ZONE, key, reader, length, retain_until=until, lock_mode=mode)
            if reader.h.hexdigest() != want:
                store.purge(BACKUP_ZONE, [(key, put.version_id)])
                return "SOURCE_MISMATCH", None, None
            adopt = put.version_id
            faults.point("backup.uploaded")
            if _sha256_of(store, BACKUP_ZONE, key, adopt) != want:
                store.purge(BACKUP_ZONE, [(key, adopt)])
                return "CIPHERTEXT_MISMATCH", None, None
    proven = _Proven(obj, src, adopt, how)
    if decrypted:
        return how, None, proven
    with catalog.transaction() as conn:
        return how, _record(catalog, store, proven, actor=actor, session=conn), None


# ---------------------------------------------------------------------------
# Restore verification.
# ---------------------------------------------------------------------------


def sample_day(object_id: str, cycle_days: int) -> int:
    """The day of the cycle (0..cycle_days-1) on which this object's backup is checked."""
    return int(hashlib.sha256(object_id.encode()).hexdigest()[:12], 16) % cycle_days


def is_due(copy: CopyRecord, today: dt.date, cycle_days: int) -> bool:
    """Never verified; or not today and (its day of the cycle, or its last check is a cycle old).

    Any ``cycle_days`` consecutive days contain each day of the cycle once,
    so every backup is restored at least once per cycle; the overdue rule
    catches up on days the check did not run.
    """
    if copy.verified_at is None:
        return True
    last = copy.verified_at.date()
    if last >= today:
        return False
    return sample_day(copy.object_id, cycle_days) == today.toordinal() % cycle_days or \
        last <= today - dt.timedelta(days=cycle_days)


def _check_cycle(cycle_days: int) -> int:
    if isinstance(cycle_days, bool) or not isinstance(cycle_days, int) or cycle_days < 1:
        raise ValueError("cycle_days must be a positive int")
    return cycle_days


def verify_sample(catalog: Catalog, store: ObjectStore, encrypted: EncryptedStore, *, today: dt.date,
                  cycle_days: int = 30, actor: str, limit: int | None = None) -> dict:
    """Restore (download, decrypt, hash) today's share of the backups; see :func:`is_due`.

    Each check is recorded on the copy (``verified_at``) and audited
    (``copy.verify``, success or failure with a reason code). A backup that
    does not restore flags its object ``BACKUP_MISMATCH``; after all checks,
    :class:`BackupMismatch` is raised listing the catalog ids, so the task
    fails and its failure callback runs.
    """
    _check_cycle(cycle_days)
    pairs = [(o, c) for o, c in catalog.live_copies_in_zone(BACKUP_ZONE, object_states=[states.BACKED_UP])
             if is_due(c, today, cycle_days)]
    return _verify(catalog, encrypted, pairs[:limit] if limit is not None else pairs, actor=actor,
                   extra={"cycle_days": cycle_days, "day": today.toordinal() % cycle_days})


def verify_all(catalog: Catalog, store: ObjectStore, encrypted: EncryptedStore, *, actor: str) -> dict:
    """Restore-verify every live backup copy of every BACKED_UP object (``verify-backups --all``)."""
    return _verify(catalog, encrypted, catalog.live_copies_in_zone(BACKUP_ZONE, object_states=[states.BACKED_UP]),
                   actor=actor, extra={"all": True})


def _verify(catalog: Catalog, encrypted: EncryptedStore, pairs: list, *, actor: str, extra: dict) -> dict:
    ok, errors = 0, 0
    bad: dict[str, str] = {}
    for obj, copy in pairs:
        try:
            encrypted.verify(sealed_for(catalog, copy, obj), obj.id)
        except tuple(FAILURE_REASONS) as exc:
            reason = _reason(exc)
            with catalog.transaction() as conn:
                catalog.record_copy_check(copy.id, ok=False, actor=actor, session=conn,
                                          detail={"check": "restore", "reason": reason})
                catalog.flag(obj.id, FLAG, actor=actor, detail={"copy": copy.id, "reason": reason}, session=conn)
            bad[obj.id] = reason
            continue
        except StorageError:
            errors += 1  # the site did not answer: not evidence of damage, but the run must not pass
            continue
        catalog.record_copy_check(copy.id, ok=True, actor=actor, detail={"check": "restore"})
        ok += 1
    result = {**extra, "checked": len(pairs), "ok": ok, "mismatch": len(bad), "errors": errors,
              "mismatched_ids": sorted(bad)}
    if bad:
        raise BackupMismatch(
            f"restore verification failed for {len(bad)} object(s), flagged {FLAG}: {', '.join(sorted(bad))}",
            result)
    if errors:
        raise BackupFailed(f"restore verification could not read {errors} backup copies (storage errors)", result)
    return result


# ---------------------------------------------------------------------------
# Restore for an operator.
# ---------------------------------------------------------------------------

def restore_object(svc: Services, object_id: str, out: Path, *, request_id: str | None, actor: str) -> dict:
    """Decrypt one object into ``out`` (0600, appears only if verified): archive first, then the backup.

    Only for the requester of an APPROVED, unexpired ``restore`` request that
    names the object (raises :class:`~imaging_lifecycle.catalog.NotApproved`,
    audited, otherwise). Raises FileExistsError if ``out`` exists, and
    :class:`~imaging_lifecycle.crypto.IntegrityError` if no copy restores.
    Every outcome is audited (``object.export``).
    """
    svc.guard("restore", actor=actor)
    catalog, encrypted = svc.catalog, svc.encrypted
    obj = catalog.get(object_id)
    out = Path(out)
    catalog.approved_request(request_id, action="restore", actor=actor, object_id=obj.id)
    if out.exists() or out.is_symlink():
        raise FileExistsError(f"refusing to overwrite {out}")
    order = {SOURCE_ZONE: 0, BACKUP_ZONE: 1}
    candidates = sorted(catalog.content_copies(obj, tuple(order)), key=lambda c: order[c.zone])  # newest first in each
    tried: list[str] = []
    for copy in candidates:
        try:
            encrypted.restore_to(sealed_for(catalog, copy, obj), obj.id, out)
        except (*FAILURE_REASONS, StorageError) as exc:
            tried.append(_reason(exc))
            catalog.audit.append(actor, "object.access", object_ref=obj.id, outcome="minor_failure",
                                 detail={"copy": copy.id, "zone": copy.zone, "reason": tried[-1]})
            continue
        catalog.audit.append(actor, "object.export", object_ref=obj.id,
                             detail={"copy": copy.id, "zone": copy.zone, "fallback": bool(tried), "action": "restore",
                                     "request": request_id})
        return {"id": obj.id, "zone": copy.zone, "fallback": bool(tried), "size": obj.size}
    catalog.audit.append(actor, "object.export", object_ref=obj.id, outcome="failure",
                         detail={"reason": "NO_READABLE_COPY", "tried": len(tried)})
    raise IntegrityError(f"object {obj.id}: no copy could be restored ({len(tried)} tried)")


# ---------------------------------------------------------------------------
# DAG steps: open what they need from settings, return XCom-safe counts.
# ---------------------------------------------------------------------------


def backup_step(svc: Services, object_ids: list[str] | None = None, *, actor: str, batch_id: str | None = None,
                limit: int = 1000, now: dt.datetime | None = None, full_decrypt: bool = False) -> dict:
    """The backup step: :func:`replicate` on ids, a batch, or up to ``limit`` STORED objects."""
    return replicate(svc.catalog, svc.store, object_ids, actor=actor, batch_id=batch_id, limit=limit, now=now,
                     encrypted=svc.encrypted if full_decrypt else None)


def verify_step(svc: Services, *, actor: str, today: dt.date | None = None, cycle_days: int = 30,
                all_copies: bool = False) -> dict:
    """The restore-verification DAG step (raises :class:`BackupMismatch` on damage)."""
    if all_copies:
        return verify_all(svc.catalog, svc.store, svc.encrypted, actor=actor)
    return verify_sample(svc.catalog, svc.store, svc.encrypted, today=today or _now().date(), cycle_days=cycle_days,
                         actor=actor)
