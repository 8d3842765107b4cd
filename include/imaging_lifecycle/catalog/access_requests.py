"""Access requests, their approval decisions, and data-sharing agreements: the records, each change audited.

The rules (who may ask, who may approve, what an approval unlocks) are in
:mod:`imaging_lifecycle.access`; this mixin only stores what was decided and
appends the matching audit record in the same transaction. Audit details
carry ids, codes and counts: never the requester's justification, which is
free text.
"""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import Connection, insert, select, update

from imaging_lifecycle.catalog.audit import check_actor
from imaging_lifecycle.catalog.base import CatalogBase, _now
from imaging_lifecycle.catalog.checks import _check_id, _label, _reason, _sha256, _when
from imaging_lifecycle.catalog.records import CatalogError, UnknownObject
from imaging_lifecycle.catalog.schema import access_decisions, access_requests, agreements

#: Request states. PENDING waits for approvals; REFUSED never reached an approver.
PENDING, APPROVED, DENIED, REFUSED, FULFILLED = "PENDING", "APPROVED", "DENIED", "REFUSED", "FULFILLED"
_FINAL = (DENIED, REFUSED, FULFILLED)
_JSON_COLUMNS = ("object_ids", "departments", "tiers")


class RequestStateError(CatalogError):
    """A request is not in the state this change needs (say, deciding a request already denied)."""


class NotApproved(CatalogError, PermissionError):
    """No approved access request covers this action, by this person, on this object, now. ``reason`` is a code."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _row(row) -> dict:  # noqa: ANN001
    out = dict(row._mapping)
    for c in _JSON_COLUMNS:
        out[c] = json.loads(out[c])
    return out


class AccessRequestsMixin(CatalogBase):
    """Access requests, approval decisions, agreements."""

    def add_request(self, request_id: str, *, action: str, requester: str, object_ids: list[str],
                    departments: list[str], tiers: list[int], purpose: str, hours: int | None, justification: str,
                    agreement_id: str | None, policy_target: str | None, emergency: bool, policy_fingerprint: str,
                    state: str = PENDING, reason: str | None = None, expires_at: dt.datetime | None = None) -> dict:
        """Record a request (audited ``access.request``; a refused one as a failure with its reason code)."""
        _check_id(request_id, "request_id")
        check_actor(requester)
        values = {
            "id": request_id, "action": _label("action", action), "requester": requester,
            "object_ids": json.dumps([_check_id(i) for i in object_ids]),
            "departments": json.dumps([_label("department", d) for d in departments]),
            "tiers": json.dumps(sorted(set(tiers))), "purpose": _label("purpose", purpose), "hours": hours,
            "justification": justification[:2000], "agreement_id": agreement_id,
            "policy_target": _sha256("policy_target", policy_target) if policy_target else None,
            "emergency": bool(emergency), "state": state, "reason": _reason("reason", reason) if reason else None,
            "policy_fingerprint": _sha256("policy_fingerprint", policy_fingerprint), "created_at": _now(),
            "expires_at": _when("expires_at", expires_at) if expires_at else None,
            "decided_at": _now() if state == APPROVED else None,
        }
        if state not in (PENDING, APPROVED, REFUSED):
            raise ValueError("a new request is PENDING, APPROVED (emergency) or REFUSED")
        if state == APPROVED and expires_at is None:
            raise ValueError("an approved request has an expiry")
        with self.db.write() as conn:
            conn.execute(insert(access_requests).values(**values))
            self.audit.append(requester, "access.emergency" if emergency and state != REFUSED else "access.request",
                              outcome="failure" if state == REFUSED else ("major_failure" if emergency else "success"),
                              session=conn,
                              detail={"request": request_id, "action": action, "objects": len(object_ids),
                                      "tiers": sorted(set(tiers)), "departments": departments, "purpose": purpose,
                                      "hours": hours, "state": state, "reason": reason, "emergency": bool(emergency)})
        return values

    def request(self, request_id: str, *, session: Connection | None = None) -> dict:
        _check_id(request_id, "request_id")
        with self.db.read(session) as conn:
            row = conn.execute(select(access_requests).where(access_requests.c.id == request_id)).first()
        if row is None:
            raise UnknownObject(f"no access request {request_id}")
        return _row(row)

    def approved_request(self, request_id: str | None, *, action: str, actor: str, object_id: str | None = None,
                         now: dt.datetime | None = None) -> dict:
        """The request, if it is APPROVED for ``action`` by ``actor`` on ``object_id`` and not expired; else refuse.

        Every guarded stage function asks this before it reads, hands out or
        deletes anything; a refusal is audited (``access.denied``, reason code)
        and raises :class:`NotApproved`.
        """
        now = now or _now()
        reason, req = None, None
        try:
            req = self.request(request_id) if request_id else None
        except (UnknownObject, ValueError):
            req = None
        if req is None:
            reason = "NO_REQUEST"
        elif req["state"] != APPROVED:
            reason = f"REQUEST_{req['state']}"
        elif req["action"] != action:
            reason = "OTHER_ACTION"
        elif req["requester"] != actor:
            reason = "NOT_THE_REQUESTER"
        elif object_id is not None and object_id not in req["object_ids"]:
            reason = "OBJECT_NOT_IN_REQUEST"
        elif req["expires_at"] is None or now >= req["expires_at"]:  # no expiry recorded: expired (fail closed)
            reason = "APPROVAL_EXPIRED"
        if reason is None:
            return req
        self.audit.append(actor, "access.denied", object_ref=object_id, outcome="failure",
                          detail={"request": req["id"] if req else None, "action": action, "reason": reason})
        raise NotApproved(f"refusing {action}: no approved access request covers it ({reason})", reason)

    def requests(self, *, state: str | None = None, emergency: bool | None = None, limit: int = 1000) -> list[dict]:
        q = select(access_requests)
        if state is not None:
            q = q.where(access_requests.c.state == state)
        if emergency is not None:
            q = q.where(access_requests.c.emergency.is_(emergency))
        with self.db.read() as conn:
            return [_row(r) for r in conn.execute(q.order_by(access_requests.c.created_at).limit(limit))]

    def decisions(self, request_id: str, *, session: Connection | None = None) -> list[dict]:
        with self.db.read(session) as conn:
            rows = conn.execute(select(access_decisions).where(access_decisions.c.request_id == request_id)
                                .order_by(access_decisions.c.decided_at))
            return [dict(r._mapping) for r in rows]

    def record_decision(self, request_id: str, step: str, *, approver: str, approved: bool,
                        deny_reason: str | None = None) -> dict:
        """Record one approver's answer to one step; a rejection denies the request. Audited ``access.decision``.

        Refuses (:class:`RequestStateError`) a request that is not PENDING or a step answered already.
        """
        check_actor(approver)
        with self.db.write() as conn:
            req = self.request(request_id, session=conn)
            if req["state"] != PENDING:
                raise RequestStateError(f"request {request_id} is {req['state']}, not PENDING")
            if any(d["step"] == step for d in self.decisions(request_id, session=conn)):
                raise RequestStateError(f"request {request_id}: step {step} was answered already")
            now = _now()
            conn.execute(insert(access_decisions).values(request_id=request_id, step=_label("step", step),
                                                         approver=approver, approved=bool(approved), decided_at=now))
            self.audit.append(approver, "access.decision", outcome="success" if approved else "failure",
                              session=conn, detail={"request": request_id, "step": step, "approved": bool(approved),
                                                    "requester": req["requester"], "action": req["action"]})
            if not approved:
                self._set_state(conn, req, DENIED, actor=approver, reason=deny_reason or "REJECTED")
        return self.request(request_id)

    def set_request_state(self, request_id: str, state: str, *, actor: str, reason: str | None = None,
                          expires_at: dt.datetime | None = None) -> dict:
        """Move a request on (PENDING -> APPROVED/DENIED, APPROVED -> FULFILLED/DENIED); audited ``access.outcome``."""
        with self.db.write() as conn:
            req = self.request(request_id, session=conn)
            if req["state"] in _FINAL:
                raise RequestStateError(f"request {request_id} is {req['state']} already")
            self._set_state(conn, req, state, actor=actor, reason=reason, expires_at=expires_at)
        return self.request(request_id)

    def _set_state(self, conn: Connection, req: dict, state: str, *, actor: str, reason: str | None,
                   expires_at: dt.datetime | None = None) -> None:
        now = _now()
        values: dict = {"state": state, "reason": _reason("reason", reason) if reason else None}
        if state in (APPROVED, DENIED) and req["decided_at"] is None:
            values["decided_at"] = now
        if expires_at is not None:
            values["expires_at"] = _when("expires_at", expires_at)
        if state == FULFILLED:
            values["fulfilled_at"] = now
        conn.execute(update(access_requests).where(access_requests.c.id == req["id"]).values(**values))
        self.audit.append(actor, "access.outcome", outcome="success" if state in (APPROVED, FULFILLED) else "failure",
                          session=conn, detail={"request": req["id"], "action": req["action"], "state": state,
                                                "reason": reason, "requester": req["requester"]})

    def review_emergency(self, request_id: str, *, reviewer: str, finding: str) -> dict:
        """The data security officer's after-the-fact review of an emergency access (audited)."""
        check_actor(reviewer)
        with self.db.write() as conn:
            req = self.request(request_id, session=conn)
            if not req["emergency"]:
                raise RequestStateError(f"request {request_id} is not an emergency access")
            if req["reviewed_at"] is not None:
                raise RequestStateError(f"emergency access {request_id} was reviewed already")
            conn.execute(update(access_requests).where(access_requests.c.id == request_id)
                         .values(reviewed_at=_now(), reviewed_by=reviewer))
            self.audit.append(reviewer, "access.emergency_review", session=conn,
                              outcome="success" if finding == "APPROPRIATE" else "major_failure",
                              detail={"request": request_id, "finding": _reason("finding", finding),
                                      "requester": req["requester"]})
        return self.request(request_id)

    # -- agreements ---------------------------------------------------------------

    def add_agreement(self, agreement_id: str, *, recipient: str, scope: str, purpose: str, legal_basis: str,
                      starts_at: dt.datetime, ends_at: dt.datetime, actor: str, how: str) -> dict:
        """Record a data-sharing agreement (audited ``agreement.add``, with how it was authorized)."""
        _check_id(agreement_id, "agreement_id")
        check_actor(actor)
        for name, v, n in (("recipient", recipient, 256), ("scope", scope, 1024), ("legal_basis", legal_basis, 256)):
            if not isinstance(v, str) or not v.strip() or len(v) > n:
                raise ValueError(f"{name} must be non-empty text of at most {n} characters")
        if _when("ends_at", ends_at) <= _when("starts_at", starts_at):
            raise ValueError("an agreement must end after it starts")
        values = {"id": agreement_id, "recipient": recipient.strip(), "scope": scope.strip(),
                  "purpose": _label("purpose", purpose), "legal_basis": legal_basis.strip(),
                  "starts_at": _when("starts_at", starts_at), "ends_at": _when("ends_at", ends_at),
                  "created_by": actor, "created_at": _now()}
        with self.db.write() as conn:
            conn.execute(insert(agreements).values(**values))
            self.audit.append(actor, "agreement.add", session=conn,
                              detail={"agreement": agreement_id, "purpose": purpose, "how": _label("how", how),
                                      "days": (values["ends_at"] - values["starts_at"]).days})
        return values

    def agreement(self, agreement_id: str) -> dict:
        _check_id(agreement_id, "agreement_id")
        with self.db.read() as conn:
            row = conn.execute(select(agreements).where(agreements.c.id == agreement_id)).first()
        if row is None:
            raise UnknownObject(f"no agreement {agreement_id}")
        return dict(row._mapping)

    def grants_of_request(self, request_id: str) -> list[dict]:
        from imaging_lifecycle.catalog.schema import grants

        with self.db.read() as conn:
            return [dict(r._mapping) for r in conn.execute(select(grants).where(grants.c.request_id == request_id))]
