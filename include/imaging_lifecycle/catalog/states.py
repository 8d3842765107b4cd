"""The lifecycle state machine of a catalog object, as data.

Every change of ``objects.state`` goes through :func:`check_transition`
against :data:`TRANSITIONS`; nothing else in the package writes the column.
The happy path of an original::

    RECEIVED -> VALIDATED -> CLASSIFIED -> DEIDENTIFIED -> PROTECTED -> STORED
             -> BACKED_UP -> EXPIRED -> DELETING -> DELETED

Why each less obvious edge exists:

* ``CLASSIFIED -> PROTECTED``: a tier whose policy makes no de-identified
  derivative goes straight to encryption.
* ``CLASSIFIED -> NEEDS_REVIEW``: de-identification could not be shown safe
  (e.g. possible burned-in text); a person decides. From there the reviewer
  either approves a derivative (``DEIDENTIFIED``), keeps only the protected
  original (``PROTECTED``) or rejects the object (``QUARANTINED``).
* ``QUARANTINED`` is reachable only before anything was derived from the
  object (RECEIVED, VALIDATED, CLASSIFIED, NEEDS_REVIEW). Quarantined objects
  are kept with their reason code until their own retention deadline, then
  follow the normal deletion path (``QUARANTINED -> EXPIRED``).
* ``STORED -> EXPIRED``: retention runs from storage, whether or not the
  backup copy exists yet.
* ``DELETING -> DELETING``: deletion removes several physical copies one by
  one; a run that crashed half-way re-enters DELETING when it resumes, so the
  resumption is audited like the start. Deleting is idempotent per copy.
* ``DELETED`` is terminal; the row stays as the tombstone the audit trail
  points at.

A legal hold (``objects.legal_hold``) is not a state: it is orthogonal to the
lifecycle and only forbids entering :data:`HOLD_BLOCKS` (see ``Catalog``).
"""

from __future__ import annotations

RECEIVED = "RECEIVED"
VALIDATED = "VALIDATED"
CLASSIFIED = "CLASSIFIED"
DEIDENTIFIED = "DEIDENTIFIED"
NEEDS_REVIEW = "NEEDS_REVIEW"
PROTECTED = "PROTECTED"
STORED = "STORED"
BACKED_UP = "BACKED_UP"
EXPIRED = "EXPIRED"
DELETING = "DELETING"
DELETED = "DELETED"
QUARANTINED = "QUARANTINED"

#: state -> the states it may move to. The single source of truth.
TRANSITIONS: dict[str, frozenset[str]] = {
    RECEIVED: frozenset({VALIDATED, QUARANTINED}),
    VALIDATED: frozenset({CLASSIFIED, QUARANTINED}),
    CLASSIFIED: frozenset({DEIDENTIFIED, NEEDS_REVIEW, PROTECTED, QUARANTINED}),
    NEEDS_REVIEW: frozenset({DEIDENTIFIED, PROTECTED, QUARANTINED}),
    DEIDENTIFIED: frozenset({PROTECTED}),
    PROTECTED: frozenset({STORED}),
    STORED: frozenset({BACKED_UP, EXPIRED}),
    BACKED_UP: frozenset({EXPIRED}),
    QUARANTINED: frozenset({EXPIRED}),
    EXPIRED: frozenset({DELETING}),
    DELETING: frozenset({DELETING, DELETED}),
    DELETED: frozenset(),
}

#: States a new object may be registered in.
INITIAL_STATES = frozenset({RECEIVED, QUARANTINED})

#: Columns that must be non-null once an object is in the state (checked
#: after the transition's field updates are applied).
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    RECEIVED: ("sop_key", "study_key", "series_key", "sop_class_uid", "sha256", "size"),
    CLASSIFIED: ("tier", "rule_id"),
    QUARANTINED: ("quarantine_reason",),
    PROTECTED: ("ciphertext_sha256", "key_id"),
    STORED: ("zone",),
}

#: The audit action recorded when an object enters each state.
STATE_ACTIONS: dict[str, str] = {
    RECEIVED: "object.register",
    VALIDATED: "object.validate",
    CLASSIFIED: "object.classify",
    DEIDENTIFIED: "object.deidentify",
    NEEDS_REVIEW: "object.flag_review",
    PROTECTED: "object.protect",
    STORED: "object.store",
    BACKED_UP: "object.backup",
    EXPIRED: "object.expire",
    DELETING: "object.delete_start",
    DELETED: "object.delete",
    QUARANTINED: "object.quarantine",
}

#: States a legal hold forbids entering: nothing under hold starts or
#: continues deletion.
HOLD_BLOCKS = frozenset({DELETING, DELETED})

#: States whose objects are swept by retention: exactly those with an edge to EXPIRED.
EXPIRABLE = frozenset(s for s, nxt in TRANSITIONS.items() if EXPIRED in nxt)

#: Batch states: OPEN while files are ingested, then the ingest gate decides.
#: A batch whose gate failed may be re-opened after the cause is fixed.
BATCH_TRANSITIONS: dict[str, frozenset[str]] = {
    "OPEN": frozenset({"INGESTED", "GATE_FAILED"}),
    "GATE_FAILED": frozenset({"OPEN"}),
    "INGESTED": frozenset(),
}

assert set(TRANSITIONS) == set(STATE_ACTIONS), "every state needs an audit action"
assert all(n in TRANSITIONS for nxt in TRANSITIONS.values() for n in nxt), "transition to an unknown state"
