"""Anchoring the audit chain: signed heads in write-once storage on the second site.

The chain proves that no record was changed, removed or inserted *before* its
head. Someone able to rewrite the database could still recompute every later
hash, or cut the tail and rewind the head, unless the head was copied
somewhere they cannot rewrite *and* cannot forge. So each anchor is:

* signed with Ed25519 (the audit signing key, a secret kept apart from the
  catalog; ``imaging-lifecycle audit public-key`` prints the public half);
* written to the ``audit-anchor`` bucket on the **backup** site, independent of
  the primary, under a COMPLIANCE-mode object lock (not even the storage admin
  can remove it before its retention ends; backups use GOVERNANCE, see README);
* named by its zero-padded sequence number (``anchors/000000000000042.json``),
  and found by number *and* signature, never by key order: an unsigned or
  wrongly signed object is reported and never trusted.

:func:`verify` checks the chain against the newest validly signed anchor.
Records after that anchor are protected only by the chain until the next one
(hourly, and after every deletion batch).

The target is pluggable (:class:`AnchorTarget`): a hospital can add an
external ledger or transparency log beside the bucket.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from dataclasses import dataclass, field
from typing import Protocol

from imaging_lifecycle import crypto
from imaging_lifecycle.services import Services

ZONE = "audit-anchor"
PREFIX = "anchors/"
FORMAT = "il-anchor-v1"
SIGNING_SECRET = "audit-signing"


def retention_days() -> int:
    return int(os.environ.get("IL_ANCHOR_RETENTION_DAYS", "3650"))


def signing_key(svc: Services) -> bytes:
    """The audit signing key (``IL_SECRET_AUDIT_SIGNING``, else a 0600 file made on first use)."""
    from imaging_lifecycle.secretfiles import load_or_create_secret

    return load_or_create_secret(SIGNING_SECRET, crypto.SIGNING_KEY_SIZE, settings=svc.settings)


def public_key(svc: Services) -> bytes:
    return crypto.signing_public_key(signing_key(svc))


def _message(seq: int, head: str, anchored_at: str) -> bytes:
    return json.dumps({"format": FORMAT, "seq": seq, "hash": head, "anchored_at": anchored_at},
                      sort_keys=True, separators=(",", ":")).encode()


def anchor_key(seq: int) -> str:
    return f"{PREFIX}{seq:015d}.json"


class AnchorTarget(Protocol):
    """Somewhere a signed head is written that the catalog's owner cannot rewrite."""

    def write(self, seq: int, body: bytes, *, retain_until: dt.datetime) -> None: ...

    def bodies(self) -> list[tuple[str, bytes]]: ...


@dataclass
class BucketTarget:
    """The object-locked ``audit-anchor`` bucket (on the backup site)."""

    store: object

    def write(self, seq: int, body: bytes, *, retain_until: dt.datetime) -> None:
        # COMPLIANCE: nobody, the storage admin included, can delete or shorten it before it ends.
        self.store.put(ZONE, anchor_key(seq), body, retain_until=retain_until, lock_mode="COMPLIANCE")

    def bodies(self) -> list[tuple[str, bytes]]:
        out = []
        for v in self.store.versions(ZONE, PREFIX):
            if not v.is_delete_marker:
                out.append((v.key, self.store.get(ZONE, v.key, v.version_id)))
        return out


@dataclass
class Found:
    """The anchors found: the newest validly signed one, and every object that is not a valid anchor."""

    newest: tuple[int, str] | None = None
    valid: int = 0
    problems: list[dict] = field(default_factory=list)
    anchored: list[tuple[int, str]] = field(default_factory=list)


def write_anchor(svc: Services, *, actor: str, now: dt.datetime | None = None,
                 target: AnchorTarget | None = None) -> dict:
    """Sign the chain head and write it to the target; audited. Returns {seq, hash} (XCom-safe)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    seq, head = svc.catalog.audit.head()
    at = now.astimezone(dt.timezone.utc).isoformat()
    signature = crypto.sign(signing_key(svc), _message(seq, head, at))
    body = json.dumps({"format": FORMAT, "seq": seq, "hash": head, "anchored_at": at,
                       "signature": base64.b64encode(signature).decode()}).encode()
    (target or BucketTarget(svc.store)).write(seq, body, retain_until=now + dt.timedelta(days=retention_days()))
    svc.catalog.audit.append(actor, "audit.anchor", detail={"seq": seq, "head": head, "signed": True})
    return {"seq": seq, "hash": head}


def find_anchors(public: bytes, bodies: list[tuple[str, bytes]]) -> Found:
    """Judge every anchor object by its content and signature alone (its name only has to agree)."""
    found = Found()
    for name, raw in bodies:
        try:
            doc = json.loads(raw)
            seq, head, at = int(doc["seq"]), str(doc["hash"]), str(doc["anchored_at"])
            signature = base64.b64decode(doc.get("signature") or "", validate=True)
        except (ValueError, KeyError, TypeError):
            found.problems.append({"object": name, "problem": "UNREADABLE"})
            continue
        if not signature:
            found.problems.append({"object": name, "problem": "UNSIGNED", "seq": seq})
            continue
        if not crypto.signature_valid(public, _message(seq, head, at), signature):
            found.problems.append({"object": name, "problem": "BAD_SIGNATURE", "seq": seq})
            continue
        if name != anchor_key(seq):
            found.problems.append({"object": name, "problem": "MISNAMED", "seq": seq})
            continue
        found.valid += 1
        found.anchored.append((seq, head))
        if found.newest is None or seq > found.newest[0]:
            found.newest = (seq, head)
    return found


def latest_anchor(svc: Services, *, target: AnchorTarget | None = None) -> Found:
    return find_anchors(public_key(svc), (target or BucketTarget(svc.store)).bodies())


def verify(svc: Services, *, target: AnchorTarget | None = None):  # noqa: ANN201
    """``(VerifyResult, Found)``: the chain against the newest validly signed anchor, and every older one.

    The walk proves the chain up to the newest anchor; each older anchor's
    record is then looked up by its number, so a chain re-hashed and anchored
    again afterwards still disagrees with the anchors signed before.
    """
    found = latest_anchor(svc, target=target)
    return verify_log(svc.catalog.audit, found), found


def verify_log(log, found: Found):  # noqa: ANN001, ANN201
    """The audit log ``log`` against the newest anchor of ``found`` (a walk), then every older one (a lookup)."""
    from dataclasses import replace

    result = log.verify(expected_head=found.newest)
    if result.ok:
        for seq, head in sorted(found.anchored):
            rec = log.records(after_seq=seq - 1, limit=1)
            if not rec or rec[0].seq != seq or rec[0].hash != head:
                return replace(result, ok=False, first_bad_seq=seq, code="ANCHOR_MISMATCH",
                               reason=f"record {seq} differs from the signed anchor of it")
    return result


def verify_and_anchor(svc: Services, *, actor: str) -> dict:
    """The anchor step: verify the chain against the newest signed anchor, then anchor its head.

    A broken chain is never anchored (that would bless the damage): it raises.
    Forged or unsigned anchor objects are reported as a security alert.
    """
    result, found = verify(svc)
    if found.problems:
        svc.catalog.audit.append(actor, "security.alert", outcome="major_failure",
                                 detail={"reason": "ANCHOR_NOT_VALID", "objects": len(found.problems)})
    if not result.ok:
        raise RuntimeError(f"audit chain broken at record {result.first_bad_seq}: {result.code}")
    return write_anchor(svc, actor=actor)


# -- deletion certificates, signed with the same key ---------------------------------------

CERTIFICATE_FORMAT = "il-deletion-certificate-v1"


def _certificate_message(certificate: dict, anchor_seq: int, record_seq: int) -> bytes:
    return json.dumps({"format": CERTIFICATE_FORMAT, "certificate": certificate, "anchor_seq": anchor_seq,
                       "audit_record_seq": record_seq}, sort_keys=True, separators=(",", ":")).encode()


def sign_certificate(svc: Services, certificate: dict, *, actor: str) -> dict:
    """A deletion certificate as a self-standing signed document.

    It names the audit record that holds the certificate and the signed
    anchor that covers that record (one is written now if none does yet), and
    is signed with the audit signing key: :func:`certificate_valid` checks it
    offline with the public key alone.
    """
    oid, cid = certificate["object"], certificate["certificate_id"]
    records = [r for r in svc.catalog.audit.records(object_ref=oid)
               if r.action == "deletion.certificate" and r.detail.get("certificate_id") == cid]
    if not records:
        raise LookupError(f"certificate {cid} has no audit record")
    # The catalog row must say what the chained record says (times and actor live in the record itself).
    chained = {k: v for k, v in certificate.items() if not k.endswith("_at") and k != "actor"}
    if records[-1].detail != chained:
        raise LookupError(f"certificate {cid} differs from its audit record: not signed")
    record_seq = records[-1].seq
    found = latest_anchor(svc)
    if found.newest is None or found.newest[0] < record_seq:
        verify_and_anchor(svc, actor=actor)  # never sign over a chain that does not verify
        found = latest_anchor(svc)
    else:
        result, found = verify(svc)
        if not result.ok or found.problems:
            raise RuntimeError(f"audit chain does not verify ({result.code}): no certificate is signed")
    anchor_seq = found.newest[0]
    signature = crypto.sign(signing_key(svc), _certificate_message(certificate, anchor_seq, record_seq))
    return {"format": CERTIFICATE_FORMAT, "certificate": certificate, "anchor_seq": anchor_seq,
            "audit_record_seq": record_seq, "algorithm": "Ed25519",
            "signature": base64.b64encode(signature).decode()}


def certificate_valid(document: dict, public: bytes) -> bool:
    """Is this exported certificate exactly what the platform signed? Needs nothing but the public key."""
    try:
        if document.get("format") != CERTIFICATE_FORMAT:
            return False
        message = _certificate_message(document["certificate"], int(document["anchor_seq"]),
                                       int(document["audit_record_seq"]))
        return crypto.signature_valid(public, message, base64.b64decode(document["signature"], validate=True))
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
