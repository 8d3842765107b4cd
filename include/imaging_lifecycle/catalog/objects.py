"""Objects and their lifecycle: registering arrivals, state transitions, legal hold, flags,
retention deadlines, and the reads over objects (by id, by SOP key, by state, expired, pending deletion).

Every state change is checked against :mod:`imaging_lifecycle.catalog.states`
and audited in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, text, update

from imaging_lifecycle.catalog.audit import check_actor
from imaging_lifecycle.catalog.base import CatalogBase, _now
from imaging_lifecycle.catalog.checks import (
    _check_fields,
    _check_id,
    _class_uid,
    _label,
    _sha256,
    _size,
    _source,
    _when,
)
from imaging_lifecycle.catalog.records import (
    CopyRecord,
    Expired,
    IllegalTransition,
    LegalHoldActive,
    ObjectRecord,
    Registration,
    UnknownObject,
)
from imaging_lifecycle.catalog.schema import LIVE_SOP_CONDITION, copies, objects
from imaging_lifecycle.catalog.states import (
    DELETED,
    DELETING,
    EXPIRABLE,
    EXPIRED,
    HOLD_BLOCKS,
    QUARANTINED,
    RECEIVED,
    REQUIRED_FIELDS,
    STATE_ACTIONS,
    TRANSITIONS,
    VALIDATED,
)

#: Audit outcome of entering a state when the caller names none. A
#: quarantine is a refused import: ATNA "serious failure" (8).
DEFAULT_OUTCOMES: dict[str, str] = {QUARANTINED: "failure"}


class ObjectsMixin(CatalogBase):
    """Catalog objects: registration, state transitions, hold, flags, deadlines and object reads.

    :meth:`register` opens an unknown batch with ``open_batch`` (from
    :class:`~imaging_lifecycle.catalog.batches.BatchesMixin`).
    """

    # -- reads ----------------------------------------------------------------

    def get(self, object_id: str, *, session: Connection | None = None) -> ObjectRecord:
        """The object with this catalog id; :class:`UnknownObject` if there is none."""
        _check_id(object_id)
        with self.db.read(session) as conn:
            row = conn.execute(select(objects).where(objects.c.id == object_id)).first()
        if row is None:
            raise UnknownObject(f"no catalog object {object_id}")
        return ObjectRecord(**row._mapping)

    def get_many(self, object_ids: list[str], *, session: Connection | None = None) -> dict[str, ObjectRecord]:
        """Objects by id (unknown ids are simply absent)."""
        out: dict[str, ObjectRecord] = {}
        with self.db.read(session) as conn:
            for i in range(0, len(object_ids), 500):
                for r in conn.execute(select(objects).where(objects.c.id.in_(object_ids[i:i + 500]))):
                    out[r.id] = ObjectRecord(**r._mapping)
        return out

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
                sources: Iterable[str] | None = None, session: Connection | None = None) -> list[ObjectRecord]:
        """Objects, optionally of one batch, state and/or one of ``sources``, oldest first.

        ``sources`` goes by the index on ``source``, a few hundred at a time: a lookup of some objects'
        derivatives (``derived:<id>``) never scans the whole catalog.
        """
        q = select(objects)
        if batch_id is not None:
            q = q.where(objects.c.batch_id == batch_id)
        if state is not None:
            q = q.where(objects.c.state == state)
        queries = [q]
        if sources is not None:
            wanted = sorted(set(sources))
            queries = [q.where(objects.c.source.in_(wanted[i:i + 500])) for i in range(0, len(wanted), 500)]
        with self.db.read(session) as conn:
            if len(queries) == 1:
                q = queries[0].order_by(objects.c.created_at, objects.c.id)
                return [ObjectRecord(**r._mapping) for r in conn.execute(q.limit(limit) if limit is not None else q)]
            found = sorted((ObjectRecord(**r._mapping) for sub in queries for r in conn.execute(sub)),
                           key=lambda o: (o.created_at, o.id))
        return found[:limit] if limit is not None else found

    def flagged_objects(self, *, limit: int = 1000) -> list[ObjectRecord]:
        """Live objects that carry a flag (held by a gate, waiting for review, a failed check), oldest first."""
        q = (select(objects).where(objects.c.flagged.is_not(None), objects.c.state != DELETED)
             .order_by(objects.c.created_at, objects.c.id).limit(limit))
        with self.db.read() as conn:
            return [ObjectRecord(**r._mapping) for r in conn.execute(q)]

    def state_counts(self, *, batch_id: str | None = None) -> dict[str, int]:
        """Number of objects per state (optionally of one batch)."""
        q = select(objects.c.state, func.count()).group_by(objects.c.state)
        if batch_id is not None:
            q = q.where(objects.c.batch_id == batch_id)
        with self.db.read() as conn:
            return {s: n for s, n in conn.execute(q)}

    # -- registration and state changes ---------------------------------------

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
        check_actor(actor)
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
                    if (values["batch_id"] is not None and row.batch_id != values["batch_id"]
                            and row.state in (RECEIVED, VALIDATED, QUARANTINED)):
                        # Registered by a batch whose run died before its gate, and claimed again by this
                        # one: it belongs to the batch that gates it now, else nothing would ever gate it.
                        self.open_batch(values["batch_id"], actor=actor, session=conn)
                        conn.execute(update(objects).where(objects.c.id == object_id)
                                     .values(batch_id=values["batch_id"], updated_at=_now()))
                        self.audit.append(actor, "batch.state", object_ref=object_id, session=conn,
                                          detail={"batch": values["batch_id"], "from_batch": row.batch_id})
                        row = conn.execute(select(objects).where(objects.c.id == object_id)).one()
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
        must be then). :meth:`transition_many` for many objects at once.
        """
        return self.transition_many(new_state, [(object_id, fields, detail)], actor=actor, outcome=outcome,
                                    session=session)[0]

    def transition_many(
        self,
        new_state: str,
        moves: list[tuple[str, dict[str, Any], dict | None]],
        *,
        actor: str,
        outcome: str | None = None,
        session: Connection | None = None,
    ) -> list[ObjectRecord]:
        """:meth:`transition` for many objects, each ``(object id, fields, detail)``: every move checked
        as there, each audited, in one transaction; the new records, in order.

        One read for all the rows (per 500) and one UPDATE statement per set of field names (executemany),
        rather than three statements per object. Any error and nothing changes. An id may appear once.
        """
        check_actor(actor)
        if new_state not in TRANSITIONS:
            raise IllegalTransition("unknown target state (see catalog.states.TRANSITIONS)")
        checked = []
        for object_id, fields, detail in moves:
            _check_id(object_id)
            values = _check_fields(fields)
            if "quarantine_reason" in values and new_state != QUARANTINED:
                raise ValueError("quarantine_reason can only be set when entering QUARANTINED")
            checked.append((object_id, values, detail))
        ids = [object_id for object_id, _v, _d in checked]
        if len(set(ids)) != len(ids):
            raise ValueError("transition_many: an object id appears more than once")
        out: list[ObjectRecord] = []
        with self.db.write(session) as conn:
            rows = {}
            for i in range(0, len(ids), 500):
                for r in conn.execute(select(objects).where(objects.c.id.in_(ids[i:i + 500]))):
                    rows[r.id] = r._mapping
            now = _now()
            updates: dict[tuple[str, ...], list[dict]] = {}
            for object_id, values, detail in checked:
                row = rows.get(object_id)
                if row is None:
                    raise UnknownObject(f"no catalog object {object_id}")
                old = row["state"]
                if new_state not in TRANSITIONS[old]:
                    raise IllegalTransition(f"object {object_id}: {old} -> {new_state} is not allowed")
                if row["legal_hold"] and new_state in HOLD_BLOCKS:
                    raise LegalHoldActive(
                        f"object {object_id}: {old} -> {new_state} refused: object is under legal hold")
                merged = {**row, **values}
                missing = [f for f in REQUIRED_FIELDS.get(new_state, ()) if merged.get(f) is None]
                if missing:
                    raise IllegalTransition(
                        f"object {object_id}: {old} -> {new_state} needs field(s): {', '.join(missing)}"
                    )
                updates.setdefault(tuple(sorted(values)), []).append(
                    {"_id": object_id, "_old": old, **{f"v_{k}": v for k, v in values.items()}})
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
                # What the row now holds, as the database gives it back (UTC for every datetime).
                stored = {k: v.astimezone(dt.timezone.utc) if isinstance(v, dt.datetime) else v
                          for k, v in values.items()}
                out.append(ObjectRecord(**{**row, **stored, "state": new_state, "updated_at": now}))
            for names, params in updates.items():
                stmt = (update(objects)
                        .where(objects.c.id == bindparam("_id"), objects.c.state == bindparam("_old"))
                        .values(state=new_state, updated_at=now, **{k: bindparam(f"v_{k}") for k in names}))
                result = conn.execute(stmt, params)
                # Cannot happen while writes are serialized; never ignore it (where the driver counts).
                counted = len(params) == 1 or conn.dialect.supports_sane_multi_rowcount
                if counted and result.rowcount != len(params):
                    raise IllegalTransition(f"{len(params) - result.rowcount} object(s) changed state concurrently")
        return out

    # -- legal hold and flags -------------------------------------------------

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

    # -- retention: deadlines and what is due ---------------------------------

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

    def deletion_pending(self, limit: int = 1000) -> list[ObjectRecord]:
        """Objects whose deletion started (EXPIRED or DELETING) and is not finished, not under hold."""
        q = (select(objects).where(objects.c.state.in_([EXPIRED, DELETING]), objects.c.legal_hold.is_(False))
             .order_by(objects.c.updated_at, objects.c.id).limit(limit))
        with self.db.read() as conn:
            return [ObjectRecord(**r._mapping) for r in conn.execute(q)]
