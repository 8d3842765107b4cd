"""Destruction that stays destroyed: re-seal the key store after KEKs are destroyed, and its DR export.

Crypto-shredding is only as good as the last copy of the key. After every
destruction batch the sweeper calls :func:`reseal_after_destruction`:

1. the key store is sealed under a new master-key generation and every older
   generation is destroyed (``LocalKeyStore.reseal``), so a copy of the key
   store from before the deletion cannot be opened with the secrets that
   exist afterwards;
2. the disaster-recovery export on the backup site (zone ``keystore-dr``) is
   replaced by the re-sealed file, and every older version of it is purged and
   checked gone. Between destructions every sweep refreshes the export when the
   key store changed (new KEKs), so it is at most one sweep behind.

A key store whose master key is injected (``IL_MASTER_KEY``) or a remote KMS
cannot be re-sealed here: the step is audited as skipped with the reason, so
the gap is on the trail rather than silent. :func:`restore_dr` puts the export
back when the key store file is lost.
"""

from __future__ import annotations

from imaging_lifecycle.crypto import CryptoError
from imaging_lifecycle.services import Services
from imaging_lifecycle.storage import StorageError

__all__ = ["DR_ZONE", "DR_KEY", "reseal_if_needed", "reseal_after_destruction", "export_dr", "export_if_changed",
           "restore_dr"]

DR_ZONE = "keystore-dr"
DR_KEY = "keystore/keystore.sealed"


def export_dr(svc: Services, *, actor: str) -> dict:
    """Write the sealed key store to the backup site and purge every older export; audited."""
    ks = svc.keystore
    blob = ks.sealed_bytes() if hasattr(ks, "sealed_bytes") else b""
    if not blob:
        return {"exported": False}
    generation = ks.generation
    put = svc.store.put(DR_ZONE, DR_KEY, blob, metadata={"generation": str(generation)})
    older = [(v.key, v.version_id) for v in svc.store.versions(DR_ZONE, DR_KEY) if v.version_id != put.version_id]
    failed = svc.store.purge(DR_ZONE, older) if older else []
    left = [v for v in svc.store.versions(DR_ZONE, DR_KEY) if v.version_id != put.version_id]
    out = {"exported": True, "generation": generation, "purged": len(older) - len(failed), "left": len(left)}
    svc.catalog.audit.append(actor, "key.dr_export", outcome="success" if not left else "failure", detail=out)
    if left:
        raise CryptoError(f"{len(left)} older key-store export(s) could not be purged from the backup site")
    return out


def reseal_if_needed(svc: Services, *, actor: str) -> dict:
    """Re-seal when anything was destroyed since the last re-seal (the key store keeps that mark until
    the re-seal has finished); otherwise keep the DR export current (new KEKs since the last one)."""
    if not getattr(svc.keystore, "needs_reseal", False):
        return {"resealed": False, "reason": "NOTHING_DESTROYED", "dr": export_if_changed(svc, actor=actor)}
    return reseal_after_destruction(svc, actor=actor)


def export_if_changed(svc: Services, *, actor: str) -> dict:
    """Write the DR export when the key store differs from the newest export (each sweep asks)."""
    ks = svc.keystore
    blob = ks.sealed_bytes() if hasattr(ks, "sealed_bytes") else b""
    if not blob:
        return {"exported": False}
    try:
        if svc.store.get(DR_ZONE, DR_KEY) == blob:
            return {"exported": False, "current": True}
    except (FileNotFoundError, StorageError):
        pass
    return export_dr(svc, actor=actor)


def reseal_after_destruction(svc: Services, *, actor: str) -> dict:
    """Re-seal the key store under a new master-key generation, then refresh the DR export."""
    ks = svc.keystore
    if not hasattr(ks, "reseal"):
        svc.catalog.audit.append(actor, "key.reseal", outcome="failure", detail={"reason": "NOT_SUPPORTED"})
        return {"resealed": False, "reason": "NOT_SUPPORTED"}
    try:
        out = ks.reseal()
    except CryptoError as exc:
        reason = "MASTER_KEY_INJECTED" if "injected" in str(exc) else type(exc).__name__
        svc.catalog.audit.append(actor, "key.reseal", outcome="failure", detail={"reason": reason})
        return {"resealed": False, "reason": reason}
    svc.catalog.audit.append(actor, "key.reseal", detail=out)
    return {"resealed": True, **out, "dr": export_dr(svc, actor=actor)}


def restore_dr(svc: Services, *, actor: str, replace: bool = False) -> dict:
    """Install the backup site's export as the key store (only where the key store is lost, unless ``replace``)."""
    versions = [v for v in svc.store.versions(DR_ZONE, DR_KEY) if not v.is_delete_marker]
    if not versions:
        raise FileNotFoundError("no key-store export on the backup site")
    blob = svc.store.get(DR_ZONE, DR_KEY)
    keks = svc.keystore.restore_from(blob, replace=replace)
    out = {"restored": True, "keks": keks, "generation": svc.keystore.generation}
    svc.catalog.audit.append(actor, "key.dr_restore", detail=out)
    return out
