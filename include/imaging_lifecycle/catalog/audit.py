"""The tamper-evident audit trail: an append-only, hash-chained log in the catalog database.

Every record has a monotonic ``seq`` (1, 2, 3, ...), the ``prev_hash`` of the
record before it (64 zeros for the first) and its own ``hash``::

    hash = SHA-256( prev_hash || canonical_json(content) )      (UTF-8, hex digest)
    content = {"seq", "ts", "actor", "action", "event_id", "object_ref", "outcome", "detail"}
    canonical_json = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

``ts`` is UTC with millisecond precision, ``YYYY-MM-DDTHH:MM:SS.mmmZ``. That
is the whole format; an external verifier can be written from this docstring.

What a chain detects on its own: a changed field (the hash no longer
matches), a deleted, inserted or reordered record (``seq`` gap or broken
``prev_hash`` link), and a deleted tail whose head row was left alone. Anyone
with write access can rewrite the *whole* chain from some point on; that is
what anchoring is for: :meth:`AuditLog.head` gives ``(seq, hash)`` to copy to
write-once storage, and ``verify(expected_head=...)`` proves the chain still
contains that head, so a truncated or rewritten history shows.

No record may carry a patient identifier. ``object_ref`` is a catalog id or a
keyed digest (:func:`object_ref_for_uid`), and ``detail`` is a small JSON
object of counts and codes; :func:`check_detail` rejects values that look
like what must not be there (see its docstring). Error messages here never
echo a rejected value.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, func, insert, inspect, select, update

from imaging_lifecycle.catalog.db import HEAD_ID, ZERO_HASH, Database, before_commit
from imaging_lifecycle.catalog.schema import audit_head, audit_records

__all__ = [
    "ACTIONS", "EVENTS", "OUTCOMES", "ZERO_HASH", "AuditError", "UnsafeAuditValue", "AuditRecord",
    "VerifyResult", "AuditLog", "check_detail", "check_actor", "object_ref_for_uid", "canonical_json", "chain_hash",
]

#: DICOM PS3.15 A.5 audit event ids (EventID, DCM code scheme) used here.
EVENTS: dict[int, str] = {
    110100: "Application Activity",
    110101: "Audit Log Used",
    110103: "DICOM Instances Accessed",
    110104: "DICOM Instances Transferred",
    110105: "DICOM Study Deleted",
    110106: "Export",
    110107: "Import",
    110110: "Patient Record",
    110112: "Query",
    110113: "Security Alert",
    110114: "User Authentication",
}

#: Our action names -> PS3.15 event id. A closed vocabulary: appending an
#: action not listed here is an error, so every record maps to an event.
#: PS3.15 has no "instance deleted" event; deletions use 110105, the nearest.
ACTIONS: dict[str, int] = {
    # object lifecycle (one per state entered; see catalog.states.STATE_ACTIONS)
    "object.register": 110107,
    "object.duplicate_skipped": 110107,
    "object.quarantine": 110107,
    "object.validate": 110103,
    "object.classify": 110103,
    "object.deidentify": 110103,
    "object.flag_review": 110113,
    "object.protect": 110103,
    "object.store": 110104,
    "object.backup": 110104,
    "object.expire": 110103,
    "object.delete_start": 110105,
    "object.delete": 110105,
    "object.legal_hold": 110103,
    "object.legal_hold_release": 110103,
    "object.access": 110103,
    "object.export": 110106,
    # physical copies
    "copy.add": 110104,
    "copy.verify": 110103,
    "copy.delete": 110105,
    # batches and gates
    "batch.open": 110107,
    "batch.claim": 110107,
    "batch.state": 110107,
    "gate.run": 110100,
    "policy.adopt": 110100,
    "review.decision": 110103,
    # the catalog and the trail themselves
    "catalog.query": 110112,
    "audit.verify": 110101,
    "audit.show": 110101,
    "audit.anchor": 110101,
    "security.alert": 110113,
    "key.rotate": 110113,
    "key.destroy": 110105,
    "key.reseal": 110113,
    "incident.raise": 110113,
    "incident.acknowledge": 110113,
    "incident.contain": 110113,
    "incident.resolve": 110113,
    "incident.notify": 110113,
    "report.create": 110106,
    "report.read": 110106,
    "key.dr_export": 110113,
    "key.dr_restore": 110113,
    "user.login": 110114,
    "app.start": 110100,
    "app.stop": 110100,
    # retention, cache grants and secure deletion
    "retention.set": 110103,
    "grant.create": 110103,
    "grant.read": 110106,
    "grant.erase": 110105,
    # access requests and two-person approval
    "access.request": 110100,
    "access.decision": 110100,
    "access.outcome": 110100,
    "access.denied": 110113,
    "access.emergency": 110113,
    "access.emergency_review": 110113,
    "access.reidentify": 110110,
    "agreement.add": 110100,
    "deletion.certificate": 110105,
    # objects flagged for human attention (e.g. a backup mismatch)
    "object.flag": 110113,
}
assert set(ACTIONS.values()) <= set(EVENTS)

#: Outcome names -> ATNA EventOutcomeIndicator (0 success, 4 minor failure:
#: action restarted, 8 serious failure: action terminated, 12 major failure:
#: action made unavailable).
OUTCOMES: dict[str, int] = {"success": 0, "minor_failure": 4, "failure": 8, "major_failure": 12}

_TS_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
_TOKEN = re.compile(r"^[A-Za-z0-9_.:/@+\-]*$")
_UID_RUN = re.compile(r"\d+(?:\.\d+){3,}")
_ISO_DATE = re.compile(r"(?<!\d)\d{4}-\d{2}-\d{2}(?!\d)")
_ALNUM_RUNS = re.compile(r"[A-Za-z0-9]+")
_DA = re.compile(r"^(?:19|20)\d{6}$")
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")
MAX_STRING = 128
MAX_DETAIL_BYTES = 4096
MAX_DEPTH = 3


class AuditError(RuntimeError):
    """The trail cannot be appended to (e.g. its head row is missing)."""


class UnsafeAuditValue(ValueError):
    """A value offered for an audit record may carry patient data, or is malformed."""


# ---------------------------------------------------------------------------
# Guards: what may go into a record.
# ---------------------------------------------------------------------------


def _check_string(value: str, where: str) -> None:
    if len(value) > MAX_STRING:
        raise UnsafeAuditValue(f"{where}: strings are at most {MAX_STRING} characters")
    if not _TOKEN.match(value):
        raise UnsafeAuditValue(
            f"{where}: only single tokens (letters, digits, _ . : / @ + -) are allowed; "
            "free text, spaces and '^' can carry names"
        )
    if _UID_RUN.search(value):
        raise UnsafeAuditValue(f"{where}: looks like a DICOM UID")
    if _ISO_DATE.search(value):
        raise UnsafeAuditValue(f"{where}: looks like a date")
    for run in _ALNUM_RUNS.findall(value):
        if _DA.match(run):
            raise UnsafeAuditValue(f"{where}: looks like a DICOM date")
    # 32 and 64 characters are the lengths of catalog ids and keyed digests,
    # which (rarely, being hex) can come out all digits.
    if value.isdigit() and len(value) >= 6 and len(value) not in (32, 64):
        raise UnsafeAuditValue(f"{where}: a long digit string may be a patient or accession number; use an int")


def _check_value(value: Any, where: str, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) >= 2**63:
            raise UnsafeAuditValue(f"{where}: integer out of range")
        return value
    if isinstance(value, str):
        _check_string(value, where)
        return value
    if depth >= MAX_DEPTH:
        raise UnsafeAuditValue(f"{where}: nested too deeply (at most {MAX_DEPTH} levels)")
    if isinstance(value, (list, tuple)):
        return [_check_value(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or not _KEY.match(k):
                raise UnsafeAuditValue(f"{where}: keys must be short identifiers (letter first, [A-Za-z0-9_.-])")
            out[k] = _check_value(v, f"{where}.{k}", depth + 1)
        return out
    # Floats are refused on purpose: their JSON text differs between
    # implementations, which would make the canonical form ambiguous.
    raise UnsafeAuditValue(f"{where}: {type(value).__name__} is not allowed (ints, bools, tokens, lists, dicts)")


def check_detail(detail: dict | None) -> dict:
    """Validate an audit ``detail`` and return it as a plain dict.

    Allowed: a dict with identifier-like keys whose values are ints, bools,
    None, short single-token strings (reason codes, zone names, catalog ids,
    keyed digests, exception class names), and lists/dicts of those, at most
    three levels deep and 4 KiB as JSON. Refused, because they are how patient
    data slips in: free text (any whitespace), PN-style names (``^``), dotted
    numeric runs like DICOM UIDs, dates (``YYYYMMDD`` or ``YYYY-MM-DD``),
    long digit-only strings (patient or accession numbers), and floats.
    """
    if detail is None:
        return {}
    if not isinstance(detail, dict):
        raise UnsafeAuditValue("detail must be a dict")
    out = _check_value(detail, "detail", 0)
    if len(canonical_json(out)) > MAX_DETAIL_BYTES:
        raise UnsafeAuditValue(f"detail is larger than {MAX_DETAIL_BYTES} bytes as JSON")
    return out


def check_actor(actor: object) -> str:
    """A user name or ``dag_id/task_id/run_id``. Run ids carry timestamps, so dates are allowed here."""
    if not isinstance(actor, str) or not 0 < len(actor) <= 256:
        raise UnsafeAuditValue("actor must be a non-empty string of at most 256 characters")
    if not actor.isprintable() or "^" in actor or "\\" in actor:
        raise UnsafeAuditValue("actor must be printable and contain no '^' or '\\'")
    if _UID_RUN.search(actor):
        raise UnsafeAuditValue("actor looks like it contains a DICOM UID")
    return actor


def _check_object_ref(ref: object) -> str | None:
    if ref is None:
        return None
    if not isinstance(ref, str) or not ref:
        raise UnsafeAuditValue("object_ref must be a non-empty string (catalog id or keyed digest)")
    _check_string(ref, "object_ref")
    return ref


# ---------------------------------------------------------------------------
# The chain.
# ---------------------------------------------------------------------------


def canonical_json(value: Any) -> str:
    """The one JSON text of ``value`` that is hashed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def chain_hash(prev_hash: str, content: dict) -> str:
    """``SHA-256(prev_hash || canonical_json(content))`` as hex."""
    return hashlib.sha256((prev_hash + canonical_json(content)).encode("utf-8")).hexdigest()


def plain_utc(when: dt.datetime) -> dt.datetime:
    """A stdlib ``datetime`` in UTC (Airflow hands out pendulum ``DateTime``; the catalog wants the plain type)."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("a timezone-aware datetime is needed")
    return dt.datetime.fromtimestamp(when.timestamp(), dt.timezone.utc)


def parse_ts(ts: str) -> dt.datetime:
    """Inverse of :func:`format_ts`: a record's ``ts`` as an aware UTC datetime."""
    return dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)


def format_ts(when: dt.datetime) -> str:
    """UTC, millisecond precision, ``Z`` suffix: the canonical timestamp."""
    when = when.astimezone(dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts: str
    actor: str
    action: str
    event_id: int | None
    object_ref: str | None
    outcome: str
    detail: dict = field(default_factory=dict)
    prev_hash: str = ZERO_HASH
    hash: str = ""

    @property
    def outcome_code(self) -> int | None:
        """The ATNA EventOutcomeIndicator for ``outcome``."""
        return OUTCOMES.get(self.outcome)

    @property
    def event_name(self) -> str | None:
        return EVENTS.get(self.event_id) if self.event_id is not None else None

    def content(self) -> dict:
        """The hashed fields, exactly as hashed."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "actor": self.actor,
            "action": self.action,
            "event_id": self.event_id,
            "object_ref": self.object_ref,
            "outcome": self.outcome,
            "detail": self.detail,
        }

    def public(self) -> dict:
        """JSON-safe dict of the whole record (it holds no patient data by construction)."""
        return {**self.content(), "outcome_code": self.outcome_code, "prev_hash": self.prev_hash, "hash": self.hash}


@dataclass(frozen=True)
class VerifyResult:
    """What :meth:`AuditLog.verify` found.

    ``code`` is machine-readable: ``OK``, ``GAP`` (a seq is missing: record
    deleted), ``BAD_SEQ`` (seq out of order or duplicated: reordered or
    inserted), ``BROKEN_LINK`` (prev_hash does not match the record before:
    deleted, inserted or reordered), ``BAD_HASH`` (content changed),
    ``MALFORMED`` (a field is not in its canonical form), ``HEAD_MISMATCH``
    (the head row disagrees with the last record: tail deleted or records
    written around the log), ``ANCHOR_MISSING`` (the chain is shorter than
    the anchored head: tail truncated), ``ANCHOR_MISMATCH`` (the record at the
    anchored seq has another hash: history rewritten), ``UNAUDITED``
    (catalog objects that no record mentions: the trail lost records, or the
    catalog was written around the API).
    """

    ok: bool
    first_bad_seq: int | None
    reason: str
    count: int
    head_hash: str
    head_seq: int = 0
    code: str = "OK"


def _row_to_record(row) -> AuditRecord:  # noqa: ANN001
    return AuditRecord(
        seq=row.seq, ts=row.ts, actor=row.actor, action=row.action, event_id=row.event_id,
        object_ref=row.object_ref, outcome=row.outcome, detail=json.loads(row.detail),
        prev_hash=row.prev_hash, hash=row.hash,
    )


class HasDatabase(Protocol):
    """Anything that holds its catalog ``Database`` as ``db``, such as a ``Catalog``.

    A structural type, so this module depends only on ``catalog.db`` and
    ``catalog.schema``, never on the catalog package that builds on it.
    """

    db: Database


class _PendingChain:
    """A write transaction's new audit records: inserted in one statement, and the head moved once,
    just before the transaction commits (``db.before_commit``). The head is read, and on PostgreSQL
    locked, at the transaction's first append; nobody else can append until it commits."""

    def __init__(self, seq: int, head_hash: str) -> None:
        self.seq, self.hash, self.rows = seq, head_hash, []

    @classmethod
    def open(cls, conn: Connection) -> _PendingChain:
        head = conn.execute(
            select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == HEAD_ID).with_for_update()
        ).first()
        if head is None:
            raise AuditError("the audit chain head row is missing; run 'imaging-lifecycle audit verify'")
        return cls(head.seq, head.hash)

    def add(self, row: dict, seq: int, digest: str) -> None:
        self.rows.append(row)
        self.seq, self.hash = seq, digest

    def flush(self, conn: Connection) -> None:
        if self.rows:
            conn.execute(insert(audit_records), self.rows)
            conn.execute(update(audit_head).where(audit_head.c.id == HEAD_ID).values(seq=self.seq, hash=self.hash))
            self.rows = []


class AuditLog:
    """Append to and verify the audit chain of one catalog database.

    ``target`` is a :class:`~imaging_lifecycle.catalog.Catalog` (or anything
    else with a ``db``, see :class:`HasDatabase`), a SQLAlchemy ``Engine`` or
    a database URL (the tables are then created if missing, as ``Catalog``
    does), or a ``catalog.db.Database`` (used as it is: nothing is created;
    what ``audit verify`` uses).
    """

    def __init__(self, target: HasDatabase | Database | Engine | str):
        db = target if isinstance(target, Database) else getattr(target, "db", None)
        if isinstance(db, Database):
            self.db = db
        else:
            self.db = Database(target)  # type: ignore[arg-type]
            self.db.ensure_schema()

    def append(
        self,
        actor: str,
        action: str,
        object_ref: str | None = None,
        outcome: str = "success",
        detail: dict | None = None,
        session: Connection | None = None,
    ) -> AuditRecord:
        """Append one record and return it.

        With ``session`` (a connection from ``Catalog.transaction()``) the
        record is part of that transaction and commits or rolls back with it;
        otherwise it commits on its own. Raises :class:`UnsafeAuditValue` for a
        value that may carry patient data (the value is not echoed), and
        ``ValueError`` for an unknown action or outcome.
        """
        actor = check_actor(actor)
        if action not in ACTIONS:
            raise ValueError(
                "unknown audit action; known actions are listed in imaging_lifecycle.catalog.audit.ACTIONS"
            )
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
        object_ref = _check_object_ref(object_ref)
        detail = check_detail(detail)
        with self.db.write(session) as conn:
            chain = before_commit(conn, "audit", lambda: _PendingChain.open(conn))
            record = AuditRecord(
                seq=chain.seq + 1,
                # Taken inside the write transaction, which holds the write lock from its start
                # (db.py), so timestamps follow seq order (unless the clock itself steps back).
                ts=format_ts(dt.datetime.now(dt.timezone.utc)),
                actor=actor,
                action=action,
                event_id=ACTIONS[action],
                object_ref=object_ref,
                outcome=outcome,
                detail=detail,
                prev_hash=chain.hash,
            )
            digest = chain_hash(record.prev_hash, record.content())
            chain.add({**record.content(), "detail": canonical_json(detail), "prev_hash": record.prev_hash,
                       "hash": digest}, record.seq, digest)
        return AuditRecord(**{**record.__dict__, "hash": digest})

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last record, ``(0, 64 zeros)`` for an empty trail: what to anchor."""
        with self.db.read() as conn:
            row = conn.execute(
                select(audit_records.c.seq, audit_records.c.hash).order_by(audit_records.c.seq.desc()).limit(1)
            ).first()
        return (row.seq, row.hash) if row else (0, ZERO_HASH)

    def count(self) -> int:
        with self.db.read() as conn:
            return conn.execute(select(func.count()).select_from(audit_records)).scalar_one()

    def records(self, *, after_seq: int = 0, limit: int | None = None, last: int | None = None,
                object_ref: str | None = None) -> list[AuditRecord]:
        """Records in seq order: those after ``after_seq`` (up to ``limit``), or the ``last`` N."""
        q = select(audit_records)
        if object_ref is not None:
            q = q.where(audit_records.c.object_ref == object_ref)
        if last is not None:
            q = q.order_by(audit_records.c.seq.desc()).limit(last)
        else:
            q = q.where(audit_records.c.seq > after_seq).order_by(audit_records.c.seq)
            if limit is not None:
                q = q.limit(limit)
        with self.db.read() as conn:
            rows = [_row_to_record(r) for r in conn.execute(q)]
        return sorted(rows, key=lambda r: r.seq)

    def by_actions(self, actions: tuple[str, ...], *, since: dt.datetime, until: dt.datetime) -> list[AuditRecord]:
        """The records of these actions with ``since <= ts < until``, in seq order (detectors, reports)."""
        q = (select(audit_records).where(audit_records.c.action.in_(actions))
             .where(audit_records.c.ts >= format_ts(since)).where(audit_records.c.ts < format_ts(until))
             .order_by(audit_records.c.seq))
        with self.db.read() as conn:
            return [_row_to_record(r) for r in conn.execute(q)]

    def _iter_rows(self, conn: Connection, batch: int) -> Iterator:
        """All records in seq order, fetched in pages by seq (bounded memory, any dialect)."""
        last = None
        while True:
            q = select(audit_records).order_by(audit_records.c.seq).limit(batch)
            if last is not None:
                q = q.where(audit_records.c.seq > last)
            rows = conn.execute(q).all()
            if not rows:
                return
            yield from rows
            last = rows[-1].seq

    def verify(self, expected_head: tuple[int, str] | None = None, *, batch: int = 5000) -> VerifyResult:
        """Walk the whole chain in one snapshot and report the first problem.

        ``expected_head`` is an anchored ``(seq, hash)`` from :meth:`head`;
        with it a truncated tail or a rewritten history is detected too.
        """
        prev_hash, expected_seq, count, last_seq = ZERO_HASH, 1, 0, 0
        anchor_seen = False
        with self.db.read() as conn:
            head_row = conn.execute(
                select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == HEAD_ID)
            ).first()

            def bad(seq: int | None, code: str, reason: str) -> VerifyResult:
                return VerifyResult(False, seq, reason, count, prev_hash, last_seq, code)

            for row in self._iter_rows(conn, batch):
                seq = row.seq
                if seq != expected_seq:
                    if seq > expected_seq:
                        gap = f"seq {expected_seq}" if seq == expected_seq + 1 else f"seq {expected_seq}..{seq - 1}"
                        return bad(expected_seq, "GAP", f"record(s) missing: {gap} (deleted)")
                    return bad(seq, "BAD_SEQ", f"record seq {seq} is out of order (inserted or reordered)")
                problem = _malformed(row)
                if problem:
                    return bad(seq, "MALFORMED", f"record seq {seq}: {problem}")
                if row.prev_hash != prev_hash:
                    return bad(seq, "BROKEN_LINK", (
                        f"record seq {seq}: prev_hash does not match the hash of record {seq - 1} "
                        "(a record was deleted, inserted or reordered)"
                    ))
                record = _row_to_record(row)
                if chain_hash(prev_hash, record.content()) != row.hash:
                    return bad(seq, "BAD_HASH", f"record seq {seq}: content does not match its hash (modified)")
                if expected_head is not None and seq == expected_head[0]:
                    if row.hash != expected_head[1]:
                        return bad(seq, "ANCHOR_MISMATCH", (
                            f"record seq {seq} has a different hash than the anchored head (history rewritten)"
                        ))
                    anchor_seen = True
                prev_hash, last_seq, count, expected_seq = row.hash, seq, count + 1, seq + 1
            if head_row is None:
                return bad(last_seq + 1, "HEAD_MISMATCH", "the chain head row is missing")
            if head_row.seq > last_seq:
                return bad(last_seq + 1, "HEAD_MISMATCH", (
                    f"the chain ends at seq {last_seq} but its head row says {head_row.seq} (tail deleted)"
                ))
            if head_row.seq < last_seq:
                return bad(head_row.seq + 1, "HEAD_MISMATCH", (
                    f"records after seq {head_row.seq} (the head row) exist: written around the log"
                ))
            if head_row.hash != prev_hash:
                return bad(last_seq, "HEAD_MISMATCH", f"the head row's hash differs from record seq {last_seq}")
            unaudited = _unaudited_objects(conn)
            if unaudited:
                return bad(None, "UNAUDITED", (
                    f"{unaudited} catalog object(s) have no audit record at all "
                    "(their records were deleted, or rows were written around the catalog)"
                ))
        if expected_head is not None:
            a_seq, a_hash = expected_head
            if a_seq == 0:
                if a_hash != ZERO_HASH:
                    return VerifyResult(False, None, "anchor seq 0 must have the zero hash", count, prev_hash,
                                        last_seq, "ANCHOR_MISMATCH")
            elif not anchor_seen:
                return VerifyResult(False, last_seq + 1, (
                    f"the chain ends at seq {last_seq} but the anchored head is seq {a_seq} (tail truncated)"
                ), count, prev_hash, last_seq, "ANCHOR_MISSING")
        return VerifyResult(True, None, "intact", count, prev_hash, last_seq, "OK")


def _unaudited_objects(conn: Connection) -> int:
    """How many catalog objects no audit record refers to (each is audited when registered)."""
    from imaging_lifecycle.catalog.schema import objects

    if not inspect(conn).has_table("objects"):
        return 0
    referenced = select(audit_records.c.seq).where(audit_records.c.object_ref == objects.c.id).exists()
    return conn.execute(select(func.count()).select_from(objects).where(~referenced)).scalar_one()


def _malformed(row) -> str | None:  # noqa: ANN001
    """Why a stored row is not in canonical form, or None."""
    if not isinstance(row.ts, str) or not _TS_FORMAT.match(row.ts):
        return "timestamp is not canonical"
    try:
        detail = json.loads(row.detail)
    except (TypeError, ValueError):
        return "detail is not valid JSON"
    if not isinstance(detail, dict):
        return "detail is not a JSON object"
    for name in ("prev_hash", "hash"):
        value = getattr(row, name)
        if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
            return f"{name} is not a SHA-256 hex digest"
    return None


def object_ref_for_uid(uid: str, *, key: bytes | None = None) -> str:
    """The audit ``object_ref`` for a DICOM UID: a keyed digest, never the UID.

    The key is the ``ref-hmac`` local secret; the purpose string keeps these
    digests unjoinable with the catalog's ``sop_key`` of the same UID.
    """
    from imaging_lifecycle.crypto import keyed_digest
    from imaging_lifecycle.secretfiles import load_or_create_secret

    if not isinstance(uid, str) or not uid:
        raise ValueError("uid must be a non-empty string")
    return keyed_digest(key if key is not None else load_or_create_secret("ref-hmac"), "audit-object-ref", uid)
