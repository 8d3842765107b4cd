"""Read-only aggregates for the operator's view, the CLI summary and the compliance report.

Counts and catalog ids only: these queries never return a patient identifier
(the catalog holds none in plain form). ``overview.py`` assembles them into
the one summary every consumer shows.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

from sqlalchemy import and_, func, insert, select

from imaging_lifecycle.catalog.base import CatalogBase, _now
from imaging_lifecycle.catalog.schema import certificates, copies, grants, objects, reports
from imaging_lifecycle.catalog.states import DELETED

#: States an object may be in while its deadline can pass without it being deleted yet.
_LIVE = ("STORED", "BACKED_UP", "EXPIRED", "DELETING", "NEEDS_REVIEW", "DEIDENTIFIED", "PROTECTED", "QUARANTINED")


class SummariesMixin(CatalogBase):
    """Aggregates over objects, copies, grants and certificates; compliance report records."""

    def counts_by_tier_zone_state(self) -> list[dict]:
        """Object counts; tier 0 means not classified yet, zone ``none`` no stored copy (quarantine keeps its own)."""
        q = (select(objects.c.tier, objects.c.zone, objects.c.state, func.count().label("n"))
             .group_by(objects.c.tier, objects.c.zone, objects.c.state))
        with self.db.read() as conn:
            rows = conn.execute(q).all()
        return sorted(({"tier": r.tier or 0, "zone": r.zone or "none", "state": r.state, "count": int(r.n)}
                       for r in rows), key=lambda d: (d["tier"], d["zone"], d["state"]))

    def tiers_of(self, ids: list[str]) -> dict[str, int | None]:
        ids = sorted({i for i in ids if i})
        out: dict[str, int | None] = {}
        with self.db.read() as conn:
            for i in range(0, len(ids), 500):
                for r in conn.execute(select(objects.c.id, objects.c.tier).where(objects.c.id.in_(ids[i:i + 500]))):
                    out[r.id] = r.tier
        return out

    def deadlines_between(self, start: dt.datetime, end: dt.datetime) -> int:
        """Objects and live cache grants due in ``[start, end)`` (not deleted, not on legal hold)."""
        with self.db.read() as conn:
            n_obj = conn.execute(select(func.count()).select_from(objects).where(and_(
                objects.c.retention_deadline >= start, objects.c.retention_deadline < end,
                objects.c.state != DELETED, objects.c.legal_hold.is_(False)))).scalar_one()
            n_grant = conn.execute(select(func.count()).select_from(grants).where(and_(
                grants.c.deadline >= start, grants.c.deadline < end, grants.c.erased_at.is_(None)))).scalar_one()
        return int(n_obj) + int(n_grant)

    def overdue(self, before: dt.datetime) -> list[tuple[str, dt.datetime]]:
        """``(id, deadline)`` of everything past its deadline before ``before`` and still there (holds excepted)."""
        with self.db.read() as conn:
            objs = conn.execute(select(objects.c.id, objects.c.retention_deadline).where(and_(
                objects.c.retention_deadline < before, objects.c.state.in_(_LIVE),
                objects.c.legal_hold.is_(False)))).all()
            gs = conn.execute(select(grants.c.id, grants.c.deadline).where(and_(
                grants.c.deadline < before, grants.c.erased_at.is_(None)))).all()
        return [(r[0], r[1]) for r in objs] + [(r[0], r[1]) for r in gs]

    def quarantine_reasons(self) -> list[dict]:
        q = (select(objects.c.quarantine_reason, func.count().label("n")).where(objects.c.state == "QUARANTINED")
             .group_by(objects.c.quarantine_reason))
        with self.db.read() as conn:
            return sorted(({"reason": r.quarantine_reason or "UNKNOWN", "count": int(r.n)} for r in conn.execute(q)),
                          key=lambda d: (-d["count"], d["reason"]))

    def ids_in_state(self, state: str, limit: int = 200) -> list[str]:
        with self.db.read() as conn:
            return [r.id for r in conn.execute(select(objects.c.id).where(objects.c.state == state)
                                               .order_by(objects.c.updated_at).limit(limit))]

    def count_in_state(self, state: str) -> int:
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(objects)
                                    .where(objects.c.state == state)).scalar_one())

    def deletions_between(self, start: dt.datetime, end: dt.datetime) -> list[dict]:
        """Each deletion certificate issued in ``[start, end)``, with its deadline and lag (seconds), oldest first.

        The deadline is the object's retention deadline (object scope) or the copy's (a cache copy);
        a grant erased without a recorded copy counts through the grants table (no certificate).
        """
        q = (select(certificates.c.id, certificates.c.object_id, certificates.c.scope, certificates.c.issued_at,
                    certificates.c.body, objects.c.retention_deadline)
             .join(objects, objects.c.id == certificates.c.object_id)
             .where(and_(certificates.c.issued_at >= start, certificates.c.issued_at < end))
             .order_by(certificates.c.issued_at))
        out = []
        with self.db.read() as conn:
            rows = conn.execute(q).all()
            copy_deadlines = {}
            copy_ids = [r.scope.removeprefix("copy:") for r in rows if r.scope.startswith("copy:")]
            for i in range(0, len(copy_ids), 500):
                q2 = select(copies.c.id, copies.c.deadline).where(copies.c.id.in_(copy_ids[i:i + 500]))
                for c in conn.execute(q2):
                    copy_deadlines[c.id] = c.deadline
        for r in rows:
            deadline = (r.retention_deadline if r.scope == "object"
                        else copy_deadlines.get(r.scope.removeprefix("copy:")))
            body = json.loads(r.body)
            out.append({"certificate_id": r.id, "object_id": r.object_id, "scope": r.scope, "deleted_at": r.issued_at,
                        "deadline": deadline,
                        "lag_seconds": max(0.0, (r.issued_at - deadline).total_seconds()) if deadline else None,
                        "zones": body.get("zones", []), "method": body.get("method", ""),
                        "anchor_seq": (body.get("anchor") or {}).get("seq") if isinstance(body.get("anchor"), dict)
                        else body.get("anchor_seq"), "signed": bool(body.get("signature"))})
        return out

    def add_report(self, report_id: str, *, period_start: dt.datetime, period_end: dt.datetime, actor: str,
                   sealed_pdf: dict, sealed_html: dict, sha256: str) -> dict:
        values = {"id": report_id or uuid.uuid4().hex, "period_start": period_start, "period_end": period_end,
                  "created_at": _now(), "created_by": actor, "sealed_pdf": json.dumps(sealed_pdf),
                  "sealed_html": json.dumps(sealed_html), "sha256": sha256}
        with self.db.write() as conn:
            conn.execute(insert(reports).values(**values))
            self.audit.append(actor, "report.create", session=conn,
                              detail={"report": values["id"], "sha256": sha256})
        return values

    def reports(self, limit: int = 24) -> list[dict]:
        with self.db.read() as conn:
            rows = conn.execute(select(reports).order_by(reports.c.created_at.desc()).limit(limit)).all()
        return [dict(r._mapping) for r in rows]

    def report(self, report_id: str) -> dict | None:
        with self.db.read() as conn:
            row = conn.execute(select(reports).where(reports.c.id == report_id)).first()
        if row is None:
            return None
        out = dict(row._mapping)
        out["sealed_pdf"], out["sealed_html"] = json.loads(out["sealed_pdf"]), json.loads(out["sealed_html"])
        return out
