"""Ingest batches: opening them, moving them along :data:`~imaging_lifecycle.catalog.states.BATCH_TRANSITIONS`,
and their per-batch counts.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, insert, select, update

from imaging_lifecycle.catalog.audit import canonical_json, check_detail
from imaging_lifecycle.catalog.base import CatalogBase, _now
from imaging_lifecycle.catalog.checks import _LABEL, _label
from imaging_lifecycle.catalog.records import BatchRecord, IllegalTransition, UnknownObject
from imaging_lifecycle.catalog.schema import batches
from imaging_lifecycle.catalog.states import BATCH_TRANSITIONS


def _batch(row) -> BatchRecord:  # noqa: ANN001
    return BatchRecord(row.id, row.state, json.loads(row.counts), row.created_at, row.updated_at)


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
    check_detail({"counts": counts})


class BatchesMixin(CatalogBase):
    """Ingest batches: open, read, change state and counts."""

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
                values["counts"] = canonical_json(counts)
            conn.execute(update(batches).where(batches.c.id == batch_id).values(**values))
            detail: dict[str, Any] = {"from": row.state, "to": state}
            if counts is not None:
                detail["counts"] = counts
            self.audit.append(actor, "batch.state", object_ref=f"batch:{batch_id}",
                              outcome=outcome or ("failure" if state == "GATE_FAILED" else "success"),
                              detail=detail, session=conn)
            row = conn.execute(select(batches).where(batches.c.id == batch_id)).one()
        return _batch(row)
