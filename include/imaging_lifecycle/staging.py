"""The staging zone: originals between the landing host's claim and their ingest chunk on any worker.

A claim encrypts each landing file into the ``staging`` zone (read back and
verified, under a KEK of its own per batch, ``staging:<batch id>``) and
records a row in the catalog's ``staged_files``. Only then is the local copy
removed. A chunk on any host fetches the file into its private scratch folder,
ingests it, and :func:`drop` forgets the row, then purges every version.

Nothing a worker needs is on another worker's disk, and nothing is lost
between the two: a row always points at a verified staged copy, and a copy
without a row (a crash between the two steps of :func:`drop`, or during a
claim) is purged by the next claim on the same landing host
(:func:`reap_orphans`). When a batch closes, the KEKs of staging scopes that
no row names any more are destroyed (audited), which crypto-erases any copy a
purge may have missed.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from imaging_lifecycle.catalog import StagedFile
from imaging_lifecycle.catalog.records import Sealed
from imaging_lifecycle.keystore import KeyDestroyed
from imaging_lifecycle.services import Services
from imaging_lifecycle.settings import Settings

ZONE = "staging"


class StagedCopyMissing(RuntimeError):
    """A staged row's copy is gone from the staging zone (never expected: rows go before copies)."""


def key_for(landing_id: str, object_id: str) -> str:
    """``staging/<landing id>/<catalog id>``: each landing host reaps only its own prefix."""
    return f"staging/{landing_id}/{object_id}"


def scope_for(batch_id: str) -> str:
    return f"staging:{batch_id}"


def private_tmp(settings: Settings, suffix: str) -> Path:
    """A fresh random name in the state folder's 0700 ``tmp`` (the file itself is not created here).

    This host's scratch space for plaintext while a task works on it; retention's
    stale-local-plaintext sweep watches the folder for anything a crash left behind.
    """
    tmpdir = settings.state_dir / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    os.chmod(tmpdir, 0o700)
    return tmpdir / f"{uuid.uuid4().hex}{suffix}"


def put(svc: Services, src: Path, object_id: str, *, landing_id: str, scope_id: str, fresh: bool = False) -> Sealed:
    """Encrypt ``src`` into the staging zone, verified; versions of an interrupted earlier try go first.

    ``fresh``: the file was claimed for the first time (its catalog id is new), so nothing can be
    under its key yet and the listing is skipped."""
    key = key_for(landing_id, object_id)
    leftovers = [] if fresh else [(v.key, v.version_id) for v in svc.store.versions(ZONE, key) if v.key == key]
    if leftovers:
        svc.store.purge(ZONE, leftovers)
    return svc.encrypted.put(src, catalog_id=object_id, zone=ZONE, tier=svc.policy.highest_tier,
                             scope_id=scope_id, key=key)


def fetch(svc: Services, staged: StagedFile) -> Path:
    """Decrypt the staged copy into a new 0600 file in this host's scratch folder; its path."""
    path = private_tmp(svc.settings, ".dcm")
    try:
        svc.encrypted.restore_to(staged.sealed, staged.object_id, path)
    except FileNotFoundError:
        raise StagedCopyMissing(f"the staged copy of {staged.object_id} is missing from the staging zone") from None
    return path


def drop(svc: Services, files: list[StagedFile]) -> None:
    """Forget the rows (one commit), then delete the staged versions they named (one multi-delete; a crash
    between, or any other version an interrupted claim left under a key: the reaper's, since no row names
    the key any more)."""
    if not files:
        return
    svc.catalog.unstage(*(f.object_id for f in files))
    versions = [(f.sealed.key, f.sealed.version_id) for f in files if f.sealed is not None]
    if versions:
        svc.store.purge(ZONE, versions)


def reap_orphans(svc: Services, landing_id: str) -> int:
    """Purge staged copies under this landing host's prefix that no row names. Run under the claim lock
    (no upload of this host's is in flight then). Returns how many versions went."""
    prefix = f"staging/{landing_id}/"
    versions = list(svc.store.versions(ZONE, prefix))
    if not versions:
        return 0
    wanted = svc.catalog.staged_ids(sorted({v.key.rsplit("/", 1)[-1] for v in versions}))
    orphans = [(v.key, v.version_id) for v in versions if v.key.rsplit("/", 1)[-1] not in wanted]
    if orphans:
        svc.store.purge(ZONE, orphans)
    return len(orphans)


def destroy_scopes(svc: Services, scope_ids: list[str], *, actor: str) -> int:
    """Destroy the staging KEKs among ``scope_ids`` that no staged row uses any more (audited first,
    as deletion does: a crash between repeats the idempotent destroy rather than leaving it unaudited)."""
    scopes = sorted({s for s in scope_ids if s.startswith("staging:")})
    if not scopes:
        return 0
    in_use = svc.catalog.scopes_in_use(scopes)
    refs = []
    for scope in scopes:
        if scope in in_use:
            continue
        try:
            ref = svc.keystore.current(scope)
        except KeyDestroyed:
            continue
        if ref is not None:
            refs.append((scope, ref))
    if not refs:
        return 0
    with svc.catalog.transaction() as s:
        for scope, ref in refs:
            svc.catalog.audit.append(actor, "key.destroy", object_ref=f"batch:{scope.split(':', 1)[1]}",
                                     detail={"kek": ref.kek_id, "reason": "STAGING_DONE"}, session=s)
    for _scope, ref in refs:
        svc.keystore.destroy(ref.kek_id)
    return len(refs)
