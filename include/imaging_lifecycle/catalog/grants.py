"""Cache grants: time-limited access copies in the cache zone, from creation to erasure."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, insert, select, update

from imaging_lifecycle.catalog.audit import check_actor
from imaging_lifecycle.catalog.base import CatalogBase, _live_rows, _now
from imaging_lifecycle.catalog.checks import _check_id, _label, _text, _when
from imaging_lifecycle.catalog.records import UnknownObject
from imaging_lifecycle.catalog.schema import grants, objects


class GrantsMixin(CatalogBase):
    """Cache grants: create, read, attach their copy, find, mark erased."""

    def add_grant(self, grant_id: str, object_id: str, *, key: str, kek_scope: str, deadline: dt.datetime,
                  actor: str, request_id: str | None = None, detail: dict | None = None,
                  session: Connection | None = None) -> dict:
        """Record a cache grant (before its copy is uploaded); audited as ``grant.create``."""
        _check_id(grant_id, "grant_id")
        _check_id(object_id)
        check_actor(actor)
        values = {"id": grant_id, "object_id": object_id, "key": _text("key", key),
                  "kek_scope": _label("kek_scope", kek_scope), "actor": actor,
                  "created_at": _now(), "deadline": _when("deadline", deadline),
                  "request_id": _check_id(request_id, "request_id") if request_id else None}
        with self.db.write(session) as conn:
            if conn.execute(select(objects.c.id).where(objects.c.id == object_id)).first() is None:
                raise UnknownObject(f"no catalog object {object_id}")
            conn.execute(insert(grants).values(**values))
            self.audit.append(actor, "grant.create", object_ref=object_id,
                              detail={**(detail or {}), "grant": grant_id, "zone": "cache", "request": request_id},
                              session=conn)
        return values

    def grant(self, grant_id: str, *, session: Connection | None = None) -> dict:
        """The grant row as a dict; :class:`UnknownObject` if there is none."""
        _check_id(grant_id, "grant_id")
        with self.db.read(session) as conn:
            row = conn.execute(select(grants).where(grants.c.id == grant_id)).first()
        if row is None:
            raise UnknownObject(f"no grant {grant_id}")
        return dict(row._mapping)

    def attach_grant_copy(self, grant_id: str, copy_id: str, *, session: Connection | None = None) -> None:
        with self.db.write(session) as conn:
            conn.execute(update(grants).where(grants.c.id == grant_id).values(copy_id=_check_id(copy_id, "copy_id")))

    def grants_where(self, *, copy_ids: list[str] | None = None, expired_at: dt.datetime | None = None,
                     limit: int = 1000) -> list[dict]:
        """Live (not erased) grants: of these copies, or past their deadline at ``expired_at``."""
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
        return self.mark_grants_erased([grant_id], actor=actor, session=session) == 1

    def mark_grants_erased(self, grant_ids: list[str], *, actor: str, session: Connection | None = None) -> int:
        """:meth:`mark_grant_erased` for many grants in a few statements; how many changed."""
        with self.db.write(session) as conn:
            live = _live_rows(conn, grants, grant_ids, "erased_at", "grant")
            if live:
                conn.execute(update(grants).where(grants.c.id.in_([r.id for r in live])).values(erased_at=_now()))
            for r in live:
                self.audit.append(actor, "grant.erase", object_ref=r.object_id, detail={"grant": r.id},
                                  session=conn)
        return len(live)
