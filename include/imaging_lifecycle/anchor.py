"""Anchoring the audit chain in write-once storage, so cutting off its tail is detectable.

The chain proves that no record was changed, removed or inserted *before* its
head. Someone able to delete the newest records and rewind the head would go
unnoticed -- unless the head was copied somewhere they cannot rewrite. The
anchor DAG writes the current ``(seq, hash)`` to the ``audit-anchor`` bucket
with object-lock retention; :func:`verify_with_latest_anchor` then checks the
chain still contains that exact record.
"""

from __future__ import annotations

import datetime as dt
import json
import os

from imaging_lifecycle.services import Services
from imaging_lifecycle.storage import ObjectStore

ZONE = "audit-anchor"
PREFIX = "anchors/"


def retention_days() -> int:
    return int(os.environ.get("IL_ANCHOR_RETENTION_DAYS", "3650"))


def write_anchor(catalog, store: ObjectStore, *, actor: str, now: dt.datetime | None = None) -> dict:
    """Write the chain head to the write-once bucket; audited. Returns {seq, hash} (XCom-safe)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    seq, head_hash = catalog.audit.head()
    body = json.dumps({"seq": seq, "hash": head_hash, "anchored_at": now.isoformat()}).encode()
    # Zero-padded seq: the lexically last key is the newest anchor.
    store.put(ZONE, f"{PREFIX}{seq:015d}-{head_hash}.json", body,
              retain_until=now + dt.timedelta(days=retention_days()))
    catalog.audit.append(actor, "audit.anchor", detail={"seq": seq, "head": head_hash})
    return {"seq": seq, "hash": head_hash}


def latest_anchor(store: ObjectStore) -> tuple[int, str] | None:
    keys = [v.key for v in store.versions(ZONE, PREFIX) if not v.is_delete_marker]
    if not keys:
        return None
    data = json.loads(store.get(ZONE, max(keys)))
    return int(data["seq"]), str(data["hash"])


def verify_and_anchor(svc: Services, *, actor: str) -> dict:
    """The anchor DAG step: verify the chain against the newest anchor, then anchor its head.

    A broken chain is never anchored (that would bless the damage): it raises.
    """
    result = verify_with_latest_anchor(svc.catalog, svc.store)
    if not result.ok:
        raise RuntimeError(f"audit chain broken at record {result.first_bad_seq}: {result.code}")
    return write_anchor(svc.catalog, svc.store, actor=actor)


def verify_with_latest_anchor(catalog, store: ObjectStore):
    """The audit chain's :class:`~imaging_lifecycle.catalog.audit.VerifyResult` against the newest anchor."""
    return catalog.audit.verify(expected_head=latest_anchor(store))
