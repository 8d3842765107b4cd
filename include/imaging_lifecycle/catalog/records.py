"""What the catalog hands back to callers: the record dataclasses, and the catalog's exceptions."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from imaging_lifecycle.crypto import AssociatedData

__all__ = [
    "CatalogError", "UnknownObject", "IllegalTransition", "LegalHoldActive",
    "ObjectRecord", "CopyRecord", "BatchRecord", "Registration", "Expired",
]


# ---------------------------------------------------------------------------
# Exceptions. Messages name catalog ids, states and field names, never values.
# ---------------------------------------------------------------------------


class CatalogError(Exception):
    """Base of the catalog's own errors."""


class UnknownObject(CatalogError, LookupError):
    """No row with that catalog id (or copy id, or batch id)."""


class IllegalTransition(CatalogError):
    """The state machine does not allow this change; the message names the states and the catalog id."""


class LegalHoldActive(IllegalTransition):
    """The object is under legal hold, which forbids starting or continuing deletion."""


# ---------------------------------------------------------------------------
# Records handed back to callers.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectRecord:
    id: str
    sop_key: str | None
    study_key: str | None
    series_key: str | None
    sop_class_uid: str | None
    sha256: str | None
    size: int | None
    state: str
    tier: int | None
    rule_id: str | None
    zone: str | None
    ciphertext_sha256: str | None
    key_id: str | None
    retention_deadline: dt.datetime | None
    legal_hold: bool
    batch_id: str | None
    source: str | None
    quarantine_reason: str | None
    flagged: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    #: The policy the tier was decided under (SHA-256 of the validated policy). From VALIDATED on, tier, rule
    #: and policy are ingest's proposal (the archive copy is bound to that tier); CLASSIFIED settles them.
    policy_fingerprint: str | None = None

    def public(self) -> dict:
        """What may go to XCom and logs: id, state and codes. No digests, no hashes, no
        retention deadline (a deadline derived from a study date would reveal it)."""
        return {
            "id": self.id, "state": self.state, "tier": self.tier, "rule_id": self.rule_id, "zone": self.zone,
            "size": self.size, "batch_id": self.batch_id, "quarantine_reason": self.quarantine_reason,
            "flagged": self.flagged, "legal_hold": self.legal_hold,
        }


@dataclass(frozen=True)
class CopyRecord:
    id: str
    object_id: str
    zone: str
    bucket: str
    key: str
    version_id: str | None
    ciphertext_sha256: str | None
    key_id: str | None
    deadline: dt.datetime | None
    created_at: dt.datetime
    deleted_at: dt.datetime | None
    verified_at: dt.datetime | None


@dataclass(frozen=True)
class BatchRecord:
    id: str
    state: str
    counts: dict
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class Registration:
    """The result of :meth:`Catalog.register`.

    ``outcome``: ``registered`` (new row, RECEIVED), ``quarantined`` (new
    row, QUARANTINED with the caller's reason), ``conflict`` (new row,
    QUARANTINED as DUPLICATE_CONFLICT: same SOP Instance UID as a live object,
    other content), ``duplicate`` (no new row: same UID and content as
    ``object``, the live object), ``existing`` (the caller's ``object_id`` was
    already registered: a retry; nothing changed).
    """

    object: ObjectRecord
    outcome: str

    @property
    def created(self) -> bool:
        return self.outcome in ("registered", "quarantined", "conflict")


@dataclass(frozen=True)
class Expired:
    """What retention must act on now: objects past their deadline and copies past theirs."""

    objects: list[ObjectRecord]
    copies: list[CopyRecord]


@dataclass(frozen=True)
class Sealed:
    """One encrypted copy, as the catalog records it."""

    zone: str
    bucket: str
    key: str
    version_id: str | None
    dek_id: str
    kek_ref: str
    wrapped_dek: bytes
    tier: int
    plaintext_sha256: str
    ciphertext_sha256: str
    size: int
    ciphertext_size: int

    def aad(self, catalog_id: str) -> AssociatedData:
        return AssociatedData(catalog_id, self.zone, self.tier, self.dek_id)
