"""Retention: deadlines, the 72-hour cache grant, legal holds, stale local plaintext, Airflow's traces.

Every deadline is computed when something enters a zone and stored in the
catalog (``objects.retention_deadline`` for the primary copy, ``copies.deadline``
for a working copy), so the sweeper (:mod:`imaging_lifecycle.deletion`) only
compares indexed timestamps with ``now``. ``now`` is always passed in (the
DAG run's data interval), never read from the wall clock here, so tests and
backfills are exact.

Retention comes from the policy as a callable ``retention(tier, zone) ->
timedelta``. Until the policy module is wired in, :data:`DEFAULT_RETENTION`
(the issue's defaults, as data) answers. Whatever the policy says, a cache
copy never lives longer than :data:`CACHE_MAX` (the hospitals' hard rule).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from imaging_lifecycle.settings import Settings, load_settings

Retention = Callable[[int, str], dt.timedelta]
BackupRequired = Callable[[int], bool]

#: The hard limit of the cache zone, and of plaintext left on local disk.
CACHE_MAX = dt.timedelta(hours=72)
_YEAR = dt.timedelta(days=365)

#: zone -> tier -> retention; ``None`` is the zone's value for any tier.
#: Archive terms follow medical-record rules (15 years; 30 for the most
#: sensitive tiers). The backup replica lives exactly as long as the archive.
DEFAULT_RETENTION: dict[str, dict[int | None, dt.timedelta]] = {
    "cache": {None: CACHE_MAX},
    "research": {None: dt.timedelta(days=365)},
    "archive": {1: 15 * _YEAR, 2: 15 * _YEAR, 3: 15 * _YEAR, 4: 30 * _YEAR, 5: 30 * _YEAR, None: 30 * _YEAR},
    "backup": {1: 15 * _YEAR, 2: 15 * _YEAR, 3: 15 * _YEAR, 4: 30 * _YEAR, 5: 30 * _YEAR, None: 30 * _YEAR},
    "quarantine": {None: dt.timedelta(days=30)},
}

#: tier -> whether an archived object of that tier must have a backup copy
#: (the deletion gate refuses to delete one that lacks it: its history is wrong).
DEFAULT_BACKUP_REQUIRED: dict[int, bool] = {1: False, 2: False, 3: False, 4: True, 5: True}

#: Local folders (relative to the state dir) where plaintext may sit; the landing folder is added.
LOCAL_PLAINTEXT_DIRS = ("ingest", "tmp")
#: File names in those folders that are bookkeeping, not content.
_BOOKKEEPING_SUFFIXES = (".id", ".idtmp", ".json", ".tmp")


class RetentionError(ValueError):
    """A retention request was refused (the message names ids and limits, never values)."""


class GrantRefused(RetentionError):
    """A cache grant cannot be made (object not readable, or more than 72 hours asked)."""


class GrantNotLive(RetentionError):
    """The grant expired, was erased, or its object is gone."""


def default_retention(tier: int, zone: str) -> dt.timedelta:
    """Look ``(tier, zone)`` up in :data:`DEFAULT_RETENTION`."""
    table = DEFAULT_RETENTION.get(zone)
    if table is None:
        raise RetentionError(f"no retention for zone {zone!r}")
    return table.get(tier, table[None])


def default_backup_required(tier: int) -> bool:
    return DEFAULT_BACKUP_REQUIRED.get(tier, True)  # unknown tier: fail closed


def deadline_for(tier: int, zone: str, entered_at: dt.datetime, retention: Retention | None = None) -> dt.datetime:
    """When something of ``tier`` that entered ``zone`` at ``entered_at`` must be gone."""
    if entered_at.utcoffset() is None:
        raise RetentionError("entered_at must be timezone-aware")
    term = (retention or default_retention)(tier, zone)
    if zone == "cache":
        term = min(term, CACHE_MAX)
    return entered_at + term


def assign_missing_deadlines(*, now: dt.datetime, actor: str, retention: Retention | None = None,
                             limit: int = 1000, settings: Settings | None = None, catalog=None) -> dict:
    """Give objects that reached a resting state without a deadline their deadline (DAG step).

    Quarantined objects are registered without one; they get ``created_at +
    quarantine term``. Stored objects missing one (should not happen, the
    protect stage sets it) get their primary zone's term from ``now``.
    """
    from imaging_lifecycle.catalog import Catalog, states

    cat = catalog or Catalog((settings or load_settings()).catalog_url)
    n = 0
    for obj in cat.without_deadline([states.QUARANTINED, states.STORED, states.BACKED_UP], limit):
        if obj.state == states.QUARANTINED:
            when = deadline_for(obj.tier or 5, "quarantine", obj.created_at, retention)
        else:
            when = deadline_for(obj.tier or 5, obj.zone or "archive", now, retention)
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


def _check_hours(hours: int | None) -> int:
    if hours is None:
        return int(CACHE_MAX.total_seconds() // 3600)
    if isinstance(hours, bool) or not isinstance(hours, int) or hours < 1:
        raise GrantRefused("hours must be a whole number of hours, at least 1")
    if dt.timedelta(hours=hours) > CACHE_MAX:
        raise GrantRefused(f"hours must be at most {int(CACHE_MAX.total_seconds() // 3600)} (the cache rule)")
    return hours


def _services(settings: Settings | None):
    from imaging_lifecycle.ingest import Services

    return Services.open(settings)


#: Object states whose primary copy may be handed out as a working copy.
READABLE_STATES = frozenset({"VALIDATED", "CLASSIFIED", "DEIDENTIFIED", "NEEDS_REVIEW", "PROTECTED",
                             "STORED", "BACKED_UP"})


def grant_copy(svc, obj, src, size: int, *, hours: int | None, actor: str, now: dt.datetime,
               retention: Retention | None = None, verify: bool = True) -> Grant:
    """Encrypt plaintext ``src`` into the cache zone under a fresh KEK (scope ``grant:<id>``).

    The grant row (who asked, deadline) is committed before the upload, so a
    crash at any point leaves an expiring grant the sweeper erases.
    """
    hours = _check_hours(hours)
    tier = obj.tier if obj.tier is not None else 5
    deadline = min(now + dt.timedelta(hours=hours), deadline_for(tier, "cache", now, retention))
    gid = uuid.uuid4().hex
    key = f"cache/{gid}"
    scope = f"grant:{gid}"
    svc.catalog.add_grant(gid, obj.id, key=key, kek_scope=scope, deadline=deadline, actor=actor,
                          detail={"hours": hours})
    sealed = svc.vault.put(src, catalog_id=obj.id, zone="cache", tier=tier, scope_id=scope, key=key,
                           size=size, verify=verify)
    with svc.catalog.transaction() as s:
        copy = svc.catalog.record_sealed(obj.id, sealed, actor=actor, deadline=deadline, session=s)
        svc.catalog.attach_grant_copy(gid, copy.id, session=s)
    return Grant(gid, obj.id, hours)


def retrieve(catalog_id: str, *, actor: str, hours: int | None = None, now: dt.datetime | None = None,
             retention: Retention | None = None, settings: Settings | None = None, services=None) -> Grant:
    """Re-encrypt a working copy of ``catalog_id`` into the cache zone for ``actor``; returns the grant.

    The plaintext never touches disk: the primary copy is decrypted (and
    verified) as a stream straight into the new encryption.
    """
    svc = services or _services(settings)
    hours = _check_hours(hours)
    now = now or dt.datetime.now(dt.timezone.utc)
    obj = svc.catalog.get(catalog_id)
    if obj.state not in READABLE_STATES:
        raise GrantRefused(f"object {catalog_id} is {obj.state}: no working copy can be made")
    primary = [c for c in svc.catalog.copies(catalog_id) if c.zone == (obj.zone or "archive")]
    if not primary:
        raise GrantRefused(f"object {catalog_id} has no live copy in its primary zone")
    sealed = svc.catalog.sealed(primary[-1], obj.sha256, obj.size)
    with svc.vault.open(sealed, catalog_id) as reader:
        return grant_copy(svc, obj, reader, obj.size, hours=hours, actor=actor, now=now, retention=retention)


def read_grant(grant_id: str, out_path: Path, *, actor: str, now: dt.datetime | None = None,
               settings: Settings | None = None, services=None) -> str:
    """Decrypt the grant's working copy into ``out_path`` (0600) if the grant is live; returns its SHA-256.

    Checked on every read: the grant exists, is not erased, is before its
    deadline, and its copy is live. Every read is audited.
    """
    from imaging_lifecycle.catalog import UnknownObject

    svc = services or _services(settings)
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        g = svc.catalog.grant(grant_id)
    except UnknownObject:
        raise GrantNotLive(f"no grant {grant_id}") from None
    copy = next((c for c in svc.catalog.copies(g["object_id"]) if c.id == g["copy_id"]), None)
    if g["erased_at"] is not None or now >= g["deadline"] or copy is None:
        svc.catalog.audit.append(actor, "grant.read", object_ref=g["object_id"], outcome="minor_failure",
                                 detail={"grant": grant_id, "live": False})
        raise GrantNotLive(f"grant {grant_id} is expired or erased")
    obj = svc.catalog.get(g["object_id"])
    digest = svc.vault.restore_to(svc.catalog.sealed(copy, obj.sha256, obj.size), obj.id, Path(out_path))
    svc.catalog.audit.append(actor, "grant.read", object_ref=obj.id, detail={"grant": grant_id, "live": True})
    return digest


# -- legal hold --------------------------------------------------------------------


def set_legal_hold(catalog_id: str, held: bool, *, actor: str, settings: Settings | None = None, catalog=None) -> dict:
    """Place or release a legal hold (audited either way); a held object is never deleted."""
    from imaging_lifecycle.catalog import Catalog

    cat = catalog or Catalog((settings or load_settings()).catalog_url)
    rec = cat.set_legal_hold(catalog_id, held, actor)
    return {"object_id": rec.id, "legal_hold": rec.legal_hold, "state": rec.state}


# -- stale local plaintext ---------------------------------------------------------


def _local_files(settings: Settings) -> list[tuple[str, Path]]:
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


def stale_local_files(*, now: dt.datetime, actor: str, max_age: dt.timedelta = CACHE_MAX,
                      settings: Settings | None = None, catalog=None) -> dict:
    """Hold local plaintext to the 72-hour rule: delete what is stored elsewhere, alert on the rest.

    A file older than ``max_age`` (by mtime, against ``now``) is deleted if
    its SHA-256 is the content of a catalog object with a live stored copy;
    otherwise it is stuck, and each folder with stuck files raises one
    ``security.alert`` (counts only). Nothing is kept silently.
    """
    from imaging_lifecycle.catalog import Catalog
    from imaging_lifecycle.crypto import sha256_file

    settings = settings or load_settings()
    cat = catalog or Catalog(settings.catalog_url)
    cutoff = (now - max_age).timestamp()
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


def airflow_db_clean_command(now: dt.datetime, max_age: dt.timedelta,
                             tables: tuple[str, ...] = ("xcom", "task_instance_history", "log", "job")) -> list[str]:
    """The ``airflow db clean`` argv that prunes metadata (XCom, logs table, ...) older than ``max_age``."""
    if now.utcoffset() is None:
        raise RetentionError("now must be timezone-aware")
    before = (now - max_age).astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    return ["airflow", "db", "clean", "--clean-before-timestamp", before, "--tables", ",".join(tables),
            "--skip-archive", "--yes"]


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
