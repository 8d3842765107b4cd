"""The lifecycle catalog: one row per object, per physical copy and per ingest batch.

Every stage of the pipeline records what it did here, and every change goes
through :class:`Catalog`, which (1) checks it against the state machine in
:mod:`imaging_lifecycle.catalog.states`, (2) validates the values, and (3)
appends the matching audit record *in the same database transaction*, so
the audit trail can never miss a catalog change.

Objects are named by their catalog id (uuid4 hex) everywhere outside the
catalog. UIDs of the original enter only as keyed digests
(:meth:`Catalog.uid_key`); exception messages name catalog ids, states and
field names, never values.

Concurrency: many Airflow worker processes may use one catalog at once; write
transactions are serialized (see :mod:`imaging_lifecycle.catalog.db`), so a
check-then-insert like duplicate detection in :meth:`Catalog.register` is
race-free across processes.

Layout: ``states`` (the state machine, as data), ``schema`` (tables),
``db`` (engine and transactions), this module (the API).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import Connection, func, insert, select, text, update
from sqlalchemy.engine import make_url

from imaging_lifecycle import audit as _audit  # module import: audit imports catalog.db (a cycle)
from imaging_lifecycle.catalog import states
from imaging_lifecycle.catalog.db import Database, DatabaseUsageError
from imaging_lifecycle.catalog.schema import LIVE_SOP_CONDITION, batches, copies, data_keys, objects
from imaging_lifecycle.catalog.states import (
    BATCH_TRANSITIONS,
    DELETED,
    EXPIRABLE,
    HOLD_BLOCKS,
    QUARANTINED,
    RECEIVED,
    REQUIRED_FIELDS,
    STATE_ACTIONS,
    TRANSITIONS,
)
from imaging_lifecycle.settings import ZONES

__all__ = [
    "Catalog", "ObjectRecord", "CopyRecord", "BatchRecord", "Registration", "Expired",
    "CatalogError", "UnknownObject", "IllegalTransition", "LegalHoldActive", "DatabaseUsageError",
    "states", "UID_PURPOSES",
]

#: Purpose strings of the keyed digests of UIDs (domain separation, see crypto.keyed_digest).
UID_PURPOSES: dict[str, str] = {
    "sop": "catalog-sop-instance-uid",
    "study": "catalog-study-instance-uid",
    "series": "catalog-series-instance-uid",
}

#: Audit outcome of entering a state when the caller names none. A
#: quarantine is a refused import: ATNA "serious failure" (8).
DEFAULT_OUTCOMES: dict[str, str] = {QUARANTINED: "failure"}


class CatalogError(Exception):
    """Base of the catalog's own errors."""


class UnknownObject(CatalogError, LookupError):
    """No row with that catalog id (or copy id, or batch id)."""


class IllegalTransition(CatalogError):
    """The state machine does not allow this change; the message names the states and the catalog id."""


class LegalHoldActive(IllegalTransition):
    """The object is under legal hold, which forbids starting or continuing deletion."""


# ---------------------------------------------------------------------------
# Value checks, as a table: column -> checker returning the normalized value.
# Messages name the column, never the value.
# ---------------------------------------------------------------------------

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
_REASON = re.compile(r"^[A-Z][A-Z0-9_]{1,63}$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def _fail(name: str, what: str) -> ValueError:
    return ValueError(f"{name} must be {what}")


def _sha256(name: str, v: Any) -> str:
    if not isinstance(v, str) or not _HEX64.match(v):
        raise _fail(name, "a 64-character hex SHA-256")
    return v.lower()


def _label(name: str, v: Any) -> str:
    if not isinstance(v, str) or not _LABEL.match(v):
        raise _fail(name, "a short label ([A-Za-z0-9_.:-], at most 64 characters)")
    return v


def _reason(name: str, v: Any) -> str:
    if not isinstance(v, str) or not _REASON.match(v):
        raise _fail(name, "an upper-case reason code like NOT_DICOM (never free text)")
    return v


def _tier(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255:
        raise _fail(name, "an int between 0 and 255")
    return v


def _size(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _fail(name, "a non-negative int")
    return v


def _zone(name: str, v: Any) -> str:
    if v not in ZONES:
        raise _fail(name, f"a storage zone ({', '.join(ZONES)})")
    return v


def _when(name: str, v: Any) -> dt.datetime:
    if not isinstance(v, dt.datetime) or v.utcoffset() is None:
        raise _fail(name, "a timezone-aware datetime")
    return v.astimezone(dt.timezone.utc)


def _class_uid(name: str, v: Any) -> str:
    if not isinstance(v, str) or len(v) > 64 or not _UID.match(v):
        raise _fail(name, "a DICOM UID (digits and dots, at most 64 characters)")
    return v


def _bucket(name: str, v: Any) -> str:
    if not isinstance(v, str) or not _BUCKET.match(v):
        raise _fail(name, "an S3 bucket name")
    return v


def _text(name: str, v: Any) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= 1024:
        raise _fail(name, "a non-empty string of at most 1024 characters")
    return v


def _source(name: str, v: Any) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= 64 or not v.isprintable() or any(c in v for c in "^\\"):
        raise _fail(name, "printable text of at most 64 characters, e.g. 'landing' or 'cstore:<AE title>'")
    return v


#: Columns a caller may set, and how each is checked.
FIELD_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "tier": _tier,
    "rule_id": _label,
    "zone": _zone,
    "ciphertext_sha256": _sha256,
    "key_id": _label,
    "retention_deadline": _when,
    "flagged": _label,
    "quarantine_reason": _reason,
}


def _check_fields(fields: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in fields.items():
        check = FIELD_CHECKS.get(name)
        if check is None:
            raise ValueError(f"{name!r} is not a settable catalog field; settable: {', '.join(FIELD_CHECKS)}")
        out[name] = None if value is None and name in ("flagged", "retention_deadline") else check(name, value)
    return out


def _check_id(object_id: Any, what: str = "object_id") -> str:
    if not isinstance(object_id, str) or not _HEX32.match(object_id):
        raise ValueError(f"{what} must be a 32-character lower-case hex catalog id")
    return object_id


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


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


def _batch(row) -> BatchRecord:  # noqa: ANN001
    return BatchRecord(row.id, row.state, json.loads(row.counts), row.created_at, row.updated_at)


class Catalog:
    """The catalog database. ``url`` defaults to the settings' ``catalog_url``.

    Creates missing tables on construction. Every method that writes takes
    ``actor`` (a user name or ``dag_id/task_id/run_id``) for its audit record,
    and an optional ``session``: a connection from :meth:`transaction`, to
    make several changes (and their audit records) commit together.
    """

    def __init__(self, url: str | None = None, *, ref_key: bytes | None = None):
        if url is None:
            from imaging_lifecycle.settings import load_settings

            url = load_settings().catalog_url
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.db = Database(url)
        self.db.ensure_schema()
        self.audit = _audit.AuditLog(self)
        self._ref_key = ref_key

    @property
    def engine(self):  # noqa: ANN201
        return self.db.engine

    def ping(self) -> bool:
        """True if the database answers."""
        return self.db.ping()

    def dispose(self) -> None:
        """Close pooled connections (call before a process forks, or at the end)."""
        self.db.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction: pass the connection as ``session=`` to group changes.

        Commits on normal exit, rolls back (catalog rows *and* audit records)
        on an exception. Write transactions are serialized across processes.
        """
        with self.db.write() as conn:
            yield conn

    @contextmanager
    def session(self) -> Iterator[Connection]:
        """A read-only transaction on one consistent snapshot (for reads only)."""
        with self.db.read() as conn:
            yield conn

    # -- keyed digests ------------------------------------------------------

    def uid_key(self, kind: str, uid: str) -> str:
        """The catalog's keyed digest of a UID; ``kind`` is ``sop``, ``study`` or ``series``."""
        from imaging_lifecycle.crypto import keyed_digest

        if kind not in UID_PURPOSES:
            raise ValueError(f"kind must be one of {', '.join(UID_PURPOSES)}")
        if not isinstance(uid, str) or not uid:
            raise ValueError(f"{kind} UID must be a non-empty string")
        if self._ref_key is None:
            from imaging_lifecycle.secretfiles import load_or_create_secret

            self._ref_key = load_or_create_secret("ref-hmac")
        return keyed_digest(self._ref_key, UID_PURPOSES[kind], uid)

    # -- objects: reads -----------------------------------------------------

    def get(self, object_id: str, *, session: Connection | None = None) -> ObjectRecord:
        """The object with this catalog id; :class:`UnknownObject` if there is none."""
        _check_id(object_id)
        with self.db.read(session) as conn:
            row = conn.execute(select(objects).where(objects.c.id == object_id)).first()
        if row is None:
            raise UnknownObject(f"no catalog object {object_id}")
        return ObjectRecord(**row._mapping)

    def find_by_sop_key(self, sop_key: str, *, session: Connection | None = None) -> ObjectRecord | None:
        """The live object (not quarantined, not deleted) with this ``sop_key``, or None."""
        _sha256("sop_key", sop_key)
        with self.db.read(session) as conn:
            row = conn.execute(
                select(objects).where(objects.c.sop_key == sop_key.lower(), text(LIVE_SOP_CONDITION))
            ).first()
        return None if row is None else ObjectRecord(**row._mapping)

    def find_by_sop_uid(self, sop_instance_uid: str) -> ObjectRecord | None:
        """:meth:`find_by_sop_key` for a raw SOP Instance UID (keyed here, never stored)."""
        return self.find_by_sop_key(self.uid_key("sop", sop_instance_uid))

    def objects(self, *, batch_id: str | None = None, state: str | None = None, limit: int | None = None,
                session: Connection | None = None) -> list[ObjectRecord]:
        """Objects, optionally of one batch and/or state, oldest first."""
        q = select(objects).order_by(objects.c.created_at, objects.c.id)
        if batch_id is not None:
            q = q.where(objects.c.batch_id == batch_id)
        if state is not None:
            q = q.where(objects.c.state == state)
        if limit is not None:
            q = q.limit(limit)
        with self.db.read(session) as conn:
            return [ObjectRecord(**r._mapping) for r in conn.execute(q)]

    def state_counts(self, *, batch_id: str | None = None) -> dict[str, int]:
        """Number of objects per state (optionally of one batch)."""
        q = select(objects.c.state, func.count()).group_by(objects.c.state)
        if batch_id is not None:
            q = q.where(objects.c.batch_id == batch_id)
        with self.db.read() as conn:
            return {s: n for s, n in conn.execute(q)}

    def expired(self, now: dt.datetime | None = None, limit: int = 100) -> Expired:
        """Objects and copies whose deadline is at or before ``now``, not under legal hold.

        Objects: only those in a state that may move to EXPIRED (so objects
        already expiring or deleted are not returned again); at most ``limit``,
        earliest deadline first. Copies: not yet deleted, of objects not under
        hold; at most ``limit``, earliest first. Objects without a deadline
        never expire.
        """
        now = _when("now", now or _now())
        q_obj = (
            select(objects)
            .where(
                objects.c.retention_deadline.is_not(None),
                objects.c.retention_deadline <= now,
                objects.c.legal_hold.is_(False),
                objects.c.state.in_(sorted(EXPIRABLE)),
            )
            .order_by(objects.c.retention_deadline, objects.c.id)
            .limit(limit)
        )
        q_copy = (
            select(copies)
            .join(objects, objects.c.id == copies.c.object_id)
            .where(
                copies.c.deadline.is_not(None),
                copies.c.deadline <= now,
                copies.c.deleted_at.is_(None),
                objects.c.legal_hold.is_(False),
            )
            .order_by(copies.c.deadline, copies.c.id)
            .limit(limit)
        )
        with self.db.read() as conn:
            return Expired(
                [ObjectRecord(**r._mapping) for r in conn.execute(q_obj)],
                [CopyRecord(**r._mapping) for r in conn.execute(q_copy)],
            )

    # -- objects: writes ----------------------------------------------------

    def register(
        self,
        *,
        actor: str,
        source: str,
        sha256: str | None = None,
        size: int | None = None,
        sop_instance_uid: str | None = None,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        sop_class_uid: str | None = None,
        batch_id: str | None = None,
        quarantine_reason: str | None = None,
        object_id: str | None = None,
        detail: dict | None = None,
        session: Connection | None = None,
        **fields: Any,
    ) -> Registration:
        """Record a newly arrived object, as RECEIVED or (with ``quarantine_reason``) QUARANTINED.

        UIDs are passed raw and stored only as keyed digests. A RECEIVED
        object needs all four UIDs, ``sha256`` and ``size``; a quarantined one
        only its reason code. If a live object already has the same SOP
        Instance UID, no second live row is made: identical content is a
        ``duplicate`` (nothing stored, the skip audited), different content is
        quarantined as ``DUPLICATE_CONFLICT``. Pass ``object_id`` (uuid4 hex)
        to make a retry idempotent: if that id exists it is returned as
        ``existing``. A ``batch_id`` not yet known is opened (as by
        :meth:`open_batch`). ``fields`` are further settable columns (e.g. ``zone``,
        ``ciphertext_sha256``, ``key_id`` for input already stored encrypted).
        """
        _audit.check_actor(actor)
        values: dict[str, Any] = {
            "source": _source("source", source),
            "sha256": None if sha256 is None else _sha256("sha256", sha256),
            "size": None if size is None else _size("size", size),
            "sop_class_uid": None if sop_class_uid is None else _class_uid("sop_class_uid", sop_class_uid),
            "batch_id": None if batch_id is None else _label("batch_id", batch_id),
            **_check_fields({**fields, "quarantine_reason": quarantine_reason} if quarantine_reason else fields),
        }
        for kind, uid in (("sop", sop_instance_uid), ("study", study_instance_uid), ("series", series_instance_uid)):
            values[f"{kind}_key"] = None if uid is None else self.uid_key(kind, uid)
        if object_id is not None:
            _check_id(object_id)
        state = QUARANTINED if quarantine_reason else RECEIVED
        outcome = "quarantined" if quarantine_reason else "registered"
        ours: dict[str, Any] = {}
        with self.db.write(session) as conn:
            if object_id is not None:
                row = conn.execute(select(objects).where(objects.c.id == object_id)).first()
                if row is not None:
                    return Registration(ObjectRecord(**row._mapping), "existing")
            if values["batch_id"] is not None:
                self.open_batch(values["batch_id"], actor=actor, session=conn)
            if state == RECEIVED and values["sop_key"] is not None:
                live = conn.execute(
                    select(objects).where(objects.c.sop_key == values["sop_key"], text(LIVE_SOP_CONDITION))
                ).first()
                if live is not None and live.sha256 == values["sha256"]:
                    self.audit.append(
                        actor, "object.duplicate_skipped", object_ref=live.id,
                        detail={**(detail or {}), "state": live.state}, session=conn,
                    )
                    return Registration(ObjectRecord(**live._mapping), "duplicate")
                if live is not None:
                    state, outcome = QUARANTINED, "conflict"
                    values["quarantine_reason"] = "DUPLICATE_CONFLICT"
                    ours["duplicate_of"] = live.id
            missing = [f for f in REQUIRED_FIELDS.get(state, ()) if values.get(f) is None]
            if missing:
                raise ValueError(f"cannot register an object as {state} without: {', '.join(missing)}")
            now = _now()
            new_id = object_id or uuid.uuid4().hex
            conn.execute(insert(objects).values(
                id=new_id, state=state, legal_hold=False, created_at=now, updated_at=now, **values,
            ))
            if values["batch_id"] is not None:
                ours["batch"] = values["batch_id"]
            if values.get("quarantine_reason"):
                ours["reason"] = values["quarantine_reason"]
            self.audit.append(
                actor, STATE_ACTIONS[state], object_ref=new_id, outcome=DEFAULT_OUTCOMES.get(state, "success"),
                detail={**(detail or {}), **ours, "to": state}, session=conn,
            )
            row = conn.execute(select(objects).where(objects.c.id == new_id)).one()
        return Registration(ObjectRecord(**row._mapping), outcome)

    def transition(
        self,
        object_id: str,
        new_state: str,
        *,
        actor: str,
        detail: dict | None = None,
        outcome: str | None = None,
        session: Connection | None = None,
        **fields: Any,
    ) -> ObjectRecord:
        """Move an object to ``new_state``, set ``fields``, and audit it, in one transaction.

        Raises :class:`IllegalTransition` if :data:`states.TRANSITIONS` does
        not allow the move or a field the new state needs
        (:data:`states.REQUIRED_FIELDS`) is missing, :class:`LegalHoldActive`
        for deletion of a held object, :class:`UnknownObject` for an unknown id
        and ``ValueError`` for a bad field. On any error nothing changes.
        ``quarantine_reason`` may only be set when entering QUARANTINED (and
        must be then).
        """
        _check_id(object_id)
        _audit.check_actor(actor)
        if new_state not in TRANSITIONS:
            raise IllegalTransition(f"object {object_id}: unknown target state (see catalog.states.TRANSITIONS)")
        values = _check_fields(fields)
        if "quarantine_reason" in values and new_state != QUARANTINED:
            raise ValueError("quarantine_reason can only be set when entering QUARANTINED")
        with self.db.write(session) as conn:
            row = conn.execute(select(objects).where(objects.c.id == object_id)).first()
            if row is None:
                raise UnknownObject(f"no catalog object {object_id}")
            old = row.state
            if new_state not in TRANSITIONS[old]:
                raise IllegalTransition(f"object {object_id}: {old} -> {new_state} is not allowed")
            if row.legal_hold and new_state in HOLD_BLOCKS:
                raise LegalHoldActive(f"object {object_id}: {old} -> {new_state} refused: object is under legal hold")
            merged = {**row._mapping, **values}
            missing = [f for f in REQUIRED_FIELDS.get(new_state, ()) if merged.get(f) is None]
            if missing:
                raise IllegalTransition(
                    f"object {object_id}: {old} -> {new_state} needs field(s): {', '.join(missing)}"
                )
            result = conn.execute(
                update(objects)
                .where(objects.c.id == object_id, objects.c.state == old)
                .values(state=new_state, updated_at=_now(), **values)
            )
            if result.rowcount != 1:  # cannot happen while writes are serialized; never ignore it
                raise IllegalTransition(f"object {object_id}: state changed concurrently from {old}")
            ours: dict[str, Any] = {"from": old, "to": new_state}
            if values:
                ours["fields"] = sorted(values)
            for name, key in (("tier", "tier"), ("zone", "zone"), ("rule_id", "rule"),
                              ("quarantine_reason", "reason"), ("flagged", "flag")):
                if values.get(name) is not None:
                    ours[key] = values[name]
            self.audit.append(
                actor, STATE_ACTIONS[new_state], object_ref=object_id,
                outcome=outcome or DEFAULT_OUTCOMES.get(new_state, "success"),
                detail={**(detail or {}), **ours}, session=conn,
            )
            row = conn.execute(select(objects).where(objects.c.id == object_id)).one()
        return ObjectRecord(**row._mapping)

    def set_legal_hold(self, object_id: str, held: bool, actor: str, *, detail: dict | None = None,
                       session: Connection | None = None) -> ObjectRecord:
        """Place (``held=True``) or release a legal hold; audited even if nothing changed.

        A held object is never listed by :meth:`expired` and cannot enter
        DELETING or DELETED. A DELETED object cannot be held.
        """
        _check_id(object_id)
        if not isinstance(held, bool):
            raise ValueError("held must be a bool")
        with self.db.write(session) as conn:
            row = conn.execute(select(objects).where(objects.c.id == object_id)).first()
            if row is None:
                raise UnknownObject(f"no catalog object {object_id}")
            if row.state == DELETED:
                raise IllegalTransition(f"object {object_id}: DELETED objects cannot be held")
            changed = bool(row.legal_hold) != held
            if changed:
                conn.execute(update(objects).where(objects.c.id == object_id)
                             .values(legal_hold=held, updated_at=_now()))
            self.audit.append(
                actor, "object.legal_hold" if held else "object.legal_hold_release", object_ref=object_id,
                detail={**(detail or {}), "held": held, "changed": changed, "state": row.state}, session=conn,
            )
            row = conn.execute(select(objects).where(objects.c.id == object_id)).one()
        return ObjectRecord(**row._mapping)

    # -- copies -------------------------------------------------------------

    def add_copy(
        self,
        object_id: str,
        *,
        zone: str,
        bucket: str,
        key: str,
        actor: str,
        version_id: str | None = None,
        ciphertext_sha256: str | None = None,
        key_id: str | None = None,
        deadline: dt.datetime | None = None,
        session: Connection | None = None,
    ) -> CopyRecord:
        """Record a physical copy. Idempotent: the same live (bucket, key, version) is returned, not duplicated."""
        _check_id(object_id)
        values = {
            "zone": _zone("zone", zone),
            "bucket": _bucket("bucket", bucket),
            "key": _text("key", key),
            "version_id": None if version_id is None else _text("version_id", version_id),
            "ciphertext_sha256": None if ciphertext_sha256 is None else _sha256("ciphertext_sha256", ciphertext_sha256),
            "key_id": None if key_id is None else _label("key_id", key_id),
            "deadline": None if deadline is None else _when("deadline", deadline),
        }
        with self.db.write(session) as conn:
            if conn.execute(select(objects.c.id).where(objects.c.id == object_id)).first() is None:
                raise UnknownObject(f"no catalog object {object_id}")
            same_version = (copies.c.version_id.is_(None) if version_id is None
                            else copies.c.version_id == values["version_id"])
            row = conn.execute(select(copies).where(
                copies.c.object_id == object_id, copies.c.bucket == values["bucket"],
                copies.c.key == values["key"], same_version, copies.c.deleted_at.is_(None),
            )).first()
            if row is not None:
                return CopyRecord(**row._mapping)
            copy_id = uuid.uuid4().hex
            conn.execute(insert(copies).values(id=copy_id, object_id=object_id, created_at=_now(), **values))
            self.audit.append(actor, "copy.add", object_ref=object_id,
                              detail={"copy": copy_id, "zone": values["zone"]}, session=conn)
            row = conn.execute(select(copies).where(copies.c.id == copy_id)).one()
        return CopyRecord(**row._mapping)

    # -- encrypted copies: the copy row plus its data key, in one transaction --------
    def record_sealed(self, object_id: str, sealed, *, actor: str, deadline: dt.datetime | None = None,
                      session: Connection | None = None) -> CopyRecord:
        """Record a :class:`imaging_lifecycle.vault.Sealed` copy: its wrapped DEK and the copy row, atomically."""
        from imaging_lifecycle.keystore import KekRef

        with self.db.write(session) as conn:
            if conn.execute(select(data_keys.c.id).where(data_keys.c.id == sealed.dek_id)).first() is None:
                conn.execute(insert(data_keys).values(
                    id=_label("dek_id", sealed.dek_id), kek_ref=str(KekRef.parse(sealed.kek_ref)),
                    wrapped=bytes(sealed.wrapped_dek), aad_zone=_zone("aad_zone", sealed.zone),
                    aad_tier=int(sealed.tier), created_at=_now(),
                ))
            return self.add_copy(
                object_id, zone=sealed.zone, bucket=sealed.bucket, key=sealed.key, actor=actor,
                version_id=sealed.version_id, ciphertext_sha256=sealed.ciphertext_sha256,
                key_id=sealed.dek_id, deadline=deadline, session=conn,
            )

    def sealed(self, copy: "CopyRecord", plaintext_sha256: str, size: int | None = None):
        """The :class:`~imaging_lifecycle.vault.Sealed` needed to read ``copy`` back (raises if its key is gone)."""
        from imaging_lifecycle.vault import Sealed

        with self.db.read() as conn:
            key = conn.execute(select(data_keys).where(data_keys.c.id == copy.key_id)).first()
        if key is None or key.wrapped is None:
            from imaging_lifecycle.crypto import KeyUnavailable

            raise KeyUnavailable(f"the data key of copy {copy.id} is destroyed or unknown")
        return Sealed(copy.zone, copy.bucket, copy.key, copy.version_id, key.id, key.kek_ref, bytes(key.wrapped),
                      key.aad_tier, plaintext_sha256, copy.ciphertext_sha256, size or 0, 0)

    def destroy_data_key(self, dek_id: str, *, actor: str, object_id: str | None = None,
                         session: Connection | None = None) -> bool:
        """Crypto-shred one DEK (clear its wrapped bytes). Idempotent; returns True if it was live."""
        with self.db.write(session) as conn:
            r = conn.execute(update(data_keys).where(data_keys.c.id == dek_id, data_keys.c.wrapped.is_not(None))
                             .values(wrapped=None, destroyed_at=_now()))
            if r.rowcount:
                self.audit.append(actor, "key.destroy", object_ref=object_id, detail={"key": dek_id}, session=conn)
            return bool(r.rowcount)

    def copies(self, object_id: str, *, include_deleted: bool = False) -> list[CopyRecord]:
        """The object's physical copies, oldest first."""
        _check_id(object_id)
        q = select(copies).where(copies.c.object_id == object_id).order_by(copies.c.created_at, copies.c.id)
        if not include_deleted:
            q = q.where(copies.c.deleted_at.is_(None))
        with self.db.read() as conn:
            return [CopyRecord(**r._mapping) for r in conn.execute(q)]

    def _copy_write(self, copy_id: str, conn: Connection):  # noqa: ANN202
        _check_id(copy_id, "copy_id")
        row = conn.execute(select(copies).where(copies.c.id == copy_id)).first()
        if row is None:
            raise UnknownObject(f"no copy {copy_id}")
        return row

    def record_copy_check(self, copy_id: str, *, ok: bool, actor: str, detail: dict | None = None,
                          session: Connection | None = None) -> CopyRecord:
        """Audit a read-back check of a copy; on success set ``verified_at``."""
        with self.db.write(session) as conn:
            row = self._copy_write(copy_id, conn)
            if ok:
                conn.execute(update(copies).where(copies.c.id == copy_id).values(verified_at=_now()))
            self.audit.append(actor, "copy.verify", object_ref=row.object_id, outcome="success" if ok else "failure",
                              detail={**(detail or {}), "copy": copy_id, "zone": row.zone}, session=conn)
            row = conn.execute(select(copies).where(copies.c.id == copy_id)).one()
        return CopyRecord(**row._mapping)

    def mark_copy_deleted(self, copy_id: str, *, actor: str, session: Connection | None = None) -> CopyRecord:
        """Record that a copy was securely deleted. Idempotent: a second call changes and audits nothing.

        Refused while the object is under legal hold.
        """
        with self.db.write(session) as conn:
            row = self._copy_write(copy_id, conn)
            if row.deleted_at is not None:
                return CopyRecord(**row._mapping)
            held = conn.execute(select(objects.c.legal_hold).where(objects.c.id == row.object_id)).scalar_one()
            if held:
                raise LegalHoldActive(f"object {row.object_id}: copy {copy_id} cannot be deleted: legal hold")
            conn.execute(update(copies).where(copies.c.id == copy_id).values(deleted_at=_now()))
            self.audit.append(actor, "copy.delete", object_ref=row.object_id,
                              detail={"copy": copy_id, "zone": row.zone}, session=conn)
            row = conn.execute(select(copies).where(copies.c.id == copy_id)).one()
        return CopyRecord(**row._mapping)

    # -- batches ------------------------------------------------------------

    def open_batch(self, batch_id: str, *, actor: str, session: Connection | None = None) -> BatchRecord:
        """Create batch ``batch_id`` in state OPEN; idempotent (an existing batch is returned)."""
        _label("batch_id", batch_id)
        with self.db.write(session) as conn:
            row = conn.execute(select(batches).where(batches.c.id == batch_id)).first()
            if row is None:
                now = _now()
                conn.execute(insert(batches).values(id=batch_id, state="OPEN", counts="{}",
                                                    created_at=now, updated_at=now))
                self.audit.append(actor, "batch.open", object_ref=f"batch:{batch_id}", session=conn)
                row = conn.execute(select(batches).where(batches.c.id == batch_id)).one()
        return _batch(row)

    def get_batch(self, batch_id: str) -> BatchRecord:
        _label("batch_id", batch_id)
        with self.db.read() as conn:
            row = conn.execute(select(batches).where(batches.c.id == batch_id)).first()
        if row is None:
            raise UnknownObject(f"no batch {batch_id}")
        return _batch(row)

    def set_batch_state(self, batch_id: str, state: str, *, actor: str, counts: dict | None = None,
                        outcome: str | None = None, session: Connection | None = None) -> BatchRecord:
        """Move a batch along :data:`states.BATCH_TRANSITIONS` (or stay, to update ``counts``).

        ``counts`` is a small JSON object of names to ints (one level of
        nesting allowed, e.g. quarantined per reason code); it replaces the
        stored counts and is copied into the audit record.
        """
        _label("batch_id", batch_id)
        if state not in BATCH_TRANSITIONS:
            raise ValueError(f"batch state must be one of {', '.join(BATCH_TRANSITIONS)}")
        if counts is not None:
            _check_counts(counts)
        with self.db.write(session) as conn:
            row = conn.execute(select(batches).where(batches.c.id == batch_id)).first()
            if row is None:
                raise UnknownObject(f"no batch {batch_id}")
            if state != row.state and state not in BATCH_TRANSITIONS[row.state]:
                raise IllegalTransition(f"batch {batch_id}: {row.state} -> {state} is not allowed")
            values: dict[str, Any] = {"state": state, "updated_at": _now()}
            if counts is not None:
                values["counts"] = _audit.canonical_json(counts)
            conn.execute(update(batches).where(batches.c.id == batch_id).values(**values))
            detail: dict[str, Any] = {"from": row.state, "to": state}
            if counts is not None:
                detail["counts"] = counts
            self.audit.append(actor, "batch.state", object_ref=f"batch:{batch_id}",
                              outcome=outcome or ("failure" if state == "GATE_FAILED" else "success"),
                              detail=detail, session=conn)
            row = conn.execute(select(batches).where(batches.c.id == batch_id)).one()
        return _batch(row)

    # -- retention, grants and deletion certificates (issue 6) ---------------

    def set_retention_deadline(self, object_id: str, deadline: dt.datetime, *, actor: str,
                               detail: dict | None = None, session: Connection | None = None) -> ObjectRecord:
        """Set the object's retention deadline outside a state change (e.g. a quarantined object's 30 days)."""
        _check_id(object_id)
        when = _when("retention_deadline", deadline)
        with self.db.write(session) as conn:
            row = conn.execute(select(objects).where(objects.c.id == object_id)).first()
            if row is None:
                raise UnknownObject(f"no catalog object {object_id}")
            conn.execute(update(objects).where(objects.c.id == object_id)
                         .values(retention_deadline=when, updated_at=_now()))
            self.audit.append(actor, "retention.set", object_ref=object_id,
                              detail={**(detail or {}), "state": row.state}, session=conn)
            row = conn.execute(select(objects).where(objects.c.id == object_id)).one()
        return ObjectRecord(**row._mapping)

    def without_deadline(self, states_: list[str], limit: int = 1000) -> list[ObjectRecord]:
        """Objects in ``states_`` that have no retention deadline yet (oldest first)."""
        q = (select(objects).where(objects.c.state.in_(sorted(states_)), objects.c.retention_deadline.is_(None))
             .order_by(objects.c.created_at, objects.c.id).limit(limit))
        with self.db.read() as conn:
            return [ObjectRecord(**r._mapping) for r in conn.execute(q)]

    def deletion_pending(self, limit: int = 1000) -> list[ObjectRecord]:
        """Objects whose deletion started (EXPIRED or DELETING) and is not finished, not under hold."""
        from imaging_lifecycle.catalog.states import DELETING, EXPIRED

        q = (select(objects).where(objects.c.state.in_([EXPIRED, DELETING]), objects.c.legal_hold.is_(False))
             .order_by(objects.c.updated_at, objects.c.id).limit(limit))
        with self.db.read() as conn:
            return [ObjectRecord(**r._mapping) for r in conn.execute(q)]

    def copies_of(self, object_ids: list[str], *, session: Connection | None = None) -> dict[str, list[CopyRecord]]:
        """Live copies of many objects at once: object id -> copies (batch form of :meth:`copies`)."""
        out: dict[str, list[CopyRecord]] = {oid: [] for oid in object_ids}
        with self.db.read(session) as conn:
            for i in range(0, len(object_ids), 500):
                q = (select(copies).where(copies.c.object_id.in_(object_ids[i:i + 500]), copies.c.deleted_at.is_(None))
                     .order_by(copies.c.created_at, copies.c.id))
                for r in conn.execute(q):
                    out[r.object_id].append(CopyRecord(**r._mapping))
        return out

    def get_many(self, object_ids: list[str], *, session: Connection | None = None) -> dict[str, ObjectRecord]:
        """Objects by id (unknown ids are simply absent)."""
        out: dict[str, ObjectRecord] = {}
        with self.db.read(session) as conn:
            for i in range(0, len(object_ids), 500):
                for r in conn.execute(select(objects).where(objects.c.id.in_(object_ids[i:i + 500]))):
                    out[r.id] = ObjectRecord(**r._mapping)
        return out

    def data_key_rows(self, dek_ids: list[str], *, session: Connection | None = None) -> dict[str, dict]:
        """``dek id -> {kek_ref, live}`` (``live``: its wrapped bytes still exist)."""
        out: dict[str, dict] = {}
        with self.db.read(session) as conn:
            for i in range(0, len(dek_ids), 500):
                q = select(data_keys.c.id, data_keys.c.kek_ref, data_keys.c.wrapped.is_not(None).label("live")) \
                    .where(data_keys.c.id.in_(dek_ids[i:i + 500]))
                for r in conn.execute(q):
                    out[r.id] = {"kek_ref": r.kek_ref, "live": bool(r.live)}
        return out

    def live_data_keys_under(self, kek_id: str, *, session: Connection | None = None) -> int:
        """How many DEKs wrapped under any version of ``kek_id`` are not destroyed."""
        _label("kek_id", kek_id)
        with self.db.read(session) as conn:
            return conn.execute(select(func.count()).select_from(data_keys).where(
                data_keys.c.kek_ref.like(f"{kek_id}@v%"), data_keys.c.wrapped.is_not(None))).scalar_one()

    def live_data_keys_by_ref(self, kek_refs: list[str]) -> dict[str, int]:
        """Batch form of :meth:`live_data_keys_under`: ``kek_ref -> live DEKs`` (indexed, no LIKE scan)."""
        out: dict[str, int] = {}
        with self.db.read() as conn:
            for i in range(0, len(kek_refs), 500):
                q = (select(data_keys.c.kek_ref, func.count()).where(
                    data_keys.c.kek_ref.in_(kek_refs[i:i + 500]), data_keys.c.wrapped.is_not(None))
                    .group_by(data_keys.c.kek_ref))
                out.update({r: n for r, n in conn.execute(q)})
        return out

    def stored_sha256(self, digests: list[str]) -> set[str]:
        """Which of these plaintext SHA-256s belong to an object that has a live stored copy."""
        found: set[str] = set()
        digests = [_sha256("sha256", d) for d in digests]
        with self.db.read() as conn:
            for i in range(0, len(digests), 500):
                q = (select(objects.c.sha256).join(copies, copies.c.object_id == objects.c.id)
                     .where(objects.c.sha256.in_(digests[i:i + 500]), copies.c.deleted_at.is_(None),
                            objects.c.state != DELETED))
                found.update(r[0] for r in conn.execute(q))
        return found

    def add_grant(self, grant_id: str, object_id: str, *, key: str, kek_scope: str, deadline: dt.datetime,
                  actor: str, detail: dict | None = None, session: Connection | None = None) -> dict:
        """Record a cache grant (before its copy is uploaded); audited as ``grant.create``."""
        from imaging_lifecycle.catalog.schema import grants

        _check_id(grant_id, "grant_id")
        _check_id(object_id)
        _audit.check_actor(actor)
        values = {"id": grant_id, "object_id": object_id, "key": _text("key", key),
                  "kek_scope": _label("kek_scope", kek_scope), "actor": actor,
                  "created_at": _now(), "deadline": _when("deadline", deadline)}
        with self.db.write(session) as conn:
            if conn.execute(select(objects.c.id).where(objects.c.id == object_id)).first() is None:
                raise UnknownObject(f"no catalog object {object_id}")
            conn.execute(insert(grants).values(**values))
            self.audit.append(actor, "grant.create", object_ref=object_id,
                              detail={**(detail or {}), "grant": grant_id, "zone": "cache"}, session=conn)
        return values

    def grant(self, grant_id: str, *, session: Connection | None = None) -> dict:
        """The grant row as a dict; :class:`UnknownObject` if there is none."""
        from imaging_lifecycle.catalog.schema import grants

        _check_id(grant_id, "grant_id")
        with self.db.read(session) as conn:
            row = conn.execute(select(grants).where(grants.c.id == grant_id)).first()
        if row is None:
            raise UnknownObject(f"no grant {grant_id}")
        return dict(row._mapping)

    def attach_grant_copy(self, grant_id: str, copy_id: str, *, session: Connection | None = None) -> None:
        from imaging_lifecycle.catalog.schema import grants

        with self.db.write(session) as conn:
            conn.execute(update(grants).where(grants.c.id == grant_id).values(copy_id=_check_id(copy_id, "copy_id")))

    def grants_where(self, *, copy_ids: list[str] | None = None, expired_at: dt.datetime | None = None,
                     limit: int = 1000) -> list[dict]:
        """Live (not erased) grants: of these copies, or past their deadline at ``expired_at``."""
        from imaging_lifecycle.catalog.schema import grants

        out: list[dict] = []
        with self.db.read() as conn:
            if copy_ids is not None:
                for i in range(0, len(copy_ids), 500):
                    q = select(grants).where(grants.c.copy_id.in_(copy_ids[i:i + 500]), grants.c.erased_at.is_(None))
                    out.extend(dict(r._mapping) for r in conn.execute(q))
            if expired_at is not None:
                q = (select(grants).where(grants.c.deadline <= _when("expired_at", expired_at),
                                          grants.c.erased_at.is_(None))
                     .order_by(grants.c.deadline, grants.c.id).limit(limit))
                out.extend(dict(r._mapping) for r in conn.execute(q))
        return out

    def mark_grant_erased(self, grant_id: str, *, actor: str, session: Connection | None = None) -> bool:
        """The grant's key is destroyed and its copy purged. Idempotent; True if it changed."""
        from imaging_lifecycle.catalog.schema import grants

        with self.db.write(session) as conn:
            row = conn.execute(select(grants).where(grants.c.id == grant_id)).first()
            if row is None:
                raise UnknownObject(f"no grant {grant_id}")
            if row.erased_at is not None:
                return False
            conn.execute(update(grants).where(grants.c.id == grant_id).values(erased_at=_now()))
            self.audit.append(actor, "grant.erase", object_ref=row.object_id, detail={"grant": grant_id},
                              session=conn)
        return True

    def add_certificate(self, object_id: str, *, scope: str, body: dict, actor: str,
                        session: Connection | None = None) -> str:
        """Store a deletion certificate and write it to the audit chain (same transaction). Returns its id."""
        from imaging_lifecycle.catalog.schema import certificates

        _check_id(object_id)
        cert_id = uuid.uuid4().hex
        issued = _now()
        stored = {**body, "certificate_id": cert_id, "issued_at": issued.isoformat().replace("+00:00", "Z")}
        # The audit record carries the certificate minus its times and actor (the record's own
        # ts and actor fields hold those; date-like strings are refused in audit detail by design).
        chained = {k: v for k, v in stored.items() if not k.endswith("_at") and k != "actor"}
        with self.db.write(session) as conn:
            conn.execute(insert(certificates).values(id=cert_id, object_id=object_id, scope=_label("scope", scope),
                                                     body=_audit.canonical_json(stored), issued_at=issued))
            self.audit.append(actor, "deletion.certificate", object_ref=object_id, detail=chained, session=conn)
        return cert_id

    def certificates(self, object_id: str) -> list[dict]:
        """The object's deletion certificates, oldest first (each the stored JSON body)."""
        from imaging_lifecycle.catalog.schema import certificates

        _check_id(object_id)
        with self.db.read() as conn:
            rows = conn.execute(select(certificates.c.body).where(certificates.c.object_id == object_id)
                                .order_by(certificates.c.issued_at, certificates.c.id)).all()
        return [json.loads(r.body) for r in rows]

    # -- backup, restore verification and key rotation (issue 5) -------------

    def flag(self, object_id: str, reason: str, *, actor: str, detail: dict | None = None,
             session: Connection | None = None) -> ObjectRecord:
        """Mark an object for human attention with a reason code (e.g. BACKUP_MISMATCH); audited as a security alert."""
        _check_id(object_id)
        values = _check_fields({"flagged": reason})
        with self.db.write(session) as conn:
            row = conn.execute(select(objects).where(objects.c.id == object_id)).first()
            if row is None:
                raise UnknownObject(f"no catalog object {object_id}")
            conn.execute(update(objects).where(objects.c.id == object_id).values(updated_at=_now(), **values))
            self.audit.append(actor, "object.flag", object_ref=object_id, outcome="failure",
                              detail={**(detail or {}), "flag": values["flagged"], "state": row.state}, session=conn)
            row = conn.execute(select(objects).where(objects.c.id == object_id)).one()
        return ObjectRecord(**row._mapping)

    def live_copies_in_zone(self, zone: str, *, object_states: list[str] | None = None,
                            session: Connection | None = None) -> list[tuple[ObjectRecord, CopyRecord]]:
        """``(object, copy)`` for every live copy in ``zone`` (of objects in ``object_states``), by copy id."""
        with self.db.read(session) as conn:
            found = [CopyRecord(**r._mapping) for r in conn.execute(
                select(copies).where(copies.c.zone == _zone("zone", zone), copies.c.deleted_at.is_(None))
                .order_by(copies.c.id))]
            ids = sorted({c.object_id for c in found})
            objs: dict[str, ObjectRecord] = {}
            for i in range(0, len(ids), 500):
                q = select(objects).where(objects.c.id.in_(ids[i:i + 500]))
                if object_states is not None:
                    q = q.where(objects.c.state.in_(sorted(object_states)))
                objs.update((r.id, ObjectRecord(**r._mapping)) for r in conn.execute(q))
        return [(objs[c.object_id], c) for c in found if c.object_id in objs]

    def data_key(self, dek_id: str, *, session: Connection | None = None) -> dict | None:
        """The data key row (``id, kek_ref, wrapped, aad_zone, aad_tier, destroyed_at``), or None."""
        with self.db.read(session) as conn:
            row = conn.execute(select(data_keys).where(data_keys.c.id == dek_id)).first()
        return None if row is None else dict(row._mapping)

    def kek_refs_in_use(self, *, session: Connection | None = None) -> dict[str, int]:
        """``kek_ref -> number of live (not destroyed) data keys wrapped under it``."""
        q = (select(data_keys.c.kek_ref, func.count()).where(data_keys.c.wrapped.is_not(None))
             .group_by(data_keys.c.kek_ref))
        with self.db.read(session) as conn:
            return {ref: n for ref, n in conn.execute(q)}

    def live_data_keys(self, kek_refs: list[str], *, limit: int = 1000, after_id: str = "",
                       session: Connection | None = None) -> list[tuple[str, str, bytes]]:
        """Up to ``limit`` live data keys under any of ``kek_refs`` with id > ``after_id``: ``(id, kek_ref, wrapped)``."""
        q = (select(data_keys.c.id, data_keys.c.kek_ref, data_keys.c.wrapped)
             .where(data_keys.c.kek_ref.in_(sorted(kek_refs)), data_keys.c.wrapped.is_not(None),
                    data_keys.c.id > after_id)
             .order_by(data_keys.c.id).limit(limit))
        with self.db.read(session) as conn:
            return [(r.id, r.kek_ref, bytes(r.wrapped)) for r in conn.execute(q)]

    def rewrap_data_keys(self, changes: list[tuple[str, str, str, bytes]], *, actor: str,
                         detail: dict | None = None, object_ref: str | None = None,
                         session: Connection | None = None) -> int:
        """Store re-wrapped DEKs: ``(dek_id, old_kek_ref, new_kek_ref, wrapped)``, each a compare-and-set.

        A row is changed only if it still names ``old_kek_ref`` and is live, so
        a resumed or concurrent rotation never applies a wrap twice. One
        ``key.rotate`` audit record per call. Returns the number of rows changed.
        """
        from imaging_lifecycle.keystore import KekRef

        changed = 0
        with self.db.write(session) as conn:
            for dek_id, old, new, wrapped in changes:
                r = conn.execute(update(data_keys).where(
                    data_keys.c.id == dek_id, data_keys.c.kek_ref == old, data_keys.c.wrapped.is_not(None),
                ).values(kek_ref=str(KekRef.parse(new)), wrapped=bytes(wrapped)))
                changed += r.rowcount
            self.audit.append(actor, "key.rotate", object_ref=object_ref,
                              detail={**(detail or {}), "rewrapped": changed, "offered": len(changes)}, session=conn)
        return changed


def _check_counts(counts: Any) -> None:
    def ok_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not isinstance(counts, dict):
        raise ValueError("counts must be a dict of name -> int")
    for k, v in counts.items():
        if not isinstance(k, str) or not _LABEL.match(k):
            raise ValueError("counts keys must be short labels")
        if isinstance(v, dict):
            if not all(isinstance(k2, str) and _LABEL.match(k2) and ok_int(v2) for k2, v2 in v.items()):
                raise ValueError("nested counts must map short labels to non-negative ints")
        elif not ok_int(v):
            raise ValueError("counts values must be non-negative ints (or one level of nested counts)")
    _audit.check_detail({"counts": counts})
