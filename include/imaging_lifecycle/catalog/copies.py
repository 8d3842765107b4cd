"""Physical copies of objects: recording them (plain or sealed, i.e. encrypted with a data key),
read-back checks, secure deletion, and the reads over copies.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import Connection, insert, select, update

from imaging_lifecycle.catalog.base import CatalogBase, _live_rows, _now
from imaging_lifecycle.catalog.checks import _bucket, _check_id, _label, _sha256, _text, _when, _zone
from imaging_lifecycle.catalog.records import CopyRecord, LegalHoldActive, ObjectRecord, Sealed, UnknownObject
from imaging_lifecycle.catalog.schema import copies, data_keys, objects
from imaging_lifecycle.catalog.states import DELETED


class CopiesMixin(CatalogBase):
    """Physical copies: add, seal, verify, delete, and copy reads."""

    # -- recording copies -----------------------------------------------------

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

    def record_sealed(self, object_id: str, sealed, *, actor: str, deadline: dt.datetime | None = None,
                      session: Connection | None = None) -> CopyRecord:
        """Record a :class:`~imaging_lifecycle.catalog.records.Sealed` copy: its wrapped DEK and the copy row,
        atomically."""
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

    def sealed(self, copy: CopyRecord, plaintext_sha256: str, size: int | None = None):
        """The :class:`~imaging_lifecycle.catalog.records.Sealed` needed to read ``copy`` back
        (raises if its key is gone)."""
        return self.sealed_many([(copy, plaintext_sha256, size)])[0]

    def sealed_many(self, items: list[tuple[CopyRecord, str, int | None]]) -> list:
        """:meth:`sealed` for many (copy, plaintext SHA-256, size) at once: one read per 500 data keys."""
        keys = {}
        ids = sorted({copy.key_id for copy, _sha, _size in items if copy.key_id})
        with self.db.read() as conn:
            for i in range(0, len(ids), 500):
                for key in conn.execute(select(data_keys).where(data_keys.c.id.in_(ids[i:i + 500]))):
                    keys[key.id] = key
        out = []
        for copy, plaintext_sha256, size in items:
            key = keys.get(copy.key_id)
            if key is None or key.wrapped is None:
                from imaging_lifecycle.crypto import KeyUnavailable

                raise KeyUnavailable(f"the data key of copy {copy.id} is destroyed or unknown")
            out.append(Sealed(copy.zone, copy.bucket, copy.key, copy.version_id, key.id, key.kek_ref,
                              bytes(key.wrapped), key.aad_tier, plaintext_sha256, copy.ciphertext_sha256, size or 0, 0))
        return out

    # -- checks and deletion --------------------------------------------------

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
            self.mark_copies_deleted([copy_id], actor=actor, session=conn)
            return CopyRecord(**self._copy_write(copy_id, conn)._mapping)

    def mark_copies_deleted(self, copy_ids: list[str], *, actor: str, session: Connection | None = None) -> int:
        """:meth:`mark_copy_deleted` for many copies in a few statements (a sweep's batch); how many changed.

        Refused, changing nothing, if any of them belongs to an object under legal hold.
        """
        with self.db.write(session) as conn:
            live = _live_rows(conn, copies, copy_ids, "deleted_at", "copy")
            if not live:
                return 0
            held = conn.execute(select(objects.c.id).where(objects.c.id.in_({r.object_id for r in live}),
                                                           objects.c.legal_hold.is_(True))).first()
            if held is not None:
                copy_id = next(r.id for r in live if r.object_id == held.id)
                raise LegalHoldActive(f"object {held.id}: copy {copy_id} cannot be deleted: legal hold")
            conn.execute(update(copies).where(copies.c.id.in_([r.id for r in live])).values(deleted_at=_now()))
            for r in live:
                self.audit.append(actor, "copy.delete", object_ref=r.object_id,
                                  detail={"copy": r.id, "zone": r.zone}, session=conn)
        return len(live)

    # -- reads ----------------------------------------------------------------

    def copies(self, object_id: str, *, include_deleted: bool = False) -> list[CopyRecord]:
        """The object's physical copies, oldest first."""
        _check_id(object_id)
        q = select(copies).where(copies.c.object_id == object_id).order_by(copies.c.created_at, copies.c.id)
        if not include_deleted:
            q = q.where(copies.c.deleted_at.is_(None))
        with self.db.read() as conn:
            return [CopyRecord(**r._mapping) for r in conn.execute(q)]

    def content_copies(self, obj, zones: tuple[str, ...] | list[str]) -> list[CopyRecord]:  # noqa: ANN001
        """The live copies of ``obj``'s own content in ``zones``, newest first.

        Its own content is what its data key (``obj.key_id``) encrypts, wherever it is (a backup shares the
        key): never something else stored beside it, as a re-identification map is. Only if no copy has
        that key (a rerun between a re-encryption and the state change that records its key) every live
        copy there counts, newest first.
        """
        return self.content_copies_of([obj], zones)[obj.id]

    def content_copies_of(self, objs: list, zones: tuple[str, ...] | list[str]) -> dict[str, list[CopyRecord]]:
        """:meth:`content_copies` of many objects at once (one read per 500): object id -> copies."""
        have = self.copies_of([o.id for o in objs])
        out = {}
        for o in objs:
            live = [c for c in reversed(have[o.id]) if c.zone in zones]
            out[o.id] = [c for c in live if c.key_id == o.key_id] or live
        return out

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
