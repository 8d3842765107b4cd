"""Staged originals: what a claim put in the ``staging`` zone, shared by every worker.

A claim (on the landing host) writes one row per file it staged; the chunk
that ingests the file (on any worker) deletes the row once the original is
stored or quarantined. The rows are the batch's manifest: which files, which
chunk, where each came from, and the staged copy's sealed record (its data key
only wrapped). They carry catalog ids and reason codes, never a file name.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update

from imaging_lifecycle.catalog.base import CatalogBase, _now
from imaging_lifecycle.catalog.checks import _label
from imaging_lifecycle.catalog.records import Sealed
from imaging_lifecycle.catalog.schema import staged_files


@dataclass(frozen=True)
class StagedFile:
    object_id: str
    batch_id: str
    chunk: int
    source: str
    scope_id: str
    sealed: Sealed | None  # None when ``problem`` is set: no bytes were staged
    problem: str | None
    landing_id: str


def _sealed_json(sealed: Sealed | None) -> str | None:
    if sealed is None:
        return None
    doc = dataclasses.asdict(sealed)
    doc["wrapped_dek"] = base64.b64encode(sealed.wrapped_dek).decode()
    return json.dumps(doc, separators=(",", ":"))


def _sealed_from(text: str | None) -> Sealed | None:
    if not text:
        return None
    doc = json.loads(text)
    doc["wrapped_dek"] = base64.b64decode(doc["wrapped_dek"])
    return Sealed(**doc)


def _row(r) -> StagedFile:  # noqa: ANN001
    return StagedFile(r.object_id, r.batch_id, r.chunk, r.source, r.scope_id, _sealed_from(r.sealed), r.problem,
                      r.landing_id)


class StagingMixin(CatalogBase):
    """Rows of ``staged_files``: written by a claim, removed by the chunk that ingested the file."""

    def record_staged(self, batch_id: str, files: list[StagedFile], *, actor: str, adopted: int = 0) -> None:
        """Record a claim: every staged file (insert, or replace a row of an earlier, interrupted claim)
        and one ``batch.claim`` audit record with the counts, in one transaction."""
        _label("batch_id", batch_id)
        now = _now()
        with self.db.write() as conn:
            ids = [f.object_id for f in files]
            if ids:
                conn.execute(delete(staged_files).where(staged_files.c.object_id.in_(ids)))
                conn.execute(insert(staged_files), [
                    {"object_id": f.object_id, "batch_id": batch_id, "chunk": f.chunk, "source": f.source,
                     "scope_id": f.scope_id, "sealed": _sealed_json(f.sealed), "problem": f.problem,
                     "landing_id": f.landing_id, "staged_at": now} for f in files])
            self.audit.append(actor, "batch.claim", object_ref=f"batch:{batch_id}", session=conn,
                              detail={"counts": {"staged": len(files), "adopted": adopted,
                                                 "problems": sum(1 for f in files if f.problem)}})

    def adopt_staged(self, batch_id: str, *, first_chunk: int, chunk_size: int, limit: int,
                     exclude: set[str] | frozenset[str] = frozenset()) -> int:
        """Move up to ``limit`` rows left by earlier batches (their run died or failed) into ``batch_id``,
        numbering their chunks from ``first_chunk``. Returns how many moved."""
        _label("batch_id", batch_id)
        t = staged_files.c
        with self.db.write(_lock_head=False) as conn:
            q = select(t.object_id).where(t.batch_id != batch_id)
            if exclude:  # files this claim is staging again itself (an interrupted claim's local leftovers)
                q = q.where(t.object_id.not_in(sorted(exclude)))
            ids = conn.execute(q.order_by(t.staged_at, t.object_id).limit(limit)).scalars().all()
            for i, oid in enumerate(ids):
                conn.execute(update(staged_files).where(staged_files.c.object_id == oid)
                             .values(batch_id=batch_id, chunk=first_chunk + i // chunk_size))
        return len(ids)

    def staged(self, batch_id: str, chunk: int | None = None) -> list[StagedFile]:
        """The batch's staged files still to ingest (one chunk's, or all), in catalog-id order."""
        q = select(staged_files).where(staged_files.c.batch_id == batch_id)
        if chunk is not None:
            q = q.where(staged_files.c.chunk == chunk)
        with self.db.read() as conn:
            return [_row(r) for r in conn.execute(q.order_by(staged_files.c.object_id))]

    def staged_rows(self, object_ids: list[str]) -> list[StagedFile]:
        with self.db.read() as conn:
            return [_row(r) for r in conn.execute(select(staged_files).where(staged_files.c.object_id.in_(object_ids))
                                                  .order_by(staged_files.c.object_id))]

    def staged_count(self, batch_id: str | None = None) -> int:
        q = select(func.count()).select_from(staged_files)
        if batch_id is not None:
            q = q.where(staged_files.c.batch_id == batch_id)
        with self.db.read() as conn:
            return int(conn.execute(q).scalar_one())

    def staged_ids(self, object_ids: list[str] | None = None) -> set[str]:
        """Which of ``object_ids`` (or every id) still have a staged row."""
        q = select(staged_files.c.object_id)
        if object_ids is not None:
            q = q.where(staged_files.c.object_id.in_(object_ids))
        with self.db.read() as conn:
            return set(conn.execute(q).scalars())

    def scopes_in_use(self, scope_ids: list[str]) -> set[str]:
        with self.db.read() as conn:
            return set(conn.execute(select(staged_files.c.scope_id).where(staged_files.c.scope_id.in_(scope_ids))
                                    .distinct()).scalars())

    def unstage(self, *object_ids: str) -> None:
        """Forget staged files (their originals are now stored or quarantined), in one commit; idempotent."""
        with self.db.write(_lock_head=False) as conn:
            for i in range(0, len(object_ids), 500):
                conn.execute(delete(staged_files).where(staged_files.c.object_id.in_(object_ids[i:i + 500])))
