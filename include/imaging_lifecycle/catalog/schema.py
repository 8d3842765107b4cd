"""The tables of the catalog database: lifecycle catalog and audit trail together.

The audit trail lives in the same database as the catalog so a catalog change
and its audit record commit in one transaction: the trail cannot miss a
change, and a change cannot exist without its record.

Portable SQL only (SQLite by default, PostgreSQL by URL). The two
dialect-specific bits are obvious and small: partial-index ``WHERE`` clauses
(both dialects support them) and the append-only triggers on
``audit_records``.

No column ever holds a patient identifier. UIDs of the original are stored
only as keyed digests (``sop_key``, ``study_key``, ``series_key``); the SOP
*Class* UID names a kind of object (e.g. CT Image Storage), identifies nobody
and is kept plain.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    event,
    text,
)
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in Python, naive UTC in the database (portable).

    Refuses naive datetimes: a local time taken for UTC would shift every
    retention deadline by the server's offset.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: pass a timezone-aware (UTC) value")
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=dt.timezone.utc)


metadata = MetaData()

#: One row per logical object (an arrived DICOM file). ``id`` is the catalog
#: id: uuid4 hex, the only name by which logs, XCom and audit records refer
#: to an object.
objects = Table(
    "objects",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("sop_key", String(64), index=True),  # keyed digest of SOP Instance UID
    Column("study_key", String(64), index=True),  # keyed digest of Study Instance UID
    Column("series_key", String(64)),  # keyed digest of Series Instance UID
    Column("sop_class_uid", String(64)),  # not identifying: kept plain
    Column("sha256", String(64)),  # plaintext content hash
    Column("size", BigInteger),
    Column("state", String(16), nullable=False, index=True),
    Column("tier", Integer),  # sensitivity tier: ingest's proposal at VALIDATED, settled at CLASSIFIED
    Column("rule_id", String(64)),  # the classification rule that decided the tier
    Column("policy_fingerprint", String(64)),  # the policy that rule belongs to (SHA-256 of the validated policy)
    Column("zone", String(32)),  # storage zone of the primary copy
    Column("ciphertext_sha256", String(64)),
    Column("key_id", String(128)),  # DEK id (crypto.new_key_id), never key material
    Column("retention_deadline", UTCDateTime(), index=True),
    Column("legal_hold", Boolean, nullable=False, default=False),
    Column("batch_id", String(64), ForeignKey("batches.id"), index=True),
    Column("source", String(64), index=True),  # "landing", "cstore:<AE title>" or "derived:<parent id>"
    Column("quarantine_reason", String(64)),  # reason code, never free text
    Column("flagged", String(64)),  # reason code for human attention, or null
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

#: SOP Instance UIDs are unique among objects that were never quarantined
#: and are not deleted: a duplicate arrival is skipped (no second row), a
#: conflicting one is quarantined with the same key, and an instance sent
#: again after its deletion is a new object. ``quarantine_reason`` is set on
#: entering QUARANTINED and never cleared, so a quarantined object stays out
#: of the constraint through its own EXPIRED/DELETING/DELETED states.
LIVE_SOP_CONDITION = "quarantine_reason IS NULL AND state <> 'DELETED'"
Index(
    "uq_objects_live_sop_key",
    objects.c.sop_key,
    unique=True,
    sqlite_where=text(LIVE_SOP_CONDITION),
    postgresql_where=text(LIVE_SOP_CONDITION),
)

#: One row per physical copy (an object-store object version). A copy is
#: never removed from this table: ``deleted_at`` records its secure deletion.
copies = Table(
    "copies",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("object_id", String(32), ForeignKey("objects.id"), nullable=False, index=True),
    Column("zone", String(32), nullable=False),
    Column("bucket", String(63), nullable=False),
    Column("key", String(1024), nullable=False),
    Column("version_id", String(1024)),
    Column("ciphertext_sha256", String(64)),
    Column("key_id", String(128)),
    Column("deadline", UTCDateTime(), index=True),  # e.g. the 72-hour cache rule
    Column("created_at", UTCDateTime(), nullable=False),
    Column("deleted_at", UTCDateTime()),
    Column("verified_at", UTCDateTime()),
)

#: One row per data key (DEK): the DEK wrapped under its KEK, kept apart from
#: the ciphertext it opens. Also what the object's associated data was bound
#: to (zone and tier at encryption time), since a byte-identical replica in
#: another zone keeps them. Crypto-shredding one object = clearing ``wrapped``
#: (``destroyed_at`` set); a per-study KEK destroys all of a study's at once.
data_keys = Table(
    "data_keys",
    metadata,
    Column("id", String(64), primary_key=True),  # crypto.new_key_id(), the AAD key_version
    Column("kek_ref", String(160), nullable=False, index=True),  # "<kek_id>@v<version>"
    Column("wrapped", LargeBinary),  # null once destroyed
    Column("aad_zone", String(32), nullable=False),
    Column("aad_tier", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("destroyed_at", UTCDateTime()),
)

#: One row per ingest batch. ``counts`` is a JSON object of name -> int.
batches = Table(
    "batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("counts", Text, nullable=False, default="{}"),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

#: The hash-chained audit trail (see ``imaging_lifecycle.catalog.audit`` for the
#: exact hash input). ``ts`` is kept as its canonical string so the value
#: hashed is the value stored, with no driver round-trip in between.
audit_records = Table(
    "audit_records",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", String(24), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("action", String(64), nullable=False),
    Column("event_id", Integer),
    Column("object_ref", String(128), index=True),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

#: One row (id = 1): the chain head. Every write transaction locks it first
#: on server databases, which serializes appends into one linear chain (on
#: SQLite ``BEGIN IMMEDIATE`` does the same). ``verify`` cross-checks it
#: against the last record, so deleting the tail without fixing the head is
#: caught even without an external anchor.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

# Append-only at the database level too: ordinary code paths (and careless
# people at an SQL prompt) cannot UPDATE or DELETE audit records. Someone who
# drops the triggers can; the hash chain is what makes that evident.
for _op in ("UPDATE", "DELETE"):
    event.listen(
        audit_records,
        "after_create",
        DDL(
            f"CREATE TRIGGER audit_records_no_{_op.lower()} BEFORE {_op} ON audit_records "
            "BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END"
        ).execute_if(dialect="sqlite"),
    )
event.listen(
    audit_records,
    "after_create",
    DDL(
        "CREATE FUNCTION il_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'audit records are append-only'; END $$"
    ).execute_if(dialect="postgresql"),
)
event.listen(
    audit_records,
    "after_create",
    DDL(
        "CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records "
        "FOR EACH ROW EXECUTE FUNCTION il_audit_append_only()"
    ).execute_if(dialect="postgresql"),
)
#: A row trigger does not see TRUNCATE; this statement trigger does (created, or added to an older
#: catalog, by ``db.Database.ensure_schema``).
PG_NO_TRUNCATE = (
    "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'audit_records_no_truncate') THEN "
    "CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records "
    "FOR EACH STATEMENT EXECUTE FUNCTION il_audit_append_only(); END IF; END $$"
)

#: The policy the platform runs under: one row, id 1. A process whose policy
#: has another fingerprint refuses guarded actions (see ``services.Services.guard``).
platform_policy = Table(
    "platform_policy",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("source", String(512)),
    Column("adopted_at", UTCDateTime, nullable=False),
    Column("adopted_by", String(128), nullable=False),
)

#: One row per cache grant: a working copy re-encrypted under a KEK of its own
#: (scope ``grant:<id>``), for one requester, until ``deadline`` (at most the
#: tier's cache term). The row is written *before* the upload, so a retrieval
#: that dies half-way still leaves the sweeper something to erase.
grants = Table(
    "grants",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("object_id", String(32), ForeignKey("objects.id"), nullable=False, index=True),
    Column("copy_id", String(32), index=True),  # set once the cache copy is recorded
    Column("key", String(1024), nullable=False),  # object key in the cache zone
    Column("kek_scope", String(64), nullable=False),
    Column("actor", String(256), nullable=False),  # who asked
    Column("created_at", UTCDateTime(), nullable=False),
    Column("deadline", UTCDateTime(), nullable=False, index=True),
    Column("erased_at", UTCDateTime()),
    Column("request_id", String(32), index=True),  # the approved access request it fulfils
)

#: Access requests (``imaging_lifecycle.access``): who asked for what, on which
#: objects, why, and what became of it. ``justification`` is the requester's
#: own words for the approvers: kept here only, never in an audit record, log or XCom.
access_requests = Table(
    "access_requests",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("action", String(32), nullable=False),
    Column("requester", String(128), nullable=False, index=True),
    Column("object_ids", Text, nullable=False),  # JSON list of catalog ids
    Column("departments", Text, nullable=False),  # JSON list of department ids
    Column("tiers", Text, nullable=False),  # JSON list of tier levels
    Column("purpose", String(64), nullable=False),
    Column("hours", Integer),
    Column("justification", Text, nullable=False),
    Column("agreement_id", String(32)),
    Column("policy_target", String(64)),  # policy_change: the fingerprint to adopt
    Column("emergency", Boolean, nullable=False, default=False),
    Column("state", String(16), nullable=False, index=True),  # PENDING APPROVED DENIED REFUSED FULFILLED
    Column("reason", String(64)),  # reason code of a denial or refusal
    Column("policy_fingerprint", String(64), nullable=False),  # the policy it was judged under
    Column("created_at", UTCDateTime(), nullable=False),
    Column("decided_at", UTCDateTime()),
    Column("expires_at", UTCDateTime()),  # an approval is usable until then
    Column("fulfilled_at", UTCDateTime()),
    Column("reviewed_at", UTCDateTime()),  # emergency access: the data security officer's review
    Column("reviewed_by", String(128)),
)

#: One row per answered approval step (``dso``, ``head:<department>``): who, which option, when.
access_decisions = Table(
    "access_decisions",
    metadata,
    Column("request_id", String(32), ForeignKey("access_requests.id"), primary_key=True),
    Column("step", String(80), primary_key=True),
    Column("approver", String(128), nullable=False),
    Column("approved", Boolean, nullable=False),
    Column("decided_at", UTCDateTime(), nullable=False),
)

#: Incidents: raised by anomaly findings, gate failures, restore mismatches, audit-chain breaks,
#: overdue deletions, bursts of rejected associations and emergency access; worked by named people.
incidents = Table(
    "incidents",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("source_key", String(256), nullable=False, unique=True),  # what raised it: never raised twice
    Column("nature", String(64), nullable=False),  # a code: slow_accumulation, gate_failure, ...
    Column("level", String(16), nullable=False, index=True),  # warning | major | emergency
    Column("user", String(128)),  # the person a finding is about (never a patient)
    Column("scope", Text, nullable=False),  # JSON: counts, tiers, time window, object count
    Column("responsible_role", String(64), nullable=False),
    Column("actions", Text, nullable=False),  # JSON list of {at, by, action, note-code}
    Column("state", String(16), nullable=False, index=True),  # OPEN ACKNOWLEDGED CONTAINED RESOLVED
    Column("detected_at", UTCDateTime(), nullable=False),
    Column("acknowledged_at", UTCDateTime()),
    Column("acknowledged_by", String(128)),
    Column("contained_at", UTCDateTime()),
    Column("contained_by", String(128)),
    Column("resolved_at", UTCDateTime()),
    Column("resolved_by", String(128)),
    Column("notified_at", UTCDateTime()),
)

#: Compliance reports: one per period, stored encrypted in the audit zone (the bytes never live here).
reports = Table(
    "reports",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("period_start", UTCDateTime(), nullable=False),
    Column("period_end", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("sealed_pdf", Text, nullable=False),  # JSON: where and how the encrypted PDF is stored (no key bytes)
    Column("sealed_html", Text, nullable=False),
    Column("sha256", String(64), nullable=False),  # of the PDF
)

#: Data-sharing agreements that exports are made under.
agreements = Table(
    "agreements",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("recipient", String(256), nullable=False),
    Column("scope", String(1024), nullable=False),
    Column("purpose", String(64), nullable=False),
    Column("legal_basis", String(256), nullable=False),
    Column("starts_at", UTCDateTime(), nullable=False),
    Column("ends_at", UTCDateTime(), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

#: Deletion certificates (NIST SP 800-88 style), one per deleted object or
#: expired copy. ``body`` is canonical JSON; written in the same transaction
#: as the DELETED state (or the copy's ``deleted_at``), so no certificate can
#: exist without its deletion.
certificates = Table(
    "certificates",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("object_id", String(32), ForeignKey("objects.id"), nullable=False, index=True),
    Column("scope", String(64), nullable=False),  # "object" or "copy:<copy id>"
    Column("body", Text, nullable=False),
    Column("issued_at", UTCDateTime(), nullable=False),
)

#: Originals claimed from a landing folder and waiting, encrypted in the ``staging`` zone, for their
#: ingest chunk (``ingest.claim_batch`` writes a row, ``ingest.ingest_file`` deletes it once the
#: original is stored or quarantined). Shared by every worker, so any host can run any chunk.
#: ``problem`` is a reason code found on the landing host (a link, an unreadable file): no bytes
#: were staged for such a row, and its chunk quarantines it with that reason.
staged_files = Table(
    "staged_files",
    metadata,
    Column("object_id", String(32), primary_key=True),
    Column("batch_id", String(64), nullable=False, index=True),
    Column("chunk", Integer, nullable=False),
    Column("source", String(80), nullable=False),
    Column("scope_id", String(96), nullable=False),  # the staging KEK's scope: staging:<first batch id>
    Column("sealed", Text),  # the staged copy as a Sealed record in JSON (its DEK only wrapped)
    Column("problem", String(32)),
    Column("landing_id", String(40), nullable=False),
    Column("staged_at", UTCDateTime(), nullable=False),
)

#: The key store's sealed state, when the key store lives in the catalog (``IL_KMIP_*`` set: the
#: master-key generations live in the KMS). One row per key store ``name``; ``blob`` is the same
#: sealed format as the file store's, ``write_id`` changes on every write.
keystore_state = Table(
    "keystore_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("blob", LargeBinary, nullable=False),
    Column("write_id", String(32), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)
