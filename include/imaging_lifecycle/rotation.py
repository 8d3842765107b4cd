"""KEK rotation: a new KEK version per scope, every data key re-wrapped, old versions destroyed.

Data is never touched: a ciphertext's associated data binds its own DEK id,
not the KEK version, so rotating only moves the wrapped DEKs in the catalog
(``data_keys``) from the old KEK version to the new one
(:meth:`~imaging_lifecycle.keystore.KeyStore.rewrap`; the DEK itself never
leaves the key store). Backups share the archive's data key rows, so they
are covered by the same re-wrap.

Resumable without any state of its own. The key store *is* the run state:
a KEK that still has a live (undestroyed) version older than its current one
is in the middle of a rotation, so a rerun resumes it instead of rotating
again; a KEK rotated by this very run (same ``run_id``, found in the audit
trail) is not rotated twice either. Each batch of re-wraps commits with a
compare-and-set on ``kek_ref``, so a row is re-wrapped at most once whatever
dies when. An old version is destroyed only when no live data key row names
it, checked inside a catalog write transaction (writes are serialized, so no
row can appear between the check and the destroy).

An ingest that wrapped a DEK under the old version *before* the rotation and
records its row *after* the destroy cannot record an unreadable key:
:meth:`~imaging_lifecycle.encrypted_store.EncryptedStore.record` checks the
version inside its own (serialized) write transaction and refuses, and the
task's retry stores the content again under the current version.
"""

from __future__ import annotations

import hashlib

from imaging_lifecycle import faults
from imaging_lifecycle.catalog import Catalog
from imaging_lifecycle.keystore import KekRef, KeyStore, KeyUnavailable
from imaging_lifecycle.services import Services

__all__ = ["RotationIncomplete", "rotate", "rotate_step", "run_token"]


class RotationIncomplete(RuntimeError):
    """Some data keys could not be re-wrapped (their KEK version is already gone); lists DEK ids only."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def run_token(run_id: str | None) -> str | None:
    """A short token for a run id (Airflow run ids carry dates, which audit details refuse)."""
    return None if run_id is None else "r" + hashlib.sha256(run_id.encode()).hexdigest()[:16]


def _ref(kek_id: str) -> str:
    return f"kek:{kek_id}"


def _scope_of(keystore: KeyStore, kek_id: str) -> str:
    scope_of = getattr(keystore, "scope_of", None)
    if scope_of is None:
        raise ValueError("this key store cannot map a KEK to its scope; pass scopes= explicitly")
    return scope_of(kek_id)


def _rotated_in_run(catalog: Catalog, kek_id: str, token: str | None) -> bool:
    if token is None:
        return False
    return any(r.action == "key.rotate" and r.detail.get("step") == "rotate" and r.detail.get("run") == token
               for r in catalog.audit.records(object_ref=_ref(kek_id), last=200))


def rotate(catalog: Catalog, keystore: KeyStore, *, actor: str, scopes: list[str] | None = None,
           batch: int = 1000, run_id: str | None = None, destroy_old: bool = True) -> dict:
    """Rotate the KEK of each scope in use (or of ``scopes``), re-wrap its data keys, destroy old versions.

    Returns counts (XCom-safe): ``keks`` considered, ``rotated``, ``resumed``
    (an unfinished rotation continued), ``rewrapped`` rows,
    ``destroyed_versions``, ``shredded`` (KEKs already destroyed: skipped),
    ``unreadable``. Raises :class:`RotationIncomplete` at the end if any live
    data key could not be re-wrapped.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError("batch must be a positive int")
    token = run_token(run_id)
    if scopes is None:
        kek_ids = sorted({KekRef.parse(r).kek_id for r in catalog.kek_refs_in_use()})
        targets = [(k, None) for k in kek_ids]
    else:
        targets = []
        for scope in scopes:
            ref = keystore.current(scope)
            if ref is not None:
                targets.append((ref.kek_id, scope))
    counts = {"keks": len(targets), "rotated": 0, "resumed": 0, "rewrapped": 0, "destroyed_versions": 0,
              "shredded": 0, "unreadable": 0}
    unreadable: list[str] = []
    for kek_id, scope in targets:
        if keystore.is_destroyed(kek_id):
            counts["shredded"] += 1
            continue
        scope = scope or _scope_of(keystore, kek_id)
        current = keystore.current(scope)
        if current is None or current.kek_id != kek_id:
            counts["shredded"] += 1
            continue
        live_old = [v for v in keystore.versions(kek_id)
                    if v.version < current.version and not keystore.is_destroyed(kek_id, v.version)]
        if live_old or _rotated_in_run(catalog, kek_id, token):
            new = current
            counts["resumed"] += 1
        else:
            new = keystore.rotate(scope)
            catalog.audit.append(actor, "key.rotate", object_ref=_ref(kek_id),
                                 detail={"step": "rotate", "kek": kek_id, "to": new.version, "run": token})
            counts["rotated"] += 1
        old_refs = [str(v) for v in keystore.versions(kek_id) if v.version < new.version]
        after = ""
        while old_refs:
            rows = catalog.live_data_keys(old_refs, limit=batch, after_id=after)
            if not rows:
                break
            after = rows[-1][0]
            changes = []
            for dek_id, ref, wrapped in rows:
                try:
                    changes.append((dek_id, ref, str(new), keystore.rewrap(wrapped, KekRef.parse(ref), new)))
                except KeyUnavailable:
                    unreadable.append(dek_id)
            if changes:
                counts["rewrapped"] += catalog.rewrap_data_keys(
                    changes, actor=actor, object_ref=_ref(kek_id),
                    detail={"step": "rewrap", "kek": kek_id, "to": new.version, "run": token})
            faults.point("rotation.mid")
        if destroy_old:
            counts["destroyed_versions"] += _destroy_unused(catalog, keystore, kek_id, new, actor=actor)
    counts["unreadable"] = len(unreadable)
    result = {**counts, "unreadable_keys": sorted(unreadable)}
    if unreadable:
        raise RotationIncomplete(
            f"{len(unreadable)} data key(s) could not be re-wrapped (KEK version destroyed): "
            f"{', '.join(sorted(unreadable))}", result)
    return result


def _destroy_unused(catalog: Catalog, keystore: KeyStore, kek_id: str, new: KekRef, *, actor: str) -> int:
    """Destroy every live version older than ``new`` that no live data key row names."""
    destroyed = 0
    with catalog.transaction() as conn:  # holds the catalog's write lock: no row can appear meanwhile
        in_use = catalog.kek_refs_in_use(session=conn)
        for v in keystore.versions(kek_id):
            if v.version >= new.version or keystore.is_destroyed(kek_id, v.version) or in_use.get(str(v)):
                continue
            keystore.destroy(kek_id, v.version)
            catalog.audit.append(actor, "key.destroy", object_ref=_ref(kek_id),
                                 detail={"kek": kek_id, "version": v.version, "step": "rotation"}, session=conn)
            destroyed += 1
    return destroyed


def rotate_step(svc: Services, *, actor: str, scopes: list[str] | None = None, batch: int = 1000,
                run_id: str | None = None, destroy_old: bool = True) -> dict:
    """The rotation DAG step: :func:`rotate` with the catalog and key store of ``svc``."""
    return rotate(svc.catalog, svc.keystore, actor=actor, scopes=scopes, batch=batch, run_id=run_id,
                  destroy_old=destroy_old)
