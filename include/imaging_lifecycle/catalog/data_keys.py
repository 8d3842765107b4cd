"""Data keys (DEKs): the wrapped per-copy keys, their crypto-shredding, and KEK rotation
(which KEK versions are in use, and re-wrapping DEKs under a new one).

A sealed copy's DEK is written together with its copy row, in
:meth:`~imaging_lifecycle.catalog.copies.CopiesMixin.record_sealed`.
"""

from __future__ import annotations

from sqlalchemy import Connection, func, select, update

from imaging_lifecycle.catalog.base import CatalogBase, _now
from imaging_lifecycle.catalog.checks import _label
from imaging_lifecycle.catalog.schema import data_keys


class DataKeysMixin(CatalogBase):
    """Data keys: reads, crypto-shredding and re-wrapping."""

    # -- reads ----------------------------------------------------------------

    def data_key(self, dek_id: str, *, session: Connection | None = None) -> dict | None:
        """The data key row (``id, kek_ref, wrapped, aad_zone, aad_tier, destroyed_at``), or None."""
        with self.db.read(session) as conn:
            row = conn.execute(select(data_keys).where(data_keys.c.id == dek_id)).first()
        return None if row is None else dict(row._mapping)

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

    def kek_refs_in_use(self, *, session: Connection | None = None) -> dict[str, int]:
        """``kek_ref -> number of live (not destroyed) data keys wrapped under it``."""
        q = (select(data_keys.c.kek_ref, func.count()).where(data_keys.c.wrapped.is_not(None))
             .group_by(data_keys.c.kek_ref))
        with self.db.read(session) as conn:
            return {ref: n for ref, n in conn.execute(q)}

    def live_data_keys(self, kek_refs: list[str], *, limit: int = 1000, after_id: str = "",
                       session: Connection | None = None) -> list[tuple[str, str, bytes]]:
        """Up to ``limit`` live data keys under any of ``kek_refs`` with id > ``after_id``:
        ``(id, kek_ref, wrapped)``."""
        q = (select(data_keys.c.id, data_keys.c.kek_ref, data_keys.c.wrapped)
             .where(data_keys.c.kek_ref.in_(sorted(kek_refs)), data_keys.c.wrapped.is_not(None),
                    data_keys.c.id > after_id)
             .order_by(data_keys.c.id).limit(limit))
        with self.db.read(session) as conn:
            return [(r.id, r.kek_ref, bytes(r.wrapped)) for r in conn.execute(q)]

    # -- destruction and rotation ---------------------------------------------

    def destroy_data_key(self, dek_id: str, *, actor: str, object_id: str | None = None,
                         session: Connection | None = None) -> bool:
        """Crypto-shred one DEK (clear its wrapped bytes). Idempotent; returns True if it was live."""
        return self.destroy_data_keys([(dek_id, object_id)], actor=actor, session=session) == 1

    def destroy_data_keys(self, keys: list[tuple[str, str | None]], *, actor: str,
                          session: Connection | None = None) -> int:
        """:meth:`destroy_data_key` for many ``(dek_id, object_id)`` in a few statements; how many were live."""
        owner = dict(keys)
        with self.db.write(session) as conn:
            found = set(conn.execute(select(data_keys.c.id).where(data_keys.c.id.in_(list(owner)),
                                                                  data_keys.c.wrapped.is_not(None))).scalars())
            live = [k for k in owner if k in found]
            if live:
                conn.execute(update(data_keys).where(data_keys.c.id.in_(live), data_keys.c.wrapped.is_not(None))
                             .values(wrapped=None, destroyed_at=_now()))
            for k in live:
                self.audit.append(actor, "key.destroy", object_ref=owner[k], detail={"key": k}, session=conn)
        return len(live)

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
