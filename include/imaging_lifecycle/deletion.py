"""Verified secure deletion: cryptographic erase + purge of every version, then a certificate.

:func:`sweep` (the sweeper DAG's step) finds what is past its deadline;
:func:`delete_candidates` takes explicit ids instead. Both run the safety gate (:mod:`imaging_lifecycle.gates.deletion`)
over the whole candidate list first: one bad candidate and nothing is deleted.

The procedure runs in phases over the whole candidate list, each batched
(one catalog transaction per :data:`BATCH` candidates, one DeleteObjects per
1,000 versions, one version listing per key prefix rather than a HEAD per
object):

1. **Erase.** Objects enter DELETING and every DEK of every copy is destroyed
   in the same catalog transaction. Then each KEK that no live DEK depends
   on any more is destroyed in the key store: a grant's KEK always, a study
   KEK once the whole study is gone. Unreadable everywhere from here on,
   backups included.
2. **Purge** every version and delete marker of every copy in every zone.
   Versions under an object lock that has not expired are refused by the
   store; they stay pending (already unreadable) for a later sweep.
3. **Local files** of the objects left in ingest staging are removed.
4. **Verify**: a fresh listing shows no version left; no DEK is live.
5. **Certify**, last: copies marked deleted, the object DELETED and its
   certificate written to the certificates table and the audit chain, in one
   transaction. So a kill anywhere leaves at worst an object in DELETING
   whose keys are gone; the next sweep resumes it (DELETING is re-entrant),
   and no certificate exists without its deletion.

Everything returned is counts and catalog ids (XCom-safe).
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from imaging_lifecycle import faults, keyseal, staging
from imaging_lifecycle.catalog import Catalog, CopyRecord, ObjectRecord
from imaging_lifecycle.catalog.states import DELETED, DELETING, EXPIRABLE, EXPIRED
from imaging_lifecycle.keystore import KekRef, batched
from imaging_lifecycle.services import Services
from imaging_lifecycle.settings import LOCKED_ZONES

METHOD = "cryptographic_erase+logical_delete"
STANDARD = "NIST-SP-800-88r1"
#: Candidates per catalog transaction.
BATCH = 500
#: Versions per DeleteObjects request (the S3 maximum).
PURGE_REQUEST = 1000
#: A key-prefix group at least this big is listed as one folder, not key by key.
LIST_FOLDER_AT = 20


class DeletionError(RuntimeError):
    """Deletion could not proceed; names ids and counts only."""


@dataclass
class Target:
    """One unit of deletion: a whole object, one expired copy, or an orphaned grant."""

    kind: str  # "object" | "copy" | "grant"
    obj: ObjectRecord
    copies: list[CopyRecord]
    grants: list[dict] = field(default_factory=list)
    deadline: dt.datetime | None = None
    purged_versions: int = 0
    locked: int = 0
    verification: dict = field(default_factory=dict)
    keks: set = field(default_factory=set)

    @property
    def scope(self) -> str:
        if self.kind == "object":
            return "object"
        if self.kind == "copy":
            return f"copy:{self.copies[0].id}"
        return f"grant:{self.grants[0]['id']}"

    @property
    def ref(self) -> str:
        return self.obj.id if self.kind == "object" else f"{self.obj.id}/{self.scope}"


def _chunks(items: list, n: int = BATCH):
    for i in range(0, len(items), n):
        yield items[i:i + n]


# -- planning ----------------------------------------------------------------------


def plan(cat: Catalog, now: dt.datetime, limit: int) -> list[Target]:
    """Everything due at ``now``: resumed deletions first, then expired objects, copies and orphan grants."""
    objs: dict[str, ObjectRecord] = {}
    for o in cat.deletion_pending(limit) + cat.expired(now, limit).objects:
        objs.setdefault(o.id, o)
    targets: list[Target] = []
    copies = cat.copies_of(list(objs))
    for oid, o in objs.items():
        targets.append(Target("object", o, copies[oid], deadline=o.retention_deadline))
    exp = cat.expired(now, limit)
    lone = [c for c in exp.copies if c.object_id not in objs]
    owners = cat.get_many(sorted({c.object_id for c in lone}))
    for c in lone:
        targets.append(Target("copy", owners[c.object_id], [c], deadline=c.deadline))
    orphans = [g for g in cat.grants_where(expired_at=now, limit=limit) if g["copy_id"] is None]
    owners = cat.get_many(sorted({g["object_id"] for g in orphans}))
    for g in orphans:
        if g["object_id"] not in objs and not owners[g["object_id"]].legal_hold:
            targets.append(Target("grant", owners[g["object_id"]], [], [g], deadline=g["deadline"]))
    _attach_grants(cat, targets)
    return targets


def _attach_grants(cat: Catalog, targets: list[Target]) -> None:
    by_copy = {c.id: t for t in targets if t.kind != "grant" for c in t.copies}
    for g in cat.grants_where(copy_ids=list(by_copy)):
        by_copy[g["copy_id"]].grants.append(g)


def targets_for_ids(cat: Catalog, object_ids: list[str]) -> list[Target]:
    """Whole-object targets for explicit ids (the gate then decides whether they may go)."""
    objs = cat.get_many(list(object_ids))
    missing = [i for i in object_ids if i not in objs]
    if missing:
        raise DeletionError(f"{len(missing)} unknown catalog id(s), e.g. {missing[0]}")
    copies = cat.copies_of(list(objs))
    targets = [Target("object", o, copies[o.id], deadline=o.retention_deadline) for o in objs.values()]
    _attach_grants(cat, targets)
    return targets


def gate_rows(svc: Services, targets: list[Target], now: dt.datetime) -> list[dict]:
    """One gate row per target, from fresh catalog reads (a hold set since planning counts).

    Whether an archived object must have a backup copy is its tier's policy
    (an unclassified object counts as the most sensitive tier). Only objects
    whose primary copy is in the archive zone are asked: a quarantined object
    (no zone) never had, and must never get, a backup.
    """
    cat, policy = svc.catalog, svc.policy
    fresh = cat.get_many([t.obj.id for t in targets])
    all_copies = {}
    rows = []
    for t in targets:
        o = fresh[t.obj.id]
        backup_ok = True
        if t.kind == "object" and o.state != DELETING and o.zone == "archive" \
                and policy.tier(o.tier if o.tier is not None else policy.highest_tier).handling.backup_required:
            if o.id not in all_copies:
                all_copies[o.id] = cat.copies(o.id, include_deleted=True)
            backup_ok = any(c.zone == "backup" for c in all_copies[o.id])
        rows.append({
            "ref": t.ref,
            "kind_state": f"{t.kind}:{o.state}",
            "overdue_seconds": None if t.deadline is None else int((now - t.deadline).total_seconds()),
            "legal_hold": bool(o.legal_hold),
            "backup_ok": backup_ok,
        })
    return rows


# -- the procedure -----------------------------------------------------------------


#: How far ahead of the wall clock a sweep's "now" may be (a scheduler's data interval, clock skew).
CLOCK_TOLERANCE = dt.timedelta(minutes=15)


class FutureClockRefused(PermissionError):
    """A sweep at a future "now" would delete early; only a test clock (``IL_TEST_CLOCK=1``) may do that."""


def check_clock(svc: Services, now: dt.datetime, *, actor: str) -> None:
    """Refuse a "now" in the future unless this process runs the test clock; audited either way."""
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if now <= dt.datetime.now(dt.timezone.utc) + CLOCK_TOLERANCE:
        return
    if svc.settings.test_clock:  # allowed, never silently: whoever set IL_TEST_CLOCK is on the trail
        svc.catalog.audit.append(actor, "security.alert", outcome="minor_failure",
                                 detail={"reason": "TEST_CLOCK", "action": "sweep"})
        return
    svc.catalog.audit.append(actor, "security.alert", outcome="major_failure",
                             detail={"reason": "FUTURE_CLOCK", "action": "sweep"})
    raise FutureClockRefused("refusing to sweep at a future time: early deletion needs an approved early_delete "
                             "access request")


def sweep(svc: Services, now: dt.datetime, *, actor: str, limit: int = 1000) -> dict:
    """The sweeper DAG step: delete everything past its deadline at ``now`` (at most ``limit`` of each kind).

    ``now`` may not be in the future (see :func:`check_clock`).
    """
    svc.guard("sweep", actor=actor)
    check_clock(svc, now, actor=actor)
    return _run(svc, plan(svc.catalog, now, limit), now, actor=actor)


def delete_candidates(svc: Services, object_ids: list[str], now: dt.datetime, *, actor: str) -> dict:
    """Delete these objects whole, if the gate lets every one of them go (else nothing is deleted)."""
    svc.guard("delete", actor=actor)
    check_clock(svc, now, actor=actor)
    return _run(svc, targets_for_ids(svc.catalog, object_ids), now, actor=actor)


def _run(svc: Services, targets: list[Target], now: dt.datetime, *, actor: str) -> dict:
    from imaging_lifecycle.gates import enforce_recorded
    from imaging_lifecycle.gates.deletion import check

    out = {"candidates": len(targets), "objects_deleted": 0, "copies_deleted": 0, "grants_erased": 0,
           "certificates": 0, "pending_locked": 0, "failed": 0, "gate": None}
    if not targets:
        keyseal.reseal_if_needed(svc, actor=actor)  # a rotation's destroyed versions, or a crash after erase
        return out
    now = now.astimezone(dt.timezone.utc)
    seconds = out["phase_seconds"] = {}  # where a sweep's time goes (the sweeper's log, make bench)
    with _timed(seconds, "gate"):
        result = check(gate_rows(svc, targets, now))
        out["gate"] = result.summary()
        enforce_recorded(svc.catalog, result, actor=actor)  # GateFailed: nothing was touched
    with _timed(seconds, "erase"):
        _erase(svc, targets, actor=actor)
    faults.point("deletion.after_erase")
    with _timed(seconds, "purge"):
        _purge(svc, targets)
    faults.point("deletion.after_purge")
    with _timed(seconds, "verify"):
        _remove_local(svc, targets)
        _verify(svc, targets)
    faults.point("deletion.before_certify")
    with _timed(seconds, "certify"):
        done = _certify(svc, targets, actor=actor)
    out["certificates"] = len(done)
    out["objects_deleted"] = sum(1 for t in done if t.kind == "object")
    out["copies_deleted"] = sum(len(t.copies) for t in done)
    out["grants_erased"] = sum(len(t.grants) for t in done)
    out["pending_locked"] = sum(1 for t in targets if t.locked and t not in done)
    out["failed"] = len(targets) - len(done) - out["pending_locked"]
    return out


@contextmanager
def _timed(into: dict, phase: str) -> Iterator[None]:
    t = time.perf_counter()
    try:
        yield
    finally:
        into[phase] = round(time.perf_counter() - t, 3)


def _erase(svc: Services, targets: list[Target], *, actor: str) -> None:
    """Step 1: DELETING + every DEK destroyed (catalog), then KEKs nothing else needs (key store)."""
    cat = svc.catalog
    for batch in _chunks(targets):
        with cat.transaction() as s:
            for t in batch:
                if t.kind == "object":
                    if t.obj.state in EXPIRABLE:
                        cat.transition(t.obj.id, EXPIRED, actor=actor, session=s)
                    cat.transition(t.obj.id, DELETING, actor=actor, session=s)
            cat.destroy_data_keys([(c.key_id, t.obj.id) for t in batch for c in t.copies if c.key_id],
                                  actor=actor, session=s)
    faults.point("deletion.after_dek_destroy")
    deks = sorted({c.key_id for t in targets for c in t.copies if c.key_id})
    rows = cat.data_key_rows(deks)
    kek_owner: dict[str, str] = {}
    ks = svc.keystore
    for t in targets:
        for c in t.copies:
            if c.key_id in rows:
                t.keks.add(KekRef.parse(rows[c.key_id]["kek_ref"]).kek_id)
        for g in t.grants:  # a grant whose copy was never recorded: find its KEK by scope
            ref = ks.current(g["kek_scope"])
            if ref is not None:
                t.keks.add(ref.kek_id)
        for k in t.keks:
            kek_owner.setdefault(k, t.obj.id)
    alive = [k for k in sorted(kek_owner) if not _kek_gone(ks, k)]
    refs = {k: [str(r) for r in ks.versions(k)] for k in alive}
    live = cat.live_data_keys_by_ref([r for rs in refs.values() for r in rs])
    doomed = [k for k in alive if not any(live.get(r) for r in refs[k])]
    # Audit first: a crash between the two repeats the (idempotent) destroys and their records,
    # rather than leaving a destroyed key without one.
    for batch in _chunks(doomed):
        with cat.transaction() as s:
            for k in batch:
                cat.audit.append(actor, "key.destroy", object_ref=kek_owner[k], detail={"kek": k}, session=s)
    with batched(ks):  # one key-store write for the whole sweep (a LocalKeyStore write costs its whole size)
        for k in doomed:
            ks.destroy(k)
    # Every copy of a destroyed key goes too: a new master-key generation, the DR export replaced.
    # The key store remembers a destruction not yet re-sealed, so a crash here is caught next sweep.
    keyseal.reseal_if_needed(svc, actor=actor)


def _kek_gone(ks, kek_id: str) -> bool:
    try:
        return ks.is_destroyed(kek_id)
    except Exception:  # unknown to this key store: nothing to destroy
        return True


def _copy_keys(t: Target) -> list[tuple[str, str]]:
    keys = [(c.zone, c.key) for c in t.copies]
    keys += [("cache", g["key"]) for g in t.grants if g["copy_id"] is None]
    return keys


def _listing(svc: Services, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], list]:
    """Every version and delete marker of the wanted (zone, key)s: one listing per folder when many."""
    found: dict[tuple[str, str], list] = defaultdict(list)
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for zone, key in wanted:
        groups[(zone, key.rsplit("/", 1)[0] + "/" if "/" in key else "")].append(key)
    for (zone, folder), keys in groups.items():
        prefixes = [folder] if len(keys) >= LIST_FOLDER_AT else keys
        for prefix in prefixes:
            for v in svc.store.versions(zone, prefix):
                if (zone, v.key) in wanted:
                    found[(zone, v.key)].append(v)
    return found


def _purge(svc: Services, targets: list[Target]) -> None:
    """Step 2: remove every version and delete marker (DeleteObjects, 1,000 per request)."""
    wanted = {zk for t in targets for zk in _copy_keys(t)}
    found = _listing(svc, wanted)
    by_zone: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for (zone, _key), versions in found.items():
        by_zone[zone].extend((v.key, v.version_id) for v in versions)
    # One DeleteObjects per 1,000 versions, several requests at once (the store's deletes, not our
    # CPU, bound this step; the batches are independent and each is idempotent).
    batches = [(zone, pairs[i:i + PURGE_REQUEST]) for zone, pairs in by_zone.items()
               for i in range(0, len(pairs), PURGE_REQUEST)]
    failed: set[tuple[str, str]] = set()
    for (zone, _pairs), errors in zip(batches, svc.map(lambda b: svc.store.purge(*b), batches), strict=True):
        for key, _vid, _code in errors:
            failed.add((zone, key))
    for t in targets:
        keys = _copy_keys(t)
        t.purged_versions = sum(len(found.get(zk, [])) for zk in keys if zk not in failed)
        t.locked = sum(1 for zk in keys if zk in failed and zk[0] in LOCKED_ZONES)


def _remove_local(svc: Services, targets: list[Target]) -> None:
    """Step 3: a staged copy of these objects still waiting in the staging zone (an ingest that died
    after storing the original, before dropping it), with its row."""
    ids = sorted(t.obj.id for t in targets if t.kind == "object")
    if not ids:
        return
    staging.drop(svc, list(svc.catalog.staged_rows(ids)))


def _verify(svc: Services, targets: list[Target]) -> None:
    """Step 4: a fresh listing finds no version; no DEK is live; each KEK is destroyed or still needed."""
    wanted = {zk for t in targets for zk in _copy_keys(t)}
    left = _listing(svc, wanted)
    rows = svc.catalog.data_key_rows(sorted({c.key_id for t in targets for c in t.copies if c.key_id}))
    for t in targets:
        remaining = sum(len(left.get(zk, [])) for zk in _copy_keys(t))
        live = sum(1 for c in t.copies if c.key_id and rows.get(c.key_id, {}).get("live"))
        shared = [k for k in t.keks if not _kek_gone(svc.keystore, k)]
        t.verification = {
            "versions_remaining": remaining,
            "data_keys_live": live,
            "kek_destroyed": not shared,
            "kek_shared_with_live_data": bool(shared),
            "unwrap_possible": live > 0,
            "result": "pass" if remaining == 0 and live == 0 else "fail",
        }


def _certify(svc: Services, targets: list[Target], *, actor: str) -> list[Target]:
    """Step 5, last: mark deleted and certify the targets that verified, one transaction per batch."""
    cat = svc.catalog
    done = [t for t in targets if t.verification.get("result") == "pass"]
    for batch in _chunks(done):
        with cat.transaction() as s:  # per object: its copies, its grants, DELETED, then its certificate
            cat.mark_copies_deleted([c.id for t in batch for c in t.copies], actor=actor, session=s)
            cat.mark_grants_erased([g["id"] for t in batch for g in t.grants], actor=actor, session=s)
            for t in batch:
                if t.kind == "object":
                    cat.transition(t.obj.id, DELETED, actor=actor, session=s)
            completed = _iso(dt.datetime.now(dt.timezone.utc))
            cat.add_certificates([(t.obj.id, t.scope, {
                "object": t.obj.id, "scope": t.scope, "tier": t.obj.tier,
                "zones": sorted({zk[0] for zk in _copy_keys(t)}),
                "copies": len(t.copies), "versions_purged": t.purged_versions,
                "method": METHOD, "standard": STANDARD, "sanitization": "purge",
                "actor": actor, "completed_at": completed, "verification": t.verification,
            }) for t in batch], actor=actor, session=s)
    return done


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def certificates(svc: Services, catalog_id: str) -> list[dict]:
    """The deletion certificates of ``catalog_id`` (what ``imaging-lifecycle certificate`` exports)."""
    cat = svc.catalog
    cat.get(catalog_id)  # UnknownObject for an unknown id
    return cat.certificates(catalog_id)


__all__ = ["sweep", "delete_candidates", "check_clock", "FutureClockRefused",
           "plan", "gate_rows", "certificates", "Target", "DeletionError",
           "METHOD", "STANDARD", "BATCH", "DELETED"]
