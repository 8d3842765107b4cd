"""Incidents: what was detected, how serious, who must act, and the timeline to resolution; each change audited.

The rules that raise incidents live in :mod:`imaging_lifecycle.incidents`; this
mixin stores them. An incident is raised once per ``source_key`` (a finding's
key, a gate verdict's audit seq, ...), so an hourly detector that sees the same
finding again changes nothing. Its scope holds counts, tiers, windows and codes:
never a patient identifier, never free text.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

from sqlalchemy import insert, select, update

from imaging_lifecycle.catalog.audit import check_actor, check_detail
from imaging_lifecycle.catalog.base import CatalogBase, _now
from imaging_lifecycle.catalog.checks import _label
from imaging_lifecycle.catalog.records import CatalogError, UnknownObject
from imaging_lifecycle.catalog.schema import incidents

LEVELS = ("warning", "major", "emergency")
OPEN, ACKNOWLEDGED, CONTAINED, RESOLVED = "OPEN", "ACKNOWLEDGED", "CONTAINED", "RESOLVED"
#: state -> (timestamp column, who column, states it may be entered from)
_STEPS = {
    ACKNOWLEDGED: ("acknowledged", (OPEN,)),
    CONTAINED: ("contained", (OPEN, ACKNOWLEDGED)),
    RESOLVED: ("resolved", (OPEN, ACKNOWLEDGED, CONTAINED)),
}
_AUDIT = {ACKNOWLEDGED: "incident.acknowledge", CONTAINED: "incident.contain", RESOLVED: "incident.resolve"}


class IncidentStateError(CatalogError):
    """The incident is not in a state this step can follow (resolving twice, acknowledging a resolved one)."""


def _row(row) -> dict:  # noqa: ANN001
    out = dict(row._mapping)
    out["scope"] = json.loads(out["scope"])
    out["actions"] = json.loads(out["actions"])
    return out


class IncidentsMixin(CatalogBase):
    """Incidents and their timeline."""

    def raise_incident(self, *, source_key: str, nature: str, level: str, responsible_role: str, scope: dict,
                       actor: str, user: str | None = None, detected_at: dt.datetime | None = None
                       ) -> tuple[dict, bool]:
        """Record an incident (audited ``incident.raise``) unless ``source_key`` raised one already.

        Returns ``(incident, created)``.
        """
        if level not in LEVELS:
            raise ValueError(f"incident level must be one of {', '.join(LEVELS)}")
        check_actor(actor)
        scope = check_detail(scope)
        if not isinstance(source_key, str) or not 0 < len(source_key) <= 256:
            raise ValueError("source_key must be a non-empty str of at most 256 characters")
        with self.db.write() as conn:
            found = conn.execute(select(incidents).where(incidents.c.source_key == source_key)).first()
            if found is not None:
                return _row(found), False
            values = {"id": uuid.uuid4().hex, "source_key": source_key, "nature": _label("nature", nature),
                      "level": level, "user": check_actor(user) if user else None, "scope": json.dumps(scope),
                      "responsible_role": _label("responsible_role", responsible_role), "actions": "[]",
                      "state": OPEN, "detected_at": detected_at or _now()}
            conn.execute(insert(incidents).values(**values))
            self.audit.append(actor, "incident.raise", outcome="major_failure" if level != "warning" else "failure",
                              session=conn, detail={"incident": values["id"], "nature": nature, "level": level,
                                                    "user": user, "scope": scope})
        return self.incident(values["id"]), True

    def incident(self, incident_id: str) -> dict:
        with self.db.read() as conn:
            row = conn.execute(select(incidents).where(incidents.c.id == incident_id)).first()
        if row is None:
            raise UnknownObject(f"no incident {incident_id}")
        return _row(row)

    def incidents(self, *, state: str | None = None, open_only: bool = False, since: dt.datetime | None = None,
                  limit: int = 1000) -> list[dict]:
        q = select(incidents)
        if state is not None:
            q = q.where(incidents.c.state == state)
        if open_only:
            q = q.where(incidents.c.state != RESOLVED)
        if since is not None:
            q = q.where(incidents.c.detected_at >= since)
        with self.db.read() as conn:
            rows = conn.execute(q.order_by(incidents.c.detected_at.desc()).limit(limit)).all()
        return [_row(r) for r in rows]

    def advance_incident(self, incident_id: str, state: str, *, actor: str, action: str | None = None,
                         now: dt.datetime | None = None) -> dict:
        """Acknowledge, contain or resolve, by a named person (audited with the response time in seconds)."""
        if state not in _STEPS:
            raise ValueError(f"an incident moves to {', '.join(_STEPS)}")
        check_actor(actor)
        column, allowed = _STEPS[state]
        now = now or _now()
        with self.db.write() as conn:
            row = conn.execute(select(incidents).where(incidents.c.id == incident_id)).first()
            if row is None:
                raise UnknownObject(f"no incident {incident_id}")
            inc = _row(row)
            if inc["state"] not in allowed:
                raise IncidentStateError(f"incident {incident_id} is {inc['state']}; it cannot become {state}")
            actions = inc["actions"] + [{"at": now.isoformat(), "by": actor, "action": _label("action", action)
                                         if action else state.lower()}]
            seconds = round((now - inc["detected_at"]).total_seconds(), 1)
            conn.execute(update(incidents).where(incidents.c.id == incident_id).values(
                **{"state": state, f"{column}_at": now, f"{column}_by": actor, "actions": json.dumps(actions)}))
            self.audit.append(actor, _AUDIT[state], session=conn,
                              detail={"incident": incident_id, "from": inc["state"], "seconds": int(seconds)})
        return self.incident(incident_id)

    def unnotified(self, limit: int = 500) -> list[dict]:
        """Incidents no notification has reached yet, oldest first (sent again until one does)."""
        with self.db.read() as conn:
            rows = conn.execute(select(incidents).where(incidents.c.notified_at.is_(None))
                                .order_by(incidents.c.detected_at).limit(limit)).all()
        return [_row(r) for r in rows]

    def mark_notified(self, incident_id: str, *, now: dt.datetime | None = None) -> None:
        with self.db.write() as conn:
            conn.execute(update(incidents).where(incidents.c.id == incident_id).values(notified_at=now or _now()))
